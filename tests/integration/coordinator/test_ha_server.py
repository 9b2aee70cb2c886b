"""Two `kedge coordinator serve --store etcd://...` processes on one real etcd, with scripted agents:
one leads, the standby answers status read-only and redirects agents; after SIGKILL of the leader the
standby takes over within the lease TTL and continues the running job at the same incarnation."""

from __future__ import annotations

import time

import grpc
import pytest
from kedge.coordinator.admin_client import get_status
from kedge.coordinator.ha_server import LEADER_METADATA_KEY
from kedge_fixtures.coordinator_ha import Replica
from kedge_fixtures.etcd import EtcdHandle
from kedge_fixtures.fake_agent import FakeAgent

pytestmark = [pytest.mark.timeout(90), pytest.mark.etcd]


def _wait(predicate: object, timeout_s: float) -> float:
    start = time.monotonic()
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() - start < timeout_s, f"not within {timeout_s}s"
        time.sleep(0.05)
    return time.monotonic() - start


def test_standby_redirects_and_takes_over_the_running_job(etcd: EtcdHandle, replicas: list[Replica]) -> None:
    replicas.append(Replica(etcd, "a"))
    a = replicas[0]
    _wait(a.leads, 10)
    replicas.append(Replica(etcd, "b"))
    b = replicas[1]
    agent = FakeAgent(a.address, "node-a")
    try:
        assert agent.register().accepted
        assert agent.wait_for("start", 1).start.world_size == 2
        # the standby: status read-only from the store, agents redirected to the leader
        status = get_status(b.address)
        assert status["leader"] is False and status["jobs"][0]["incarnation"] == 1
        probe = FakeAgent(b.address, "node-x")
        with pytest.raises(grpc.RpcError) as refused:
            probe.register()
        probe.close()
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        assert (LEADER_METADATA_KEY, a.address) in tuple(refused.value.trailing_metadata())
    finally:
        agent.close()
    a.proc.kill()  # the leader dies
    a.proc.wait(timeout=10)
    took_s = _wait(b.leads, 8)
    assert took_s <= 5.0, f"takeover took {took_s:.2f}s"
    moved = FakeAgent(b.address, "node-a")
    moved.incarnation = 1  # its workers still run incarnation 1
    try:
        answer = moved.register()
        assert answer.accepted and answer.incarnation == 1
        time.sleep(2.0)  # healthy workers are left alone: no stop, no new start
        assert [c.WhichOneof("body") for c in moved.commands] == []
        job = get_status(b.address)["jobs"][0]
        assert (job["incarnation"], job["state"], job["restarts"]) == (1, "running", 0)
    finally:
        moved.close()


def test_etcd_restart_and_outage_under_a_running_job(etcd: EtcdHandle, replicas: list[Replica]) -> None:
    replicas.append(Replica(etcd, "a"))
    a = replicas[0]
    _wait(a.leads, 10)
    agent = FakeAgent(a.address, "node-a")
    try:
        assert agent.register().accepted
        agent.wait_for("start", 1)
        etcd.server.restart()  # etcd itself restarted: the coordinator reconnects, state intact
        _wait(a.leads, 15)
        job = get_status(a.address)["jobs"][0]
        assert (job["incarnation"], job["state"]) == (1, "running")
        etcd.server.pause()  # etcd unreachable: the coordinator stops acting and says so
        _wait(lambda: not a.leads(), 5)
        probe = FakeAgent(a.address, "node-x")
        with pytest.raises(grpc.RpcError) as refused:
            probe.register()
        probe.close()
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        etcd.server.resume()  # back: it leads again and continues the same job
        _wait(a.leads, 20)
        time.sleep(1.0)
        job = get_status(a.address)["jobs"][0]
        assert (job["incarnation"], job["state"], job["restarts"]) == (1, "running", 0)
        assert [(c.WhichOneof("body"), c.incarnation) for c in agent.commands] == [("start", 1)]
    finally:
        agent.close()
