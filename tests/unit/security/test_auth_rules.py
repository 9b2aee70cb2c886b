"""The coordinator's listen rule, token files and token checks, and the agent's command checks."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from kedge.agent import auth as agent_auth
from kedge.coordinator import auth

pytestmark = pytest.mark.timeout(10)
TOKEN = b"0123456789abcdef-token"


@pytest.mark.parametrize(
    ("listen", "loopback"),
    [
        ("127.0.0.1:7070", True),
        ("127.1.2.3:0", True),
        ("[::1]:7070", True),
        ("localhost:7070", True),
        ("unix:/run/kedge/c.sock", True),
        ("0.0.0.0:7070", False),
        ("[::]:7070", False),
        ("10.0.0.5:7070", False),
        ("coordinator.example:7070", False),
    ],
)
def test_is_loopback(listen: str, loopback: bool) -> None:
    assert auth.is_loopback(listen) is loopback


def test_non_loopback_without_protection_is_refused() -> None:
    with pytest.raises(
        auth.AuthConfigError,
        match=r"refusing to listen on non-loopback 0\.0\.0\.0:7070 without TLS and tokens",
    ):
        auth.check_listen("0.0.0.0:7070", auth.Config())


def test_non_loopback_with_tls_but_no_tokens_is_refused() -> None:
    config = auth.Config(tls=auth.TlsFiles(cert="c", key="k", ca="a"))
    with pytest.raises(auth.AuthConfigError, match="without tokens"):
        auth.check_listen("10.0.0.5:7070", config)


def test_insecure_non_loopback_warns_every_time(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="kedge.coordinator.auth"):
        auth.check_listen("0.0.0.0:7070", auth.Config(insecure=True))
        auth.check_listen("0.0.0.0:7070", auth.Config(insecure=True))
    lines = [
        r.message for r in caplog.records if r.message.startswith("insecure_listen address=0.0.0.0:7070")
    ]
    assert len(lines) == 2


def test_loopback_needs_nothing_and_says_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        auth.check_listen("127.0.0.1:0", auth.Config())
    assert not caplog.records


def test_token_files(tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.write_bytes(TOKEN + b"\n")
    assert auth.read_token(str(good)) == TOKEN
    assert agent_auth.read_token(str(good)) == TOKEN
    for content, message in (
        (b"", "empty"),
        (b"short", "at least 16"),
        (b"has space in the token", "printable"),
    ):
        bad = tmp_path / "bad"
        bad.write_bytes(content)
        with pytest.raises(auth.AuthConfigError, match=message):
            auth.read_token(str(bad))
        with pytest.raises(agent_auth.AuthConfigError, match=message):
            agent_auth.read_token(str(bad))
    huge = tmp_path / "huge"
    huge.write_bytes(b"a" * (auth.MAX_TOKEN_BYTES + 1))
    with pytest.raises(auth.AuthConfigError, match="larger than"):
        auth.read_token(str(huge))
    with pytest.raises(auth.AuthConfigError, match="cannot read token file"):
        auth.read_token(str(tmp_path / "missing"))


def test_token_store_checks_roles_and_reloads(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    agent_file, admin_file = tmp_path / "agent", tmp_path / "admin"
    agent_file.write_bytes(TOKEN)
    admin_file.write_bytes(b"admin-token-0123456789")
    store = auth.TokenStore({"agent": str(agent_file), "admin": str(admin_file)})
    assert store.check("agent", TOKEN) is None
    assert store.check("agent", None) == "no bearer token"
    assert store.check("agent", b"admin-token-0123456789") == "wrong token"
    assert store.check("agent", TOKEN + b"x") == "wrong token"
    agent_file.write_bytes(b"rotated-token-0123456789")
    store.reload()
    assert store.check("agent", TOKEN) == "wrong token"
    assert store.check("agent", b"rotated-token-0123456789") is None
    agent_file.write_bytes(b"")  # a broken rotation keeps the old token and says so
    with caplog.at_level(logging.ERROR, logger="kedge.coordinator.auth"):
        store.reload()
    assert store.check("agent", b"rotated-token-0123456789") is None
    assert any("token_reload_failed" in r.message for r in caplog.records)
    with pytest.raises(auth.AuthConfigError, match="unknown token role"):
        auth.TokenStore({"root": str(agent_file)})


def test_roles_without_a_token_accept_everyone() -> None:
    store = auth.TokenStore({})
    assert store.check("agent", None) is None


@pytest.mark.parametrize(
    ("metadata", "token"),
    [
        ((("authorization", "Bearer abc"),), b"abc"),
        ((("x", "y"), ("authorization", "Bearer abc")), b"abc"),
        ((("authorization", "Basic abc"),), None),
        ((), None),
        (None, None),
    ],
)
def test_bearer_from_metadata(metadata: object, token: bytes | None) -> None:
    assert auth.bearer_from_metadata(metadata) == token


def test_role_of_methods() -> None:
    assert auth.role_of("/kedge.coordinator.v1.Coordinator/Heartbeat") == "agent"
    assert auth.role_of("/kedge.coordinator.v1.Admin/GetStatus") == "admin"
    assert auth.role_of("/grpc.health.v1.Health/Check") is None


# -- commands --------------------------------------------------------------------------------------
def _signed(key: bytes, job: str, incarnation: int, payload: bytes) -> bytes:
    return auth.sign_command(key, job, incarnation, payload)


def test_both_sides_derive_the_same_command_key_and_signature() -> None:
    key = auth.derive_command_key(TOKEN)
    assert key == agent_auth.derive_command_key(TOKEN)
    assert key != TOKEN
    assert _signed(key, "job", 3, b"body") == agent_auth.command_mac(key, "job", 3, b"body")
    # the job id length is part of the signed bytes: ("jo", "b...") cannot stand for ("job", "...")
    assert _signed(key, "jo", 3, b"bbody") != _signed(key, "job", 3, b"body")


def test_verifier_accepts_signed_current_and_newer_commands() -> None:
    key = auth.derive_command_key(TOKEN)
    verifier = agent_auth.CommandVerifier("job", key)
    verifier.observe_incarnation(2)
    for incarnation in (2, 2, 3):
        sig = _signed(key, "job", incarnation, b"start")
        assert (
            verifier.check(
                command_id="c", job_id="job", incarnation=incarnation, payload=b"start", signature=sig
            )
            is None
        )


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("stale", "stale incarnation 1 < 2"),
        ("other_job", "another job"),
        ("unsigned", "unsigned command"),
        ("bad_signature", "bad signature"),
        ("tampered", "bad signature"),
        ("replayed_incarnation", "bad signature"),
    ],
)
def test_verifier_rejects_and_logs(case: str, reason: str, caplog: pytest.LogCaptureFixture) -> None:
    key = auth.derive_command_key(TOKEN)
    verifier = agent_auth.CommandVerifier("job", key)
    verifier.observe_incarnation(2)
    job, incarnation, payload = "job", 2, b"stop"
    signature = _signed(key, job, incarnation, payload)
    if case == "stale":
        incarnation = 1
        signature = _signed(key, job, incarnation, payload)
    elif case == "other_job":
        job = "other"
        signature = _signed(key, job, incarnation, payload)
    elif case == "unsigned":
        signature = b""
    elif case == "bad_signature":
        signature = _signed(auth.derive_command_key(b"another-token-0123456789"), job, incarnation, payload)
    elif case == "tampered":
        payload = b"start"
    elif case == "replayed_incarnation":
        incarnation = 5  # an old signature cannot be lifted onto a newer incarnation
    with caplog.at_level(logging.WARNING, logger="kedge.agent.auth"):
        got = verifier.check(
            command_id="c1", job_id=job, incarnation=incarnation, payload=payload, signature=signature
        )
    assert got is not None and reason in got
    assert verifier.rejected == 1
    assert any(r.message.startswith("command_rejected id=c1") and reason in r.message for r in caplog.records)


def test_verifier_without_key_still_fences() -> None:
    verifier = agent_auth.CommandVerifier("job", None)
    assert verifier.check(command_id="a", job_id="job", incarnation=4, payload=b"", signature=b"") is None
    assert "stale" in (
        verifier.check(command_id="b", job_id="job", incarnation=3, payload=b"", signature=b"") or ""
    )
    assert "another job" in (
        verifier.check(command_id="c", job_id="x", incarnation=4, payload=b"", signature=b"") or ""
    )
