"""Diagnosis on synthetic telemetry: hangs, stragglers, slow communication, probe matrices."""

from __future__ import annotations

import random

import pytest
from kedge.coordinator.diagnosis import Config, Diagnoser, localize_probe
from kedge.coordinator.model import CollectiveSample, GroupProgress, RankSnapshot, StepSample, VerdictKind

pytestmark = pytest.mark.timeout(10)

WORLD = 4
NODES = {0: "n1", 1: "n1", 2: "n2", 3: "n2"}


class FakeJob:
    """Four ranks in lockstep, one all-reduce per step; faults bend one rank's behaviour."""

    def __init__(self, step_s: float = 0.2, seed: int = 0) -> None:
        self.d = Diagnoser(Config())
        self.d.reset(incarnation=1, rank_nodes=NODES)
        self.now = 0.0
        self.seq = {r: 0 for r in range(WORLD)}
        self.done = {r: 0 for r in range(WORLD)}
        self.step = 0
        self.step_s = step_s
        self.rng = random.Random(seed)

    def snapshots(self) -> list[RankSnapshot]:
        return [
            RankSnapshot(
                rank=r,
                node_id=NODES[r],
                incarnation=1,
                step=self.step,
                proc_status="running",
                groups={
                    "default": GroupProgress(
                        group="default", last_enqueued_seq=self.seq[r], last_completed_seq=self.done[r]
                    )
                },
            )
            for r in range(WORLD)
        ]

    def run_steps(self, n: int, slow_rank: int = -1, slowdown: float = 1.0, comm_s: float = 0.002) -> list:
        found = []
        for _ in range(n):
            compute = {
                r: self.step_s * (slowdown if r == slow_rank else 1.0) * self.rng.uniform(0.95, 1.05)
                for r in range(WORLD)
            }
            arrive = max(compute.values())
            self.now += arrive + comm_s
            self.step += 1
            samples = []
            for r in range(WORLD):
                self.seq[r] += 1
                self.done[r] += 1
                samples.append(
                    CollectiveSample(
                        rank=r,
                        group="default",
                        seq=self.seq[r],
                        op="allreduce",
                        duration_s=arrive - compute[r] + comm_s,
                    )
                )
            self.d.observe_collectives(samples)
            self.d.observe_steps(
                StepSample(rank=r, step=self.step, duration_s=arrive + comm_s) for r in range(WORLD)
            )
            self.d.observe_ranks(self.now, self.snapshots())
            found += self.d.evaluate(self.now)
        return found

    def stall(self, seconds: float, tick_s: float = 0.5) -> list:
        found = []
        end = self.now + seconds
        while self.now < end:
            self.now += tick_s
            self.d.observe_ranks(self.now, self.snapshots())
            found += self.d.evaluate(self.now)
        return found


def test_healthy_job_gives_no_verdict() -> None:
    job = FakeJob()
    assert job.run_steps(300) == []


def test_non_comm_hang_names_the_rank_that_never_enqueued() -> None:
    job = FakeJob()
    job.run_steps(50)
    for r in (0, 1, 3):  # rank 2 froze in compute; the others enqueued the next all-reduce
        job.seq[r] += 1
    found = job.stall(12.0)
    assert [(v.kind, v.rank, v.node_id) for v in found] == [(VerdictKind.HANG_NON_COMM, 2, "n2")]
    assert "rank 2 never enqueued default#" in found[0].reason
    assert float(found[0].evidence["silence_s"]) <= job.d.hang_threshold_s() + 1.0


def test_comm_hang_when_all_enqueued_none_completed() -> None:
    job = FakeJob()
    job.run_steps(50)
    for r in range(WORLD):
        job.seq[r] += 1
    found = job.stall(12.0)
    assert [v.kind for v in found] == [VerdictKind.HANG_COMM]


def test_benign_pause_in_compute_is_not_a_hang() -> None:
    job = FakeJob()
    job.run_steps(50)
    assert job.stall(30.0) == []  # nothing pending: every rank is computing (eval, checkpoint)


def test_recovered_pauses_raise_the_threshold() -> None:
    job = FakeJob()
    job.run_steps(30)
    before = job.d.hang_threshold_s()
    for r in (0, 1, 3):  # a one-rank pause (rank 2 checkpointing) that ends on its own
        job.seq[r] += 1
    job.stall(3.5)
    job.seq[2] += 1
    job.done = dict(job.seq)
    assert job.run_steps(30) == []
    assert job.d.hang_threshold_s() > before


@pytest.mark.parametrize("slowdown", [1.2, 1.5])
def test_straggler_localized_within_twenty_steps(slowdown: float) -> None:
    job = FakeJob()
    job.run_steps(30)
    found = job.run_steps(20, slow_rank=3, slowdown=slowdown)
    stragglers = [v for v in found if v.kind is VerdictKind.STRAGGLER]
    assert [(v.rank, v.node_id) for v in stragglers] == [(3, "n2")]


def test_comm_slow_on_every_rank() -> None:
    job = FakeJob()
    job.run_steps(40, comm_s=0.002)
    found = job.run_steps(20, comm_s=0.05)
    assert VerdictKind.COMM_SLOW in {v.kind for v in found}


def test_telemetry_of_another_incarnation_is_ignored() -> None:
    job = FakeJob()
    job.run_steps(10)
    stale = RankSnapshot(rank=0, incarnation=7, step=999)
    job.d.observe_ranks(job.now, [stale])
    assert job.d._ranks[0].snapshot.step == job.step


def _matrix(n: int, base: float = 0.001) -> list[float]:
    return [0.0 if i == j else base for i in range(n) for j in range(n)]


def test_probe_hot_row_and_column_is_a_node() -> None:
    peers = [f"n{i}" for i in range(5)]
    m = _matrix(5)
    for k in range(5):
        if k != 3:
            m[3 * 5 + k] = 0.02
            m[k * 5 + 3] = 0.02
    finding = localize_probe(peers, m)
    assert (finding.kind, finding.node_id) == ("node", "n3")


def test_probe_hot_cell_is_a_link() -> None:
    peers = [f"n{i}" for i in range(4)]
    m = _matrix(4)
    m[1 * 4 + 2] = 0.05
    finding = localize_probe(peers, m)
    assert (finding.kind, finding.src, finding.dst) == ("link", "n1", "n2")


def test_probe_flat_matrix_and_unmeasured_cells() -> None:
    assert localize_probe(["a", "b", "c"], _matrix(3)).kind == "none"
    sparse = [-1.0] * 9
    assert localize_probe(["a", "b", "c"], sparse).kind == "none"
    assert localize_probe(["a"], [0.0]).kind == "none"


def test_straggler_from_enqueue_times_when_no_completion_is_recorded() -> None:
    """gloo's Flight Recorder has no completion times: the last rank to enqueue is the straggler."""
    job = FakeJob()
    job.run_steps(20)
    t_ns = 10**12
    found = []
    for step in range(20):
        t_ns += int(0.2e9)
        samples = [
            CollectiveSample(
                rank=r,
                group="g",
                seq=step,
                op="allreduce",
                duration_s=-1.0,
                enqueue_ns=t_ns + (int(0.08e9) if r == 1 else r * 1000),
            )
            for r in range(WORLD)
        ]
        job.d.observe_collectives(samples)
        job.d.observe_ranks(job.now + step, job.snapshots())
        found += job.d.evaluate(job.now + step)
    assert [(v.kind, v.rank) for v in found] == [(VerdictKind.STRAGGLER, 1)]


def test_enqueue_times_of_unrelated_clocks_are_not_used() -> None:
    job = FakeJob()
    job.run_steps(20)
    before = len(job.d._last_arrivals)
    samples = [
        CollectiveSample(rank=r, group="g", seq=1, op="x", duration_s=-1.0, enqueue_ns=10**12 + r * 10**10)
        for r in range(WORLD)
    ]
    job.d.observe_collectives(samples)
    assert len(job.d._last_arrivals) == before


def test_desync_names_the_rank_whose_op_differs() -> None:
    job = FakeJob()
    job.run_steps(30)
    for r in range(WORLD):
        job.seq[r] += 1  # every rank enqueued #k, none completed it...
        op = "allgather" if r == 1 else "allreduce"  # ...but rank 1 skipped one collective
        job.d.observe_collectives(
            [CollectiveSample(rank=r, group="default", seq=job.seq[r], op=op, duration_s=-1.0, enqueue_ns=0)]
        )
    found = job.stall(12.0)
    assert [(v.kind, v.rank) for v in found] == [(VerdictKind.HANG_NON_COMM, 1)]
    assert "desynchronised" in found[0].reason


def test_arbitrate_names_the_rank_behind_at_once() -> None:
    job = FakeJob()
    job.run_steps(30)
    for r in (0, 1, 2):
        job.seq[r] += 1
    job.now += 0.5
    job.d.observe_ranks(job.now, job.snapshots())
    named = job.d.arbitrate(job.now)
    assert [(v.kind, v.rank) for v in named] == [(VerdictKind.HANG_NON_COMM, 3)]
    assert job.d.hang_culprit_named() and job.d.arbitrate(job.now) == []
    assert [v for v in job.stall(12.0) if v.rank == 3] == []  # not reported twice
