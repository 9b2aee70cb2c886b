"""High-availability coordinator on etcd: takeover time and store throughput, printed as tables.

    .venv/bin/python tests/bench/bench_ha.py [--kills 20] [--ttl-s 3] [--ops 400]

Starts its own etcd on loopback (the test fixture's EtcdServer). Measures:
1. takeover: a leader process campaigns, a standby (this process) waits; the leader is SIGKILLed and
   the time from the kill to the standby leading is recorded, `--kills` times (p50/p99/max);
2. store operations per second the coordinator issues (the fenced writes of a recovery and the
   periodic persist: set_job_step, renew_leases of 8 nodes, append_diagnoses, begin_incarnation,
   and the reads of `kedge status`), etcd against SQLite (the named baseline) in the same run.
The fault matrix with a leader kill in the middle needs the coordinator server (not on this branch yet).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kedge.coordinator.etcd_client import EtcdClient
from kedge.coordinator.etcd_store import EtcdStore
from kedge.coordinator.leader import LeaderElection
from kedge.coordinator.model import Assignment, JobState, NodeRecord, Verdict, VerdictKind
from kedge.coordinator.sqlite_store import SqliteStore
from kedge.coordinator.store import Store
from kedge_fixtures.etcd import EtcdServer

_CANDIDATE = Path(__file__).resolve().parents[1] / "multiproc" / "coordinator" / "ha_candidate.py"


def machine() -> str:
    model = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    etcd = subprocess.run(["etcd", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}, {etcd}"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def one_takeover(server: EtcdServer, prefix: str, ttl_s: int) -> float:
    client = EtcdClient([server.endpoint], timeout_s=1.0)
    key = prefix + "leader"
    leader = subprocess.Popen(
        [sys.executable, str(_CANDIDATE), server.endpoint, prefix, "old", "j"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert leader.stdin is not None and leader.stdout is not None
    leader.stdout.readline()
    deadline = time.monotonic() + 30
    while client.get(key) is None:
        assert time.monotonic() < deadline, "the leader process never took the lead"
        time.sleep(0.02)
    standby = LeaderElection(client, key, candidate_id="standby", config=LeaderElection.Config(ttl_s=ttl_s))
    standby.start()
    time.sleep(0.5)
    killed = time.monotonic()
    leader.kill()
    leader.wait()
    leader.stdin.close()
    leader.stdout.close()
    while not standby.is_leader():
        assert time.monotonic() - killed < 30, "no takeover within 30 s"
        time.sleep(0.005)
    took_s = time.monotonic() - killed
    standby.stop()
    client.close()
    return took_s


def coordinator_ops(store: Store, job: str) -> list[tuple[str, Callable[[int], object]]]:
    store.ensure_job(job, command=["train"], now_wall_ns=0)
    for n in range(8):
        store.upsert_node(NodeRecord(job_id=job, node_id=f"n{n}", nproc=4), incarnation=0)
    world = [Assignment(rank=r, node_id=f"n{r // 4}", local_rank=r % 4) for r in range(32)]
    inc = [
        store.begin_incarnation(
            job, expected_incarnation=0, assignments=world, state=JobState.RUNNING, count_restart=False
        )
    ]

    def new_world(_: int) -> object:
        inc[0] = store.begin_incarnation(
            job, expected_incarnation=inc[0], assignments=world, state=JobState.RUNNING, count_restart=True
        )
        return inc[0]

    verdict = Verdict(kind=VerdictKind.STRAGGLER, rank=3, node_id="n0", reason="last", evidence={"k": "v"})
    return [
        ("set_job_step", lambda i: store.set_job_step(job, i, incarnation=inc[0])),
        (
            "renew_leases(8)",
            lambda i: store.renew_leases(job, {f"n{n}": i for n in range(8)}, incarnation=inc[0]),
        ),
        ("append_diagnoses", lambda i: store.append_diagnoses(job, [verdict], incarnation=inc[0])),
        ("begin_incarnation", new_world),
        ("get_job", lambda i: store.get_job(job)),
        ("list_nodes(8)", lambda i: store.list_nodes(job)),
        ("recent_diagnoses(10)", lambda i: store.recent_diagnoses(job, 10)),
    ]


def ops_per_s(store: Store, job: str, count: int, runs: int = 3) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, op in coordinator_ops(store, job):
        rates = []
        for _ in range(runs):
            start = time.perf_counter()
            for i in range(count):
                op(i)
            rates.append(count / (time.perf_counter() - start))
        out[name] = statistics.median(rates)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--ttl-s", type=int, default=3)
    parser.add_argument("--ops", type=int, default=300)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    tmp = Path(
        tempfile.mkdtemp(prefix="kedge-bench-ha-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    )
    disk_tmp = Path(tempfile.mkdtemp(prefix="kedge-bench-ha-sqlite-"))
    server = EtcdServer(data_dir=tmp)
    server.start()
    try:
        print(f"machine: {machine()}", flush=True)
        takeovers = []
        for i in range(args.kills):
            takeovers.append(one_takeover(server, f"/bench/takeover/{i}/", args.ttl_s))
            print(f"  kill {i + 1}/{args.kills}: takeover {takeovers[-1]:.2f} s", flush=True)
        print(f"\ntakeover after SIGKILL of the leader (lease TTL {args.ttl_s} s, {args.kills} kills)")
        print(f"{'p50 s':>8} {'p99 s':>8} {'max s':>8} {'min s':>8}")
        print(
            f"{percentile(takeovers, 0.5):8.2f} {percentile(takeovers, 0.99):8.2f} "
            f"{max(takeovers):8.2f} {min(takeovers):8.2f}"
        )
        client = EtcdClient([server.endpoint], timeout_s=2.0)
        etcd_rates = ops_per_s(EtcdStore(client, "/bench/ops/"), "j", args.ops)
        sqlite_store = SqliteStore(disk_tmp / "c.db")
        sqlite_rates = ops_per_s(sqlite_store, "j", args.ops)
        sqlite_store.close()
        client.close()
        print(f"\nstore operations per second (median of 3 runs of {args.ops}; one caller thread)")
        print(f"{'operation':<22} {'etcd':>10} {'sqlite':>10} {'etcd/sqlite':>12}")
        for name, rate in etcd_rates.items():
            print(f"{name:<22} {rate:10.0f} {sqlite_rates[name]:10.0f} {rate / sqlite_rates[name]:12.2f}")
        print("\netcd data dir on tmpfs, SQLite (WAL, synchronous=FULL) on the local disk")
        print("fault matrix with a leader kill: not measured (needs the coordinator server on this branch)")
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(disk_tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
