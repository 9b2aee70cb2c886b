"""`kedge coordinator serve` with mutual TLS and tokens, reached by the real agent client and by
`kedge status`: the right ones get in; no token, a wrong token and an untrusted certificate are
refused with a clear line on both sides; the listen rule refuses or warns at the CLI."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from kedge_fixtures.pki import Pki
from kedge_fixtures.processes import free_port

pytestmark = pytest.mark.timeout(90)
KEDGE = [sys.executable, "-c", "from kedge.coordinator.cli import main; main()"]
AGENT_WAIT_S = 20.0


@pytest.fixture
def coordinator(pki: Pki, tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    proc = subprocess.Popen(
        [
            *KEDGE, "coordinator", "serve", "--listen", "127.0.0.1:0", "--store", f"sqlite://{tmp_path / 'c.db'}",
            "--tls-cert", pki.server_cert, "--tls-key", pki.server_key, "--tls-ca", pki.ca,
            "--agent-token-file", pki.agent_token_file, "--admin-token-file", pki.admin_token_file, "-v",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"listening on \S+:(\d+)", line)
    assert match, (line, proc.stderr.read() if proc.poll() is not None else "")
    yield f"127.0.0.1:{match.group(1)}", proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)


def _server_log(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    return err


def _agent_log(
    address: str, pki: Pki, tmp_path: Path, *, token: str | None, rogue: bool = False, wait_for: str
) -> str:
    """Runs `kedge agent serve` against the coordinator until `wait_for` shows in its log (or
    AGENT_WAIT_S passes), stops it with SIGTERM and returns its log."""
    cert, key = (pki.rogue_cert, pki.rogue_key) if rogue else (pki.agent_cert, pki.agent_key)
    cmd = [
        *KEDGE, "agent", "serve", "--coordinator", address, "--job-id", "job", "--node-id", "n1",
        "--run-dir", str(tmp_path / "run"), "--metrics-addr", "", "--nvml", "off",
        "--tls-cert", cert, "--tls-key", key, "--tls-ca", pki.ca,
    ]  # fmt: skip
    if token is not None:
        cmd += ["--token-file", token]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    lines: list[str] = []
    found = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if wait_for in line:
                found.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    found.wait(AGENT_WAIT_S)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    reader.join(10)
    proc.stderr.close()
    return "".join(lines)


def test_agent_with_certificate_and_token_registers(
    coordinator: tuple[str, subprocess.Popen[str]], pki: Pki, tmp_path: Path
) -> None:
    address, proc = coordinator
    log = _agent_log(address, pki, tmp_path, token=pki.agent_token_file, wait_for="node_registered")
    assert "node_registered node=n1" in log, log
    assert "auth_rejected" not in _server_log(proc)


@pytest.mark.parametrize("token", ["none", "wrong", "admin"])
def test_agent_without_its_token_is_refused_on_both_sides(
    coordinator: tuple[str, subprocess.Popen[str]], pki: Pki, token: str, tmp_path: Path
) -> None:
    address, proc = coordinator
    token_file = {"none": None, "wrong": pki.wrong_token_file, "admin": pki.admin_token_file}[token]
    log = _agent_log(address, pki, tmp_path, token=token_file, wait_for="coordinator_refused_agent")
    reason = "no bearer token" if token == "none" else "wrong token"
    assert re.search(
        rf"ERROR kedge.agent.coordinator_client coordinator_refused_agent addr={address} .*{reason}", log
    ), log
    assert "node_registered" not in log
    assert re.search(
        rf"auth_rejected method=/kedge.coordinator.v1.Coordinator/RegisterNode role=agent peer=\S+ reason={reason}",
        _server_log(proc),
    )


def test_agent_with_untrusted_certificate_is_refused_on_both_sides(
    coordinator: tuple[str, subprocess.Popen[str]], pki: Pki, tmp_path: Path
) -> None:
    address, proc = coordinator
    log = _agent_log(
        address, pki, tmp_path, token=pki.agent_token_file, rogue=True, wait_for="tls=on detail="
    )
    assert re.search(
        rf"coordinator_unreachable addr={address} code=StatusCode.UNAVAILABLE tls=on detail=.*certificate",
        log,
    ), log
    assert "node_registered" not in log
    # grpc's TLS layer logs the refused handshake on the server (the certificate never reaches Python).
    assert re.search(r"Handshake failed.*CERTIFICATE_VERIFY_FAILED", _server_log(proc))


def _status(
    address: str, pki: Pki, token_file: str, *, rogue: bool = False
) -> subprocess.CompletedProcess[str]:
    cert, key = (pki.rogue_cert, pki.rogue_key) if rogue else (pki.admin_cert, pki.admin_key)
    return subprocess.run(
        [*KEDGE, "status", "--coordinator", address, "--json", "--tls-cert", cert, "--tls-key", key,
         "--tls-ca", pki.ca, "--token-file", token_file],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def test_admin_status_with_right_and_wrong_credentials(
    coordinator: tuple[str, subprocess.Popen[str]], pki: Pki
) -> None:
    address, proc = coordinator
    assert _status(address, pki, pki.admin_token_file).returncode == 0
    wrong = _status(address, pki, pki.wrong_token_file)
    assert wrong.returncode == 2 and "refused this admin: kedge: wrong token for role admin" in wrong.stderr
    agent_token = _status(address, pki, pki.agent_token_file)
    assert agent_token.returncode == 2 and "wrong token for role admin" in agent_token.stderr
    rogue = _status(address, pki, pki.admin_token_file, rogue=True)
    assert rogue.returncode == 2 and "unreachable: UNAVAILABLE" in rogue.stderr
    assert rogue.stderr.count("\n") == 1
    log = _server_log(proc)
    assert len(re.findall(r"auth_rejected method=/kedge.coordinator.v1.Admin/GetStatus role=admin", log)) == 2
    assert "CERTIFICATE_VERIFY_FAILED" in log


def test_sighup_reloads_without_dropping_the_server(
    coordinator: tuple[str, subprocess.Popen[str]], pki: Pki
) -> None:
    address, proc = coordinator
    proc.send_signal(signal.SIGHUP)
    assert _status(address, pki, pki.admin_token_file).returncode == 0
    assert "tokens_reloaded" in _server_log(proc)


def test_non_loopback_listen_without_protection_is_refused_before_binding(tmp_path: Path) -> None:
    out = subprocess.run(
        [*KEDGE, "coordinator", "serve", "--listen", "0.0.0.0:0", "--store", f"sqlite://{tmp_path / 'c.db'}"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.strip().endswith("or --insecure to accept the risk")
    assert "refusing to listen on non-loopback 0.0.0.0:0 without TLS and tokens" in out.stderr


def test_insecure_non_loopback_listen_warns_at_start(tmp_path: Path) -> None:
    # 192.0.2.1 (TEST-NET-1) is not on this machine: the warning is logged, then the bind fails, so
    # nothing ever listens on a public address during the test.
    out = subprocess.run(
        [*KEDGE, "coordinator", "serve", "--listen", f"192.0.2.1:{free_port()}", "--insecure",
         "--store", f"sqlite://{tmp_path / 'c.db'}"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert "WARNING kedge.coordinator.auth insecure_listen address=192.0.2.1" in out.stderr
    assert out.returncode == 2 and "cannot listen" in out.stderr


def test_tls_options_go_together(pki: Pki, tmp_path: Path) -> None:
    out = subprocess.run(
        [*KEDGE, "coordinator", "serve", "--listen", "127.0.0.1:0", "--tls-cert", pki.server_cert,
         "--store", f"sqlite://{tmp_path / 'c.db'}"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 2 and "go together" in out.stderr
