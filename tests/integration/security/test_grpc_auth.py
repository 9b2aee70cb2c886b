"""Mutual TLS and bearer tokens on a real grpc server with the coordinator's service definitions:
agents and admins with no token, a wrong token, or a certificate from an untrusted CA are refused;
the right ones get through; a SIGHUP-style reload picks up new certificates for new connections."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass

import grpc
import pytest
from kedge.agent import auth as agent_auth
from kedge.coordinator import auth
from kedge.proto import admin_pb2, admin_pb2_grpc, coordinator_pb2, coordinator_pb2_grpc
from kedge_fixtures.pki import Pki, make_pki

pytestmark = pytest.mark.timeout(60)
RPC_TIMEOUT_S = 5.0


class _Coordinator(coordinator_pb2_grpc.CoordinatorServicer):  # type: ignore[misc]
    def Heartbeat(self, request, context):  # type: ignore[no-untyped-def]
        return coordinator_pb2.HeartbeatResponse(ok=True)


class _Admin(admin_pb2_grpc.AdminServicer):  # type: ignore[misc]
    def GetStatus(self, request, context):  # type: ignore[no-untyped-def]
        return admin_pb2.StatusResponse(coordinator="test")


@dataclass
class Served:
    address: str
    security: auth.ServerSecurity


def _serve(config: auth.Config, listen: str = "127.0.0.1:0") -> tuple[grpc.Server, Served]:
    security = auth.server_security(listen, config)
    server = grpc.server(futures.ThreadPoolExecutor(4), interceptors=security.interceptors())
    coordinator_pb2_grpc.add_CoordinatorServicer_to_server(_Coordinator(), server)
    admin_pb2_grpc.add_AdminServicer_to_server(_Admin(), server)
    port = security.add_port(server, listen)
    server.start()
    return server, Served(f"127.0.0.1:{port}", security)


@pytest.fixture
def secured(pki: Pki) -> Iterator[Served]:
    config = auth.Config(
        tls=auth.TlsFiles(cert=pki.server_cert, key=pki.server_key, ca=pki.ca),
        token_files={"agent": pki.agent_token_file, "admin": pki.admin_token_file},
    )
    server, served = _serve(config)
    yield served
    server.stop(0).wait(5)


def _heartbeat(channel: grpc.Channel) -> coordinator_pb2.HeartbeatResponse:
    with channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        return stub.Heartbeat(coordinator_pb2.HeartbeatRequest(job_id="j"), timeout=RPC_TIMEOUT_S)


def _status(channel: grpc.Channel) -> admin_pb2.StatusResponse:
    with channel:
        return admin_pb2_grpc.AdminStub(channel).GetStatus(admin_pb2.StatusRequest(), timeout=RPC_TIMEOUT_S)


def _agent_channel(served: Served, pki: Pki, token_file: str | None, rogue: bool = False) -> grpc.Channel:
    tls = agent_auth.TlsFiles(
        cert=pki.rogue_cert if rogue else pki.agent_cert,
        key=pki.rogue_key if rogue else pki.agent_key,
        ca=pki.ca,
    )
    token = agent_auth.read_token(token_file) if token_file else None
    return agent_auth.coordinator_channel(served.address, tls=tls, token=token)


def _admin_channel(served: Served, pki: Pki, token_file: str | None, rogue: bool = False) -> grpc.Channel:
    tls = auth.TlsFiles(
        cert=pki.rogue_cert if rogue else pki.admin_cert,
        key=pki.rogue_key if rogue else pki.admin_key,
        ca=pki.ca,
    )
    return auth.client_channel(served.address, tls=tls, token_file=token_file)


def test_agent_and_admin_with_right_credentials_pass(secured: Served, pki: Pki) -> None:
    assert _heartbeat(_agent_channel(secured, pki, pki.agent_token_file)).ok
    assert _status(_admin_channel(secured, pki, pki.admin_token_file)).coordinator == "test"


@pytest.mark.parametrize("token", ["none", "wrong", "other_role"])
def test_agent_without_the_agent_token_is_refused(
    secured: Served, pki: Pki, token: str, caplog: pytest.LogCaptureFixture
) -> None:
    token_file = {"none": None, "wrong": pki.wrong_token_file, "other_role": pki.admin_token_file}[token]
    with (
        caplog.at_level(logging.WARNING, logger="kedge.coordinator.auth"),
        pytest.raises(grpc.RpcError) as err,
    ):
        _heartbeat(_agent_channel(secured, pki, token_file))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "role agent" in (err.value.details() or "")
    assert any(
        "auth_rejected method=/kedge.coordinator.v1.Coordinator/Heartbeat" in r.message
        for r in caplog.records
    )


@pytest.mark.parametrize("token", ["none", "wrong", "other_role"])
def test_admin_without_the_admin_token_is_refused(
    secured: Served, pki: Pki, token: str, caplog: pytest.LogCaptureFixture
) -> None:
    token_file = {"none": None, "wrong": pki.wrong_token_file, "other_role": pki.agent_token_file}[token]
    with (
        caplog.at_level(logging.WARNING, logger="kedge.coordinator.auth"),
        pytest.raises(grpc.RpcError) as err,
    ):
        _status(_admin_channel(secured, pki, token_file))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert any(
        "auth_rejected method=/kedge.coordinator.v1.Admin/GetStatus" in r.message for r in caplog.records
    )


def test_untrusted_certificate_is_refused_at_the_handshake(secured: Served, pki: Pki) -> None:
    for channel in (
        _agent_channel(secured, pki, pki.agent_token_file, rogue=True),
        _admin_channel(secured, pki, pki.admin_token_file, rogue=True),
    ):
        with pytest.raises(grpc.RpcError) as err:
            _heartbeat(channel)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_without_certificate_is_refused(secured: Served, pki: Pki) -> None:
    creds = grpc.ssl_channel_credentials(root_certificates=pki.dir.joinpath("ca.pem").read_bytes())
    with pytest.raises(grpc.RpcError) as err:
        _heartbeat(grpc.secure_channel(secured.address, creds))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_plaintext_client_is_refused_by_a_tls_server(secured: Served, pki: Pki) -> None:
    token = agent_auth.read_token(pki.agent_token_file)
    with pytest.raises(grpc.RpcError) as err:
        _heartbeat(agent_auth.coordinator_channel(secured.address, tls=None, token=token))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_reload_swaps_certificates_for_new_connections(pki: Pki, tmp_path) -> None:  # type: ignore[no-untyped-def]
    live = tmp_path / "live"
    live.mkdir()
    for name in ("server.pem", "server.key", "ca.pem"):
        shutil.copy(pki.dir / name, live / name)
    config = auth.Config(
        tls=auth.TlsFiles(
            cert=str(live / "server.pem"), key=str(live / "server.key"), ca=str(live / "ca.pem")
        ),
        token_files={"agent": pki.agent_token_file, "admin": pki.admin_token_file},
    )
    server, served = _serve(config)
    try:
        assert _heartbeat(_agent_channel(served, pki, pki.agent_token_file)).ok
        fresh = make_pki(tmp_path / "fresh")  # a new CA: old clients must fail, new ones pass
        for name in ("server.pem", "server.key", "ca.pem"):
            shutil.copy(fresh.dir / name, live / name)
        served.security.reload()
        with pytest.raises(grpc.RpcError):
            _heartbeat(_agent_channel(served, pki, pki.agent_token_file))
        tls = agent_auth.TlsFiles(cert=fresh.agent_cert, key=fresh.agent_key, ca=fresh.ca)
        token = agent_auth.read_token(pki.agent_token_file)
        assert _heartbeat(agent_auth.coordinator_channel(served.address, tls=tls, token=token)).ok
        assert served.security.tls is not None and served.security.tls.reloads == 1
    finally:
        server.stop(0).wait(5)


def test_tokens_without_tls_on_loopback(pki: Pki) -> None:
    config = auth.Config(token_files={"agent": pki.agent_token_file, "admin": pki.admin_token_file})
    server, served = _serve(config)
    try:
        token = agent_auth.read_token(pki.agent_token_file)
        assert _heartbeat(agent_auth.coordinator_channel(served.address, tls=None, token=token)).ok
        with pytest.raises(grpc.RpcError) as err:
            _heartbeat(agent_auth.coordinator_channel(served.address, tls=None, token=None))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        server.stop(0).wait(5)
