"""The coordinator core with a virtual clock and scripted agents: start, restart, shrink, fencing,
coordinator restart. No sockets."""

from __future__ import annotations

from pathlib import Path

import pytest
from kedge.coordinator.core import Config, CoordinatorCore
from kedge.coordinator.model import (
    ActionKind,
    CommandData,
    CommandOutcome,
    JobState,
    NodeRegistration,
    NodeReportData,
    NodeState,
    ProbeData,
    RunProbeBody,
    StartWorkersBody,
    StopWorkersBody,
    Verdict,
    VerdictKind,
)
from kedge.coordinator.policy import EXIT_STOP_NO_REQUEUE
from kedge.coordinator.sqlite_store import SqliteStore

pytestmark = pytest.mark.timeout(20)


class VirtualClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def mono_s(self) -> float:
        return self.t

    def wall_ns(self) -> int:
        return int(self.t * 1e9)


class Sink:
    def __init__(self) -> None:
        self.sent: list[tuple[str, CommandData]] = []

    def send(self, node_id: str, command: CommandData) -> None:
        self.sent.append((node_id, command))

    def take(self) -> list[tuple[str, CommandData]]:
        out, self.sent = self.sent, []
        return out


def make(tmp_path: Path, **policy: object) -> tuple[CoordinatorCore, Sink, VirtualClock]:
    sink, clock = Sink(), VirtualClock()
    config = Config()
    config.executor.master_port = 29500
    for k, v in policy.items():
        setattr(config.policy, k, v)
    return CoordinatorCore(SqliteStore(tmp_path / "s.db"), sink, config, clock), sink, clock


def register(core: CoordinatorCore, node: str, known: int = 0) -> None:
    ans = core.register_node(
        NodeRegistration(
            job_id="j", node_id=node, hostname=node, address="127.0.0.1", nproc=2, known_incarnation=known
        )
    )
    assert ans.accepted, ans.reason


def ack_all(core: CoordinatorCore, sent: list[tuple[str, CommandData]]) -> None:
    for node, cmd in sent:
        core.command_done(
            CommandOutcome(
                command_id=cmd.command_id, job_id="j", node_id=node, incarnation=cmd.incarnation, ok=True
            )
        )


def advance(
    core: CoordinatorCore, clock: VirtualClock, seconds: float, heartbeat: tuple[str, ...] = ()
) -> None:
    end = clock.t + seconds
    while clock.t < end:
        clock.t += 0.25
        for node in heartbeat:
            core.heartbeat("j", node)
        core.tick()


def start_two_nodes(core: CoordinatorCore, sink: Sink, clock: VirtualClock) -> None:
    register(core, "n1")
    register(core, "n2")
    advance(core, clock, 1.5, ("n1", "n2"))
    starts = sink.take()
    assert sorted(n for n, _ in starts) == ["n1", "n2"]
    bodies = {n: c.body for n, c in starts}
    assert all(isinstance(b, StartWorkersBody) for b in bodies.values())
    assert bodies["n1"].workers == [(0, 0), (1, 1)] and bodies["n2"].workers == [(2, 0), (3, 1)]  # type: ignore[union-attr]
    assert {c.incarnation for _, c in starts} == {1}
    ack_all(core, starts)
    assert core.status()[0].job.state is JobState.RUNNING


def test_start_restart_and_resume(tmp_path: Path) -> None:
    core, sink, clock = make(tmp_path)
    start_two_nodes(core, sink, clock)
    died = Verdict(kind=VerdictKind.RANK_DIED, rank=3, reason="rank 3 killed by signal 9", incarnation=1)
    core.report(NodeReportData(job_id="j", node_id="n2", incarnation=1, verdicts=[died]))
    advance(core, clock, 0.25, ("n1", "n2"))
    stops = sink.take()
    assert sorted(n for n, _ in stops) == ["n1", "n2"] and all(
        isinstance(c.body, StopWorkersBody) for _, c in stops
    )
    ack_all(core, stops)
    starts = sink.take()
    assert {c.incarnation for _, c in starts} == {2} and len(starts) == 2
    ack_all(core, starts)
    status = core.status()[0]
    assert (status.job.state, status.job.incarnation, status.job.restarts) == (JobState.RUNNING, 2, 1)
    assert status.actions[0].kind is ActionKind.RESTART and "rank 3 killed" in status.actions[0].reason
    assert status.diagnoses[0].node_id == "n2"
    # a verdict delivered twice (agent reconnect) counts once; a late report about the old world changes nothing
    again = Verdict(kind=VerdictKind.RANK_DIED, rank=1, reason="rank 1 died", incarnation=2, wall_time_ns=5)
    core.report(NodeReportData(job_id="j", node_id="n1", incarnation=2, verdicts=[again]))
    core.report(NodeReportData(job_id="j", node_id="n1", incarnation=2, verdicts=[again]))
    assert len(core._jobs["j"].verdicts) == 1
    core._jobs["j"].verdicts.clear()
    core.report(NodeReportData(job_id="j", node_id="n2", incarnation=1, verdicts=[died]))
    advance(core, clock, 0.5, ("n1", "n2"))
    assert sink.take() == []


def test_node_loss_shrinks_and_lost_node_returns_as_spare(tmp_path: Path) -> None:
    core, sink, clock = make(tmp_path)
    start_two_nodes(core, sink, clock)
    advance(core, clock, 5.5, ("n1",))  # n2's agent went silent
    stops = sink.take()
    assert [n for n, _ in stops] == ["n1"]
    ack_all(core, stops)
    starts = sink.take()
    assert [(n, c.body.world_size, c.body.workers) for n, c in starts] == [("n1", 2, [(0, 0), (1, 1)])]  # type: ignore[union-attr]
    ack_all(core, starts)
    status = core.status()[0]
    assert status.job.world_size == 2 and status.actions[0].kind is ActionKind.SHRINK
    assert {n.record.node_id: n.record.state for n in status.nodes} == {
        "n1": NodeState.ALIVE,
        "n2": NodeState.ISOLATED,
    }
    ans = core.register_node(NodeRegistration(job_id="j", node_id="n2", nproc=2))
    assert not ans.accepted and "isolated" in ans.reason


def test_budget_exhausted_stops_with_no_requeue_code(tmp_path: Path) -> None:
    core, sink, clock = make(tmp_path, restart_budget=1)
    start_two_nodes(core, sink, clock)
    for inc in (1, 2):
        v = Verdict(kind=VerdictKind.RANK_DIED, rank=0, reason="died", incarnation=inc)
        core.report(NodeReportData(job_id="j", node_id="n1", incarnation=inc, verdicts=[v]))
        advance(core, clock, 0.25, ("n1", "n2"))
        ack_all(core, sink.take())
        ack_all(core, sink.take())
    status = core.status()[0]
    assert status.job.state is JobState.STOPPED and status.actions[0].kind is ActionKind.STOP
    assert core.exit_code("j") == EXIT_STOP_NO_REQUEUE


def test_restarted_coordinator_keeps_the_world(tmp_path: Path) -> None:
    core, sink, clock = make(tmp_path)
    start_two_nodes(core, sink, clock)
    core.store.close()
    again, sink2, _ = make(tmp_path)
    status = again.status()[0]
    assert (status.job.state, status.job.incarnation, status.job.world_size) == (JobState.RUNNING, 1, 4)
    register(again, "n1", known=1)
    register(again, "n2", known=1)
    again.tick()
    assert sink2.take() == []  # adopted: healthy workers are not restarted


def test_stale_coordinator_is_fenced(tmp_path: Path) -> None:
    core, sink, clock = make(tmp_path)
    start_two_nodes(core, sink, clock)
    stale, stale_sink, stale_clock = make(tmp_path)  # a second coordinator that loaded incarnation 1
    stale_clock.t = clock.t
    v = Verdict(kind=VerdictKind.RANK_DIED, rank=0, reason="died", incarnation=1)
    core.report(NodeReportData(job_id="j", node_id="n1", incarnation=1, verdicts=[v]))
    advance(core, clock, 0.25, ("n1", "n2"))
    ack_all(core, sink.take())
    ack_all(core, sink.take())
    assert core.status()[0].job.incarnation == 2
    ans = stale.register_node(NodeRegistration(job_id="j", node_id="n1", nproc=2, known_incarnation=1))
    assert not ans.accepted and "stale incarnation" in ans.reason
    # its own (old) view still says incarnation 1; its decision is refused and it reloads
    stale._jobs["j"].verdicts.append(v)
    stale.tick()
    assert stale_sink.take() == []
    assert stale.status()[0].job.incarnation == 2
    assert core.store.get_job("j").incarnation == 2  # type: ignore[union-attr]


def test_comm_slow_commands_a_probe_and_localizes_the_node(tmp_path: Path) -> None:
    core, sink, clock = make(tmp_path)
    register(core, "n3")
    start_two_nodes_and(core, sink, clock, extra=("n3",))
    slow = Verdict(kind=VerdictKind.COMM_SLOW, reason="collectives slow on every rank", incarnation=1)
    core._jobs["j"].verdicts.append(slow)
    advance(core, clock, 0.25, ("n1", "n2", "n3"))
    probes = [(n, c) for n, c in sink.take() if isinstance(c.body, RunProbeBody)]
    assert sorted(n for n, _ in probes) == ["n1", "n2", "n3"]
    peers = probes[0][1].body.peers  # type: ignore[union-attr]
    hot = peers.index("n2")
    for node, cmd in probes:
        i = peers.index(node)
        row = [-1.0] * 9
        for j in range(3):
            if j != i:
                row[i * 3 + j] = 0.05 if hot in (i, j) else 0.001
        core.report(
            NodeReportData(
                job_id="j",
                node_id=node,
                incarnation=1,
                probe=ProbeData(command_id=cmd.command_id, peers=peers, delay_s=row),
            )
        )
    advance(core, clock, 0.25, ("n1", "n2", "n3"))
    status = core.status()[0]
    localized = [v for v in status.diagnoses if v.kind is VerdictKind.COMM_SLOW and v.node_id]
    assert [v.node_id for v in localized] == ["n2"] and "hot" in localized[0].reason
    assert status.actions[0].kind is ActionKind.ALERT  # slow nodes are isolated only when configured


def start_two_nodes_and(
    core: CoordinatorCore, sink: Sink, clock: VirtualClock, extra: tuple[str, ...]
) -> None:
    register(core, "n1")
    register(core, "n2")
    advance(core, clock, 1.5, ("n1", "n2", *extra))
    ack_all(core, sink.take())
    assert core.status()[0].job.state is JobState.RUNNING
