"""Leader election and fencing against a real etcd, with real processes and real signals."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kedge.coordinator.errors import StaleIncarnation
from kedge.coordinator.etcd_client import EtcdClient
from kedge.coordinator.etcd_store import EtcdStore, NotLeader
from kedge.coordinator.leader import LeaderElection
from kedge.coordinator.model import JobState
from kedge_fixtures.etcd import EtcdHandle, pause_process, resume_process

pytestmark = [pytest.mark.timeout(60), pytest.mark.etcd]

_CANDIDATE = Path(__file__).with_name("ha_candidate.py")
_TTL_S = 3


@pytest.fixture
def client(etcd: EtcdHandle) -> Iterator[EtcdClient]:
    with EtcdClient([etcd.endpoint], timeout_s=1.0) as c:
        yield c


def _wait(predicate: object, timeout_s: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if predicate():  # type: ignore[operator]
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError(f"condition not met within {timeout_s}s")


def _election(client: EtcdClient, key: str, name: str) -> LeaderElection:
    config = LeaderElection.Config(ttl_s=_TTL_S)
    return LeaderElection(client, key, candidate_id=name, address=f"{name}:1", config=config)


def test_exactly_one_leader_and_resignation_hands_over(etcd: EtcdHandle, client: EtcdClient) -> None:
    key = etcd.prefix + "leader"
    elections = [_election(client, key, f"c{i}") for i in range(3)]
    for e in elections:
        e.start()
    try:
        _wait(lambda: sum(e.is_leader() for e in elections) == 1, 10)
        time.sleep(0.5)  # stays exactly one
        leaders = [e for e in elections if e.is_leader()]
        assert len(leaders) == 1
        info = leaders[0].leader()
        assert info is not None and info.candidate_id == leaders[0].candidate_id
        leaders[0].stop()  # resigns: revokes the lease
        rest = [e for e in elections if e is not leaders[0]]
        took_s = _wait(lambda: sum(e.is_leader() for e in rest) == 1, 5)
        assert took_s < 2.0, f"resignation handover took {took_s:.2f}s"
        new_term = next(e for e in rest if e.is_leader()).current()
        assert new_term is not None and new_term.revision > info.revision
    finally:
        for e in elections:
            e.stop()


class _Candidate:
    """A candidate process (tests/multiproc/coordinator/ha_candidate.py) driven over stdin/stdout."""

    def __init__(self, etcd: EtcdHandle, name: str, job_id: str) -> None:
        argv = [sys.executable, str(_CANDIDATE), etcd.endpoint, etcd.prefix, name, job_id]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert json.loads(self._line()) == {"ready": True}

    def _line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline()

    def ask(self, command: str) -> dict[str, object]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return dict(json.loads(self._line()))

    def close(self) -> None:
        if self.proc.poll() is None:
            resume_process(self.proc.pid)
            self.proc.kill()
        self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


def test_paused_leader_late_write_is_rejected(etcd: EtcdHandle, client: EtcdClient) -> None:
    store = EtcdStore(client, etcd.prefix)
    store.ensure_job("j", command=[], now_wall_ns=0)
    old = _Candidate(etcd, "old", "j")
    standby = _election(client, store.leader_key, "standby")
    try:
        _wait(lambda: old.ask("status")["leader"], 10)
        assert old.ask("write") == {"written": True}
        standby.start()
        pause_process(old.proc.pid)  # SIGSTOP: the leader freezes mid-term
        took_s = _wait(standby.is_leader, _TTL_S + 4)
        assert took_s <= _TTL_S + 2.0
        store.attach_leadership(standby.current)
        store.set_job_step("j", 7, incarnation=0)
        resume_process(old.proc.pid)  # SIGCONT: it wakes up believing nothing happened
        stale = old.ask("write-stale")  # a write it had decided on before the pause
        assert stale["written"] is False and stale["error"] == "NotLeader", stale
        live = old.ask("write")  # its own clock also tells it that it no longer leads
        assert live["written"] is False and live["error"] == "NotLeader", live
        job = store.get_job("j")
        assert job is not None and job.step == 7
    finally:
        standby.stop()
        old.close()


def test_leader_kill_takeover_within_ttl(etcd: EtcdHandle, client: EtcdClient) -> None:
    store = EtcdStore(client, etcd.prefix)
    store.ensure_job("j", command=[], now_wall_ns=0)
    old = _Candidate(etcd, "old", "j")
    standby = _election(client, store.leader_key, "standby")
    try:
        _wait(lambda: old.ask("status")["leader"], 10)
        standby.start()
        time.sleep(0.3)
        assert not standby.is_leader()
        old.proc.kill()
        took_s = _wait(standby.is_leader, _TTL_S + 4)
        assert took_s <= _TTL_S + 2.0, f"takeover took {took_s:.2f}s"
        store.attach_leadership(standby.current)
        assert (
            store.begin_incarnation(
                "j", expected_incarnation=0, assignments=[], state=JobState.RUNNING, count_restart=False
            )
            == 1
        )
        with pytest.raises(StaleIncarnation):
            store.set_job_step("j", 3, incarnation=0)
    finally:
        standby.stop()
        old.close()


def test_etcd_unreachable_leader_stops_acting_and_recovers(
    etcd: EtcdHandle, client: EtcdClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="kedge.coordinator.leader")
    store = EtcdStore(client, etcd.prefix)
    leader = _election(client, store.leader_key, "solo")
    store.attach_leadership(leader.current)
    leader.start()
    try:
        assert leader.wait_elected(10)
        store.ensure_job("j", command=[], now_wall_ns=0)
        etcd.server.pause()  # etcd hangs: no answer, no error
        stopped_s = _wait(lambda: not leader.is_leader(), _TTL_S + 1)
        assert stopped_s <= _TTL_S
        with pytest.raises(NotLeader):
            store.set_job_step("j", 1, incarnation=0)
        assert "etcd_unreachable" in caplog.text
        etcd.server.resume()
        _wait(leader.is_leader, 3 * _TTL_S + 5)
        store.set_job_step("j", 2, incarnation=0)
        job = store.get_job("j")
        assert job is not None and job.step == 2
        _wait(lambda: "etcd_reachable" in caplog.text, 5)
        assert "leader_deposed" in caplog.text
    finally:
        leader.stop()


def test_etcd_restart_state_intact_and_leadership_back(etcd: EtcdHandle, client: EtcdClient) -> None:
    store = EtcdStore(client, etcd.prefix)
    leader = _election(client, store.leader_key, "solo")
    store.attach_leadership(leader.current)
    leader.start()
    try:
        assert leader.wait_elected(10)
        store.ensure_job("j", command=["train"], now_wall_ns=0)
        store.begin_incarnation(
            "j", expected_incarnation=0, assignments=[], state=JobState.RUNNING, count_restart=True
        )
        etcd.server.restart()
        _wait(leader.is_leader, 3 * _TTL_S + 5)
        job = store.get_job("j")
        assert job is not None and (job.incarnation, job.restarts, job.command) == (1, 1, ["train"])
        store.set_job_state("j", JobState.RECOVERING, incarnation=1)
    finally:
        leader.stop()
