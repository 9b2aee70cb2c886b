"""Takeover during a running CPU job: two HA coordinators on a real etcd, one real agent running two
gloo ranks with `--coordinator A,B`. The leader is SIGKILLed mid-training; the standby takes over, the
agent fails over to it, and the same worker processes keep training in the same incarnation."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from kedge.coordinator.admin_client import get_status
from kedge.coordinator.errors import CoordinatorUnreachable
from kedge_fixtures.coordinator_ha import KEDGE, Replica
from kedge_fixtures.etcd import EtcdHandle
from kedge_fixtures.processes import free_port

pytestmark = [pytest.mark.timeout(180), pytest.mark.etcd, pytest.mark.slow]

_TRAIN = Path(__file__).resolve().parents[2] / "workloads" / "train_gloo.py"


def _job(address: str) -> dict[str, Any] | None:
    try:
        jobs = get_status(address, timeout_s=2.0)["jobs"]
    except CoordinatorUnreachable:
        return None
    return jobs[0] if jobs else None


def _ranks(job: dict[str, Any] | None) -> dict[int, tuple[int, int]]:
    """rank -> (pid, step) of the running ranks."""
    if job is None:
        return {}
    out = {}
    for rank in job.get("ranks", []):
        status = rank.get("status", {})
        if status.get("pid"):
            out[int(rank.get("rank", 0))] = (int(status["pid"]), int(status.get("step", 0)))
    return out


def _wait(predicate: Any, timeout_s: float, what: str) -> float:
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout_s, f"{what}: not within {timeout_s}s"
        time.sleep(0.1)
    return time.monotonic() - start


def test_leader_killed_during_cpu_job_workers_keep_running(
    etcd: EtcdHandle,
    replicas: list[Replica],
    tmp_path: Path,
) -> None:
    master_port = free_port()
    replicas.append(Replica(etcd, "a", master_port))
    a = replicas[0]
    _wait(a.leads, 10, "first leader")
    replicas.append(Replica(etcd, "b", master_port))
    b = replicas[1]
    env = dict(os.environ, KEDGE_TEST_STEPS="2000", KEDGE_TEST_STEP_S="0.05")
    argv = [*KEDGE, "agent", "run", "--coordinator", f"{a.address},{b.address}", "--node-id", "n1"]
    argv += ["--job-id", "job", "--nproc-per-node", "2", "--run-dir", str(tmp_path / "run")]
    argv += ["--metrics-addr", "", "--nvml", "off", "--", sys.executable, str(_TRAIN)]
    agent = subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait(
            lambda: (
                all(s > 3 for _, s in _ranks(_job(a.address)).values()) and len(_ranks(_job(a.address))) == 2
            ),
            60,
            "training on the leader",
        )
        before = _ranks(_job(a.address))
        a.proc.kill()  # the leader dies mid-training
        a.proc.wait(timeout=10)
        took_s = _wait(b.leads, 8, "takeover")
        assert took_s <= 5.0

        def resumed_on_b() -> bool:
            after = _ranks(_job(b.address))
            return len(after) == 2 and all(after[r][1] > before[r][1] + 5 for r in before)

        _wait(resumed_on_b, 60, "the same ranks reporting progress to the new leader")
        after = _ranks(_job(b.address))
        assert {r: pid for r, (pid, _) in after.items()} == {r: pid for r, (pid, _) in before.items()}
        job = _job(b.address)
        assert job is not None and (job["incarnation"], job["state"], job["restarts"]) == (1, "running", 0)
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            _, err = agent.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            agent.kill()
            _, err = agent.communicate(timeout=10)
    assert "coordinator_failover" in err
