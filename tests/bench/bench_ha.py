"""High-availability coordinator on etcd: takeover time and store throughput, printed as tables.

    .venv/bin/python tests/bench/bench_ha.py [--kills 20] [--ttl-s 3] [--ops 400]

Starts its own etcd on loopback (the test fixture's EtcdServer). Measures:
1. takeover: a leader process campaigns, a standby (this process) waits; the leader is SIGKILLed and
   the time from the kill to the standby leading is recorded, `--kills` times (p50/p99/max);
2. store operations per second the coordinator issues (the fenced writes of a recovery and the
   periodic persist: set_job_step, renew_leases of 8 nodes, append_diagnoses, begin_incarnation,
   and the reads of `kedge status`), etcd against SQLite (the named baseline) in the same run.
3. recovery with a leader kill in the middle (the fault matrix, tests/bench/fault_matrix.py, is not on
   this branch; its SIGKILL-a-rank row is reproduced here): two coordinator replicas, one real agent
   with two gloo ranks; a rank is SIGKILLed; once the leader has recorded its restart decision the
   leader is SIGKILLed too; time from the rank kill to both ranks training in the new incarnation
   under the new leader, against the same fault without a leader kill (baseline), `--recoveries` each.

Data directories: etcd and SQLite on the same medium, tmpfs by default (`--disk`: both on local disk,
where each commit pays an fsync).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kedge.coordinator.admin_client import get_status
from kedge.coordinator.errors import CoordinatorUnreachable
from kedge.coordinator.etcd_client import EtcdClient
from kedge.coordinator.etcd_store import EtcdStore
from kedge.coordinator.leader import LeaderElection
from kedge.coordinator.model import Assignment, JobState, NodeRecord, Verdict, VerdictKind
from kedge.coordinator.sqlite_store import SqliteStore
from kedge.coordinator.store import Store
from kedge_fixtures.coordinator_ha import KEDGE, Replica
from kedge_fixtures.etcd import EtcdHandle, EtcdServer
from kedge_fixtures.processes import free_port

_CANDIDATE = Path(__file__).resolve().parents[1] / "multiproc" / "coordinator" / "ha_candidate.py"
_TRAIN = Path(__file__).resolve().parents[1] / "workloads" / "train_gloo.py"


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


def _job(address: str) -> dict[str, Any] | None:
    try:
        jobs = get_status(address, timeout_s=2.0)["jobs"]
    except CoordinatorUnreachable:
        return None
    return jobs[0] if jobs else None


def _leader_job(replicas: list[Replica]) -> dict[str, Any] | None:
    for replica in replicas:
        if replica.proc.poll() is None and replica.leads():
            return _job(replica.address)
    return None


def _training(job: dict[str, Any] | None, incarnation: int, min_step: int) -> list[dict[str, Any]]:
    """The job's ranks training in `incarnation` at `min_step` or beyond ([] if not all are)."""
    if job is None or job["incarnation"] != incarnation:
        return []
    ranks = [r.get("status", {}) for r in job.get("ranks", [])]
    good = [s for s in ranks if s.get("incarnation") == incarnation and int(s.get("step", 0)) >= min_step]
    return good if len(good) == 2 and len(ranks) == 2 else []


def _until(probe: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = probe()
        if got:
            return got
        time.sleep(0.05)
    raise TimeoutError(what)


def one_recovery(server: EtcdServer, prefix: str, workdir: Path, kill_leader: bool) -> tuple[float, int]:
    """Seconds from a rank SIGKILL to both ranks training in incarnation 2; and the restarts stored."""
    handle = EtcdHandle(server=server, prefix=prefix)
    port = free_port()
    replicas = [Replica(handle, "a", port)]
    agent = None
    try:
        _until(replicas[0].leads, 15, "first leader")
        replicas.append(Replica(handle, "b", port))
        addresses = ",".join(r.address for r in replicas)
        argv = [*KEDGE, "agent", "run", "--coordinator", addresses, "--node-id", "n1", "--job-id", "job"]
        argv += ["--nproc-per-node", "2", "--run-dir", str(workdir), "--metrics-addr", "", "--nvml", "off"]
        env = dict(os.environ, KEDGE_TEST_STEPS="100000", KEDGE_TEST_STEP_S="0.05")
        agent = subprocess.Popen(
            [*argv, "--", sys.executable, str(_TRAIN)], env=env, stderr=subprocess.DEVNULL
        )
        ranks = _until(lambda: _training(_job(replicas[0].address), 1, 5), 60, "training")
        killed = time.monotonic()
        os.kill(int(ranks[1]["pid"]), signal.SIGKILL)
        if kill_leader:
            _until(lambda: (_job(replicas[0].address) or {}).get("actions"), 30, "restart decided")
            replicas[0].proc.kill()
            replicas[0].proc.wait()
        _until(lambda: _training(_leader_job(replicas), 2, 1), 90, "resumed")
        took_s = time.monotonic() - killed
        job = _leader_job(replicas) or {}
        return took_s, int(job.get("restarts", -1))
    finally:
        if agent is not None:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(timeout=30)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
        for replica in replicas:
            replica.close()


def recovery_table(server: EtcdServer, workdir: Path, count: int) -> None:
    print(
        f"\nrecovery from a rank SIGKILL (restart same world), {count} runs each: rank kill -> both ranks training again"
    )
    print(f"{'scenario':<36} {'p50 s':>7} {'max s':>7} {'restarts stored':>16}")
    for kill_leader in (False, True):
        runs = [
            one_recovery(
                server, f"/bench/recovery/{kill_leader}/{i}/", workdir / f"run-{kill_leader}-{i}", kill_leader
            )
            for i in range(count)
        ]
        times = [t for t, _ in runs]
        label = "leader SIGKILLed after its decision" if kill_leader else "no leader kill (baseline)"
        restarts = sorted({r for _, r in runs})
        print(f"{label:<36} {statistics.median(times):7.2f} {max(times):7.2f} {restarts!s:>16}", flush=True)


def takeover_table(server: EtcdServer, kills: int, ttl_s: int) -> None:
    takeovers = []
    for i in range(kills):
        takeovers.append(one_takeover(server, f"/bench/takeover/{i}/", ttl_s))
        print(f"  kill {i + 1}/{kills}: takeover {takeovers[-1]:.2f} s", flush=True)
    print(f"\ntakeover after SIGKILL of the leader (lease TTL {ttl_s} s, {kills} kills)")
    print(f"{'p50 s':>8} {'p99 s':>8} {'max s':>8} {'min s':>8}")
    print(
        f"{percentile(takeovers, 0.5):8.2f} {percentile(takeovers, 0.99):8.2f} "
        f"{max(takeovers):8.2f} {min(takeovers):8.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--ttl-s", type=int, default=3)
    parser.add_argument("--ops", type=int, default=300)
    parser.add_argument("--recoveries", type=int, default=3)
    parser.add_argument("--disk", action="store_true", help="etcd and SQLite data on local disk, not tmpfs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    medium = None if args.disk or not os.path.isdir("/dev/shm") else "/dev/shm"
    tmp = Path(tempfile.mkdtemp(prefix="kedge-bench-ha-", dir=medium))
    disk_tmp = Path(tempfile.mkdtemp(prefix="kedge-bench-ha-sqlite-", dir=medium))
    server = EtcdServer(data_dir=tmp)
    server.start()
    try:
        print(f"machine: {machine()}", flush=True)
        if args.kills > 0:
            takeover_table(server, args.kills, args.ttl_s)
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
        where = "local disk" if medium is None else medium
        print(f"\netcd and SQLite (WAL, synchronous=FULL) data on {where}")
        if args.recoveries > 0:
            recovery_table(server, tmp, args.recoveries)
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(disk_tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
