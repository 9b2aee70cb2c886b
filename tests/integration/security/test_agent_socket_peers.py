"""The agent's Unix socket admits only allowed users: a client running as `nobody` is stopped by
the directory mode, and where the file modes let it through (a shared group), by SO_PEERCRED.
The rank side is a real grpc client of the AgentLocal service behind the relay."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from kedge.agent import peercred
from kedge.proto import agent_pb2, agent_pb2_grpc

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(os.getuid() != 0, reason="switching to another uid needs root (the CI runs as root)"),
]
NOBODY_UID = 65534
NOGROUP_GID = 65534
SYSTEM_PYTHON = "/usr/bin/python3"  # readable by nobody, unlike the venv under /root
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000")

# Connects, speaks the HTTP/2 preface and prints what the server answered: "denied" (connect
# refused by file modes), "closed" (relay hung up: peer rejected) or "answered" (grpc replied).
_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("denied"); sys.exit(0)
try:
    s.sendall(bytes.fromhex(sys.argv[2]))
    data = s.recv(64)
except (BrokenPipeError, ConnectionResetError):  # the relay may hang up before or after we speak
    data = b""
print("answered" if data else "closed")
"""


class _Agent(agent_pb2_grpc.AgentLocalServicer):  # type: ignore[misc]
    def RegisterRank(self, request, context):  # type: ignore[no-untyped-def]
        return agent_pb2.RegisterRankResponse(accepted=True, node_id="n1")


@pytest.fixture
def run_dir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="kedge-sock-", dir="/tmp"))
    base.chmod(0o755)  # pytest's tmp_path lives under a 0700 directory that nobody cannot cross
    yield base / "run"
    shutil.rmtree(base)


def _start(
    run_dir: Path, policy: peercred.PeerPolicy, group: int | None
) -> tuple[grpc.Server, peercred.PeerCheckedRelay]:
    public = str(run_dir / "agent.sock")
    backend = peercred.private_backend_path(public)
    peercred.secure_dir(os.path.dirname(backend))
    server = grpc.server(futures.ThreadPoolExecutor(2))
    agent_pb2_grpc.add_AgentLocalServicer_to_server(_Agent(), server)
    server.add_insecure_port(f"unix:{backend}")
    server.start()
    relay = peercred.PeerCheckedRelay(public, backend, policy, group=group)
    relay.start()
    return server, relay


def _as_nobody(path: str) -> str:
    out = subprocess.run(
        [SYSTEM_PYTHON, "-c", _CLIENT, path, HTTP2_PREFACE.hex()],
        user=NOBODY_UID,
        group=NOGROUP_GID,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    return out.stdout.strip()


def test_modes_and_allowed_peer_registers(run_dir: Path) -> None:
    server, relay = _start(run_dir, peercred.PeerPolicy.parse(), group=None)
    try:
        assert (run_dir.stat().st_mode & 0o777) == 0o700
        assert (Path(relay.public_path).stat().st_mode & 0o777) == 0o600
        assert (Path(relay.backend_path).parent.stat().st_mode & 0o777) == 0o700
        with grpc.insecure_channel(f"unix:{relay.public_path}") as channel:
            reply = agent_pb2_grpc.AgentLocalStub(channel).RegisterRank(
                agent_pb2.RegisterRankRequest(job_id="j", rank=0), timeout=5
            )
        assert reply.accepted and reply.node_id == "n1"
    finally:
        relay.stop()
        server.stop(0).wait(5)


def test_other_user_cannot_even_connect_through_0700(run_dir: Path) -> None:
    server, relay = _start(run_dir, peercred.PeerPolicy.parse(), group=None)
    try:
        assert _as_nobody(relay.public_path) == "denied"
    finally:
        relay.stop()
        server.stop(0).wait(5)


def test_other_uid_in_the_socket_group_is_rejected_by_peercred(
    run_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The files let group nogroup in (0750/0660), but the policy allows only root: SO_PEERCRED decides.
    server, relay = _start(run_dir, peercred.PeerPolicy(uids=frozenset({0})), group=NOGROUP_GID)
    try:
        assert (run_dir.stat().st_mode & 0o777) == 0o750
        assert (Path(relay.public_path).stat().st_mode & 0o777) == 0o660
        with caplog.at_level(logging.WARNING, logger="kedge.agent.peercred"):
            assert _as_nobody(relay.public_path) == "closed"
        assert relay.rejected == 1
        assert any(
            r.message.startswith(f"agent_socket_peer_rejected uid={NOBODY_UID} gid={NOGROUP_GID}")
            for r in caplog.records
        )
    finally:
        relay.stop()
        server.stop(0).wait(5)


def test_allowed_group_is_admitted(run_dir: Path) -> None:
    policy = peercred.PeerPolicy(uids=frozenset({0}), gids=frozenset({NOGROUP_GID}))
    server, relay = _start(run_dir, policy, group=NOGROUP_GID)
    try:
        assert _as_nobody(relay.public_path) == "answered"
        assert relay.rejected == 0
    finally:
        relay.stop()
        server.stop(0).wait(5)


def test_secure_dir_refuses_a_directory_of_another_user(run_dir: Path) -> None:
    run_dir.mkdir()
    os.chown(run_dir, NOBODY_UID, NOGROUP_GID)
    with pytest.raises(PermissionError, match="belongs to uid 65534"):
        peercred.secure_dir(str(run_dir))


def test_the_agents_socket_server_rejects_another_uid(
    run_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from kedge.agent.socket_server import SocketServer

    hellos: list[object] = []

    def register(hello: object) -> tuple[bool, str, int]:
        hellos.append(hello)
        return True, "", 1

    server = SocketServer(
        str(run_dir / "agent.sock"),
        node_id="n1",
        on_register=register,
        on_telemetry=lambda t: None,
        peer_policy=peercred.PeerPolicy(uids=frozenset({0})),
        socket_group=NOGROUP_GID,  # file modes let nogroup in: only SO_PEERCRED stands in the way
    )
    server.start()
    try:
        with caplog.at_level(logging.WARNING, logger="kedge.agent.peercred"):
            assert _as_nobody(server.socket_path) == "closed"
        assert any(
            r.message.startswith(f"agent_socket_peer_rejected uid={NOBODY_UID}") for r in caplog.records
        )
        with grpc.insecure_channel(
            f"unix:{server.socket_path}"
        ) as channel:  # root, the agent's uid: admitted
            reply = agent_pb2_grpc.AgentLocalStub(channel).RegisterRank(
                agent_pb2.RegisterRankRequest(job_id="j", rank=3), timeout=5
            )
        assert reply.accepted and len(hellos) == 1
    finally:
        server.stop()
