"""Fuzzing the agent's socket service: arbitrary bytes as any AgentLocal request, arbitrary but
well-formed requests, and raw garbage on the socket never crash the server or reach the supervisor
as anything but the documented types; the server keeps answering afterwards."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kedge.agent.socket_server import RankHello, SocketServer, Telemetry
from kedge.proto import agent_pb2, agent_pb2_grpc

pytestmark = pytest.mark.timeout(120)
FUZZ_EXAMPLES = int(os.environ.get("KEDGE_FUZZ_EXAMPLES", "200"))
_FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
RPC_TIMEOUT_S = 5.0
_METHODS = {
    "/kedge.agent.v1.AgentLocal/RegisterRank": "unary_unary",
    "/kedge.agent.v1.AgentLocal/StreamTelemetry": "stream_unary",
}


class _Seen:
    def __init__(self) -> None:
        self.hellos: list[RankHello] = []
        self.telemetry: list[Telemetry] = []

    def register(self, hello: RankHello) -> tuple[bool, str, int]:
        assert isinstance(hello.rank, int) and isinstance(hello.job_id, str)
        self.hellos.append(hello)
        return False, "fuzz", 0

    def on_telemetry(self, t: Telemetry) -> None:
        assert all(isinstance(v, float) for v in t.gauges.values())
        self.telemetry.append(t)


@pytest.fixture(scope="module")
def agent_socket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, _Seen]]:
    seen = _Seen()
    path = str(Path(tmp_path_factory.mktemp("fuzzsock")) / "run" / "agent.sock")
    server = SocketServer(
        path, node_id="n", on_register=seen.register, on_telemetry=seen.on_telemetry, max_ranks=4
    )
    server.start()
    yield path, seen
    server.stop()


@pytest.fixture(scope="module")
def channel(agent_socket: tuple[str, _Seen]) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"unix:{agent_socket[0]}") as ch:
        yield ch


def _alive(channel: grpc.Channel) -> None:
    reply = agent_pb2_grpc.AgentLocalStub(channel).RegisterRank(
        agent_pb2.RegisterRankRequest(rank=1), timeout=RPC_TIMEOUT_S
    )
    assert reply.reason == "fuzz"


@_FUZZ
@given(st.sampled_from(sorted(_METHODS)), st.lists(st.binary(max_size=512), min_size=1, max_size=3))
def test_fuzz_raw_request_bytes(channel: grpc.Channel, method: str, payloads: list[bytes]) -> None:
    kind = _METHODS[method]
    try:
        if kind == "unary_unary":
            channel.unary_unary(method)(payloads[0], timeout=RPC_TIMEOUT_S)
        else:
            channel.stream_unary(method)(iter(payloads), timeout=RPC_TIMEOUT_S)
    except grpc.RpcError as exc:
        # Undecodable bytes are refused by the server's deserializer, never passed on.
        assert exc.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), exc


_i32 = st.integers(-(2**31), 2**31 - 1)
_i64 = st.integers(-(2**63), 2**63 - 1)


@_FUZZ
@given(
    st.builds(
        agent_pb2.RegisterRankRequest,
        job_id=st.text(max_size=50),
        rank=_i32,
        local_rank=_i32,
        world_size=_i32,
        pid=_i32,
        progress_page=st.text(max_size=100),
        incarnation=_i64,
    ),
    st.builds(
        agent_pb2.TelemetryBatch,
        rank=_i32,
        incarnation=_i64,
        dropped_records=_i64,
        gauges=st.dictionaries(st.text(max_size=20), st.floats(allow_nan=True), max_size=4),
    ),
)
def test_fuzz_wellformed_requests(
    channel: grpc.Channel, hello: agent_pb2.RegisterRankRequest, batch: agent_pb2.TelemetryBatch
) -> None:
    stub = agent_pb2_grpc.AgentLocalStub(channel)
    assert not stub.RegisterRank(hello, timeout=RPC_TIMEOUT_S).accepted
    try:
        stub.StreamTelemetry(iter([batch]), timeout=RPC_TIMEOUT_S)
    except grpc.RpcError as exc:  # a callback refusing bad values must surface as an RPC error only
        assert exc.code() == grpc.StatusCode.UNKNOWN, exc


@settings(
    max_examples=max(20, FUZZ_EXAMPLES // 10),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(st.binary(min_size=1, max_size=4096))
def test_fuzz_raw_garbage_on_the_socket(
    agent_socket: tuple[str, _Seen], channel: grpc.Channel, garbage: bytes
) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(RPC_TIMEOUT_S)
        s.connect(agent_socket[0])
        try:
            s.sendall(garbage)
            s.shutdown(socket.SHUT_WR)
            while s.recv(4096):
                pass
        except OSError:
            pass  # the server may hang up on a bad preface: that is the right answer
    _alive(channel)
