"""Two coordinator cores on one real etcd: the leader dies with a restart decision in flight; the standby
takes over from the stored state and the restart happens exactly once (one new incarnation)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from kedge.coordinator.core import Config, CoordinatorCore
from kedge.coordinator.errors import StoreError
from kedge.coordinator.etcd_client import EtcdClient
from kedge.coordinator.etcd_store import EtcdStore
from kedge.coordinator.ha import HaCoordinator
from kedge.coordinator.leader import LeaderElection
from kedge.coordinator.model import (
    ActionKind,
    CommandData,
    CommandOutcome,
    JobState,
    NodeRegistration,
    NodeReportData,
    StartWorkersBody,
    Verdict,
    VerdictKind,
)
from kedge.coordinator.store import Store
from kedge_fixtures.etcd import EtcdHandle

pytestmark = [pytest.mark.timeout(90), pytest.mark.etcd]


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def mono_s(self) -> float:
        return self.t

    def wall_ns(self) -> int:
        return int(self.t * 1e9)


class _Sink:
    def __init__(self) -> None:
        self.sent: list[tuple[str, CommandData]] = []

    def send(self, node_id: str, command: CommandData) -> None:
        self.sent.append((node_id, command))

    def take(self) -> list[tuple[str, CommandData]]:
        out, self.sent = self.sent, []
        return out


class _Side:
    """One coordinator: its own etcd session, clock, command sink and HA wrapper."""

    def __init__(self, etcd: EtcdHandle, name: str) -> None:
        self.client = EtcdClient([etcd.endpoint], timeout_s=1.0)
        self.clock, self.sink = _Clock(), _Sink()
        config = Config()
        config.executor.master_port = 29500
        config.collateral_grace_s = 0.0  # HA is under test here, not the wait for a verdict's cause

        def make_core(store: Store) -> CoordinatorCore:
            return CoordinatorCore(store, self.sink, config, self.clock)

        self.ha = HaCoordinator(
            EtcdStore(self.client, etcd.prefix),
            make_core,
            candidate_id=name,
            config=LeaderElection.Config(ttl_s=3),
        )

    def core(self) -> CoordinatorCore:
        core = self.ha.core()
        assert core is not None
        return core

    def register(self, *nodes: str) -> None:
        for node in nodes:
            reg = NodeRegistration(job_id="j", node_id=node, hostname=node, address="127.0.0.1", nproc=2)
            assert self.core().register_node(reg).accepted

    def advance(self, seconds: float, nodes: tuple[str, ...] = ("n1", "n2")) -> None:
        end = self.clock.t + seconds
        while self.clock.t < end:
            self.clock.t += 0.25
            for node in nodes:
                self.core().heartbeat("j", node)
            self.core().tick()

    def ack(self, sent: list[tuple[str, CommandData]], core: CoordinatorCore | None = None) -> None:
        for node, cmd in sent:
            outcome = CommandOutcome(
                command_id=cmd.command_id, job_id="j", node_id=node, incarnation=cmd.incarnation, ok=True
            )
            (core or self.core()).command_done(outcome)

    def close(self) -> None:
        self.ha.stop()
        self.client.close()


@pytest.fixture
def sides(etcd: EtcdHandle) -> Iterator[tuple[_Side, _Side]]:
    a, b = _Side(etcd, "a"), _Side(etcd, "b")
    yield a, b
    a.close()
    b.close()


def _wait_leader(side: _Side, timeout_s: float) -> float:
    start = time.monotonic()
    while side.ha.core() is None:
        assert time.monotonic() - start < timeout_s, "no takeover in time"
        time.sleep(0.02)
    return time.monotonic() - start


def test_restart_in_flight_when_leader_dies_happens_once(sides: tuple[_Side, _Side]) -> None:
    a, b = sides
    a.ha.start()
    _wait_leader(a, 10)
    b.ha.start()
    a.register("n1", "n2")
    a.advance(1.5)
    a.ack(a.sink.take())  # incarnation 1 running
    died = Verdict(kind=VerdictKind.RANK_DIED, rank=3, node_id="n2", reason="rank 3 killed", incarnation=1)
    a.core().report(NodeReportData(job_id="j", node_id="n2", incarnation=1, verdicts=[died]))
    a.advance(0.25)
    stops = a.sink.take()
    assert stops, "the leader should have decided a restart"
    assert b.ha.core() is None  # the standby acts on nothing
    old_core = a.core()  # still held by, say, a servicer thread of the dying leader
    a.ha.stop(resign=False)  # the leader dies mid-recovery; its lease runs out
    took_s = _wait_leader(b, 3 + 3)
    assert took_s <= 5.0
    job = b.core().status()[0].job
    assert job.incarnation == 1 and b.core().status()[0].actions[0].kind is ActionKind.RESTART
    # the dead leader's late completion changes nothing: its writes are fenced off
    with pytest.raises(StoreError):
        a.ack(stops, old_core)
        old_core.tick()
    b.register("n1", "n2")
    for _ in range(40):
        b.advance(0.25)
        b.ack(b.sink.take())
        if b.core().status()[0].job.state is JobState.RUNNING and b.core().status()[0].job.incarnation > 1:
            break
    final = b.core().status()[0].job
    assert (final.incarnation, final.restarts, final.state) == (2, 1, JobState.RUNNING)
    stored = b.ha.store.get_job("j")
    assert stored is not None and (stored.incarnation, stored.restarts) == (2, 1)
    assert not any(isinstance(c.body, StartWorkersBody) for _, c in a.sink.take())
