"""The agent's side of control-plane security: its channel to the coordinator (client certificate
and bearer token) and the check every coordinator command passes before it is executed.

The agent may not import kedge.coordinator (import boundary), so the few lines that must agree with
kedge.coordinator.auth (metadata key, token rules, command signature) are repeated here;
tests/contract/security/test_command_signature.py signs with one and verifies with the other.

Command check (`CommandVerifier.check`), in this order:
1. the command's job id must be this agent's job;
2. when a command key is configured (derived from the agent token), the HMAC-SHA256 signature over
   (job id, incarnation, command with an empty signature) must match, compared in constant time;
3. the incarnation must not be older than the newest one this agent has accepted (fencing: a
   command of an old world, replayed or from a stale coordinator, cannot act on the new one).
A refused command is logged (`command_rejected ...`) and never executed.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
from dataclasses import dataclass
from typing import Any

import grpc

log = logging.getLogger(__name__)

AUTH_METADATA_KEY = "authorization"
BEARER_PREFIX = "Bearer "
MAX_TOKEN_BYTES = 4096
MIN_TOKEN_CHARS = 16
COMMAND_KEY_CONTEXT = b"kedge-command-signature-v1"


class AuthConfigError(ValueError):
    """A missing or unusable certificate or token file."""


@dataclass(kw_only=True, slots=True)
class TlsFiles:
    """PEM files of the agent's client certificate and the CA that signs the coordinator's."""

    cert: str
    """The agent's certificate chain."""
    key: str
    """The agent's private key."""
    ca: str
    """CA bundle that signs the coordinator's certificate."""


def _read(path: str, what: str, limit_bytes: int = 1 << 20) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(limit_bytes + 1)
    except OSError as exc:
        raise AuthConfigError(f"cannot read {what} file {path}: {exc.strerror}") from exc
    if len(data) > limit_bytes:
        raise AuthConfigError(f"{what} file {path} is larger than {limit_bytes} bytes")
    if not data.strip():
        raise AuthConfigError(f"{what} file {path} is empty")
    return data


def read_token(path: str) -> bytes:
    """The token in `path`, stripped; at least MIN_TOKEN_CHARS printable characters."""
    token = _read(path, "token", MAX_TOKEN_BYTES).strip()
    if len(token) < MIN_TOKEN_CHARS or any(c < 0x21 or c > 0x7E for c in token):
        raise AuthConfigError(
            f"token file {path}: a token is at least {MIN_TOKEN_CHARS} printable characters, no spaces"
        )
    return token


def coordinator_channel(address: str, *, tls: TlsFiles | None, token: bytes | None) -> grpc.Channel:
    """A channel to the coordinator presenting the agent's certificate and/or bearer token."""
    if tls is not None:
        creds = grpc.ssl_channel_credentials(
            root_certificates=_read(tls.ca, "ca"),
            private_key=_read(tls.key, "key"),
            certificate_chain=_read(tls.cert, "cert"),
        )
        channel = grpc.secure_channel(address, creds)
    else:
        channel = grpc.insecure_channel(address)
    if token is None:
        return channel
    return grpc.intercept_channel(channel, BearerTokenInterceptor(token))


class BearerTokenInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamStreamClientInterceptor,  # type: ignore[type-arg]
):
    """Adds `authorization: Bearer <token>` to every call."""

    def __init__(self, token: bytes) -> None:
        self._entry = (AUTH_METADATA_KEY, BEARER_PREFIX + token.decode("ascii"))

    def _details(self, details: Any) -> Any:
        metadata = [*(details.metadata or ()), self._entry]
        return _CallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(self._details(details), request_iterator)


@dataclass(frozen=True, slots=True)
class _CallDetails(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


# -- commands --------------------------------------------------------------------------------------
def derive_command_key(agent_token: bytes) -> bytes:
    return hmac.new(agent_token, COMMAND_KEY_CONTEXT, hashlib.sha256).digest()


def command_mac(key: bytes, job_id: str, incarnation: int, payload: bytes) -> bytes:
    job = job_id.encode()
    message = len(job).to_bytes(4, "big") + job + incarnation.to_bytes(8, "big", signed=True) + payload
    return hmac.new(key, message, hashlib.sha256).digest()


class CommandVerifier:
    """Decides whether a coordinator command may run on this agent (see the module docstring)."""

    def __init__(self, job_id: str, key: bytes | None) -> None:
        self.job_id = job_id
        self.key = key
        self._lock = threading.Lock()
        self._newest_incarnation = 0
        self.rejected = 0

    def observe_incarnation(self, incarnation: int) -> None:
        """Raises the fence to an incarnation the agent learned elsewhere (registration, own start)."""
        with self._lock:
            self._newest_incarnation = max(self._newest_incarnation, incarnation)

    def check(
        self, *, command_id: str, job_id: str, incarnation: int, payload: bytes, signature: bytes
    ) -> str | None:
        """None when the command may run (and raises the fence to its incarnation); else the reason,
        already logged."""
        reason = self._reason(job_id, incarnation, payload, signature)
        if reason is not None:
            self.rejected += 1
            log.warning(
                "command_rejected id=%s job=%s incarnation=%d reason=%s",
                command_id[:64],
                job_id[:64],
                incarnation,
                reason,
            )
        return reason

    def _reason(self, job_id: str, incarnation: int, payload: bytes, signature: bytes) -> str | None:
        if job_id != self.job_id:
            return f"command for another job (this agent runs {self.job_id})"
        if self.key is not None:
            expected = command_mac(self.key, job_id, incarnation, payload)
            if not signature:
                return "unsigned command"
            if not hmac.compare_digest(expected, signature):
                return "bad signature"
        with self._lock:
            if incarnation < self._newest_incarnation:
                return f"stale incarnation {incarnation} < {self._newest_incarnation}"
            self._newest_incarnation = incarnation
        return None


# -- from the agent's Config -----------------------------------------------------------------------
@dataclass(slots=True)
class AgentSecurity:
    """The agent's security settings, read and checked once at start (bad files fail the start)."""

    tls: TlsFiles | None
    token: bytes | None
    socket_group: int | None
    allow_uids: frozenset[int]
    allow_gids: frozenset[int]

    def command_key(self) -> bytes | None:
        return None if self.token is None else derive_command_key(self.token)


def security_from_config(
    *,
    tls_cert: str,
    tls_key: str,
    tls_ca: str,
    token_file: str,
    socket_group: str,
    allow_uids: str,
    allow_gids: str,
) -> AgentSecurity:
    """Builds AgentSecurity from the Config's strings; AuthConfigError names the bad setting."""
    given = [v for v in (tls_cert, tls_key, tls_ca) if v]
    if given and len(given) != 3:
        raise AuthConfigError("--tls-cert, --tls-key and --tls-ca go together")
    tls = TlsFiles(cert=tls_cert, key=tls_key, ca=tls_ca) if given else None
    if tls is not None:
        for path, what in ((tls.cert, "cert"), (tls.key, "key"), (tls.ca, "ca")):
            _read(path, what)
    group = _gid(socket_group) if socket_group else None
    gids = _id_list(allow_gids, "socket_allow_gids")
    return AgentSecurity(
        tls=tls,
        token=read_token(token_file) if token_file else None,
        socket_group=group,
        allow_uids=_id_list(allow_uids, "socket_allow_uids"),
        allow_gids=gids if gids or group is None else frozenset({group}),
    )


def _gid(name: str) -> int:
    import grp

    if name.isdigit():
        return int(name)
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise AuthConfigError(f"socket_group: no group named {name!r}") from None


def _id_list(text: str, what: str) -> frozenset[int]:
    try:
        return frozenset(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise AuthConfigError(f"{what}: expected comma-separated numbers, got {text!r}") from None
