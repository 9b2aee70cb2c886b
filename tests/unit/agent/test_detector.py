"""Local verdict rules on synthetic observations (no processes)."""

from __future__ import annotations

import signal

import pytest
from kedge.agent.detector import Detector, Observation
from kedge.agent.model import GpuHealth, VerdictKind
from kedge.agent.progress_reader import GroupSnapshot, PageSnapshot
from kedge.agent.workers import Worker

S = 1_000_000_000


def worker(rank: int) -> Worker:
    return Worker(rank=rank, local_rank=rank, pid=1000 + rank, incarnation=1, page_path="")


def page(
    rank: int,
    step: int,
    progress_ns: int,
    *,
    duration_s: float = 0.1,
    heartbeat_ns: int | None = None,
    enq: int = 10,
    done: int = 10,
) -> PageSnapshot:
    group = GroupSnapshot("0", enq, -1, done, progress_ns, 0, progress_ns)
    return PageSnapshot(
        pid=1000 + rank,
        rank=rank,
        local_rank=rank,
        world_size=2,
        incarnation=1,
        step=step,
        step_mono_ns=progress_ns,
        step_duration_ns=int(duration_s * S),
        heartbeat_mono_ns=progress_ns if heartbeat_ns is None else heartbeat_ns,
        progress_mono_ns=progress_ns,
        created_mono_ns=0,
        closed=False,
        groups=(group,),
    )


def detector() -> Detector:
    return Detector(node_id="n", frozen_margin_s=3.0, stopped_persist_s=0.0)


def run_steps(d: Detector, w: Worker, step_s: float, n: int) -> int:
    """Feeds n regular steps; returns the time of the last one."""
    t = 0
    for i in range(n):
        t = int(i * step_s * S)
        assert (
            d.observe_ranks([Observation(w, page(w.rank, i, t, duration_s=step_s), "sleeping", None)], t)
            == []
        )
    return t


@pytest.mark.timeout(10)
def test_stale_progress_beyond_adaptive_threshold_is_frozen() -> None:
    d, w = detector(), worker(0)
    t = run_steps(d, w, 0.1, 20)
    last = page(0, 19, t, heartbeat_ns=t + int(3.0 * S))
    assert d.observe_ranks([Observation(w, last, "sleeping", None)], t + int(2.9 * S)) == []  # within 0.1 + 3
    (v,) = d.observe_ranks([Observation(w, last, "sleeping", None)], t + int(3.3 * S))
    assert (v.kind, v.rank) == (VerdictKind.RANK_FROZEN, 0)
    assert v.evidence["heartbeat"] == "fresh" and "interpreter alive" in v.reason
    assert d.observe_ranks([Observation(w, last, "sleeping", None)], t + int(5 * S)) == []  # reported once


@pytest.mark.timeout(10)
def test_slow_steps_raise_the_threshold() -> None:
    d, w = detector(), worker(0)
    t = run_steps(d, w, 2.0, 10)
    assert (
        d.observe_ranks([Observation(w, page(0, 9, t, duration_s=2.0), "sleeping", None)], t + int(4.5 * S))
        == []
    )


@pytest.mark.timeout(10)
def test_rank_waiting_on_a_local_peer_is_not_the_culprit() -> None:
    d, w0, w1 = detector(), worker(0), worker(1)
    run_steps(d, w0, 0.1, 10)
    run_steps(d, w1, 0.1, 10)
    t = int(0.9 * S)
    waiting = page(0, 9, t, enq=12, done=11)  # inside collective 12
    behind = page(1, 9, t, enq=11, done=11, heartbeat_ns=t)  # never enqueued 12
    verdicts = d.observe_ranks(
        [Observation(w0, waiting, "sleeping", None), Observation(w1, behind, "running", None)], t + 4 * S
    )
    assert [(v.kind, v.rank) for v in verdicts] == [(VerdictKind.RANK_FROZEN, 1)]
    assert verdicts[0].evidence["heartbeat"] == "stale"


@pytest.mark.timeout(10)
def test_stopped_process_and_deaths() -> None:
    d, w0, w1 = detector(), worker(0), worker(1)
    (v,) = d.observe_ranks([Observation(w0, None, "stopped", None)], 0)
    assert (v.kind, v.rank) == (VerdictKind.RANK_FROZEN, 0) and "state T" in v.reason
    # Rank 0 failed with a code because rank 1 was killed: the signal comes first.
    verdicts = d.observe_ranks(
        [Observation(w0, None, "exited", 1), Observation(w1, None, "exited", -signal.SIGKILL)]
    )
    assert [(v.kind, v.rank) for v in verdicts] == [(VerdictKind.RANK_DIED, 1), (VerdictKind.RANK_DIED, 0)]
    assert "SIGKILL" in verdicts[0].reason and verdicts[0].evidence["signal"] == "9"
    assert d.observe_ranks([Observation(w1, None, "exited", -9)]) == []  # once
    w2 = worker(2)
    w2.stopping = True
    assert d.observe_ranks([Observation(w2, None, "exited", -15)]) == []  # stopped by kedge


@pytest.mark.timeout(10)
def test_gpu_faults_and_throttling() -> None:
    d = detector()
    (v,) = d.observe_gpus([GpuHealth(index=1, recent_xids=[13, 79])], {1: 5})
    assert (v.kind, v.gpu_index, v.rank) == (VerdictKind.GPU_FAULT, 1, 5) and "XID 79" in v.reason
    assert d.observe_gpus([GpuHealth(index=1, recent_xids=[13, 79])], {1: 5}) == []
    hot = GpuHealth(index=0, throttle_reasons=0x40)
    assert d.observe_gpus([hot], {}) == [] and d.observe_gpus([hot], {}) == []
    (t,) = d.observe_gpus([hot], {})
    assert t.kind == VerdictKind.THROTTLING and t.rank == -1
    assert d.observe_gpus([GpuHealth(index=0, throttle_reasons=0x1)], {}) == []  # idle bit only
    (r,) = d.observe_gpus([GpuHealth(index=2, recovery_action=2)], {})
    assert "recovery action 2" in r.reason
