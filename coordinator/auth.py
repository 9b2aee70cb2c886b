"""Authentication of the coordinator's gRPC services: mutual TLS, bearer tokens per role, and the
secure-by-default listen rule.

- TLS: the server presents `cert`/`key` and requires a client certificate signed by `ca`
  (mutual authentication). Files are re-read on `TlsReloader.request_reload()` (the CLI calls it on
  SIGHUP): grpc's dynamic server credentials ask a fetcher for a new configuration at each new
  handshake; the fetcher answers with fresh files once after a reload request, so connections made
  afterwards use the new certificates while established ones keep theirs.
- Tokens: each RPC carries `authorization: Bearer <token>`; the Coordinator service needs the
  `agent` token, the Admin service the `admin` token (an admin token does not open agent RPCs nor
  the reverse). Compared in constant time. Token files are re-read on reload as well.
- Listen rule: without TLS *and* tokens the server may listen on loopback only; any other address
  is refused unless `insecure=True`, which logs a warning at every start.

Commands sent to agents are additionally signed (HMAC-SHA256, key derived from the agent token)
by `sign_command`; the agent verifies them with its own copy of the rule (kedge.agent.command_auth;
the agent may not import the coordinator). tests/contract/security pins that both sides agree.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import stat
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc

log = logging.getLogger(__name__)

ROLE_AGENT = "agent"
ROLE_ADMIN = "admin"
ROLES = (ROLE_AGENT, ROLE_ADMIN)
AUTH_METADATA_KEY = "authorization"
BEARER_PREFIX = "Bearer "
MAX_TOKEN_BYTES = 4096
"""A token file larger than this is refused (a token is a short random string)."""
MIN_TOKEN_CHARS = 16
"""Shorter tokens are refused: they could be guessed."""
COMMAND_KEY_CONTEXT = b"kedge-command-signature-v1"
"""Domain separation: the command key is derived from the agent token, never the token itself."""

SERVICE_ROLES: Mapping[str, str] = {
    "/kedge.coordinator.v1.Coordinator/": ROLE_AGENT,
    "/kedge.coordinator.v1.Admin/": ROLE_ADMIN,
}
"""Which role's token each service needs, by method-name prefix; an unlisted method is refused."""


class AuthConfigError(ValueError):
    """Bad security settings (missing file, short token, non-loopback listen without protection)."""


@dataclass(kw_only=True, slots=True)
class TlsFiles:
    """PEM files of one side of a mutually authenticated TLS connection."""

    cert: str
    """This side's certificate chain."""
    key: str
    """This side's private key."""
    ca: str
    """CA bundle that signs the peers this side accepts."""


@dataclass(kw_only=True, slots=True)
class Config:
    """Security settings of the coordinator server."""

    tls: TlsFiles | None = None
    """Mutual TLS; None serves plaintext (loopback only unless `insecure`)."""
    token_files: dict[str, str] = field(default_factory=dict)
    """Role (agent, admin) -> file holding that role's bearer token."""
    insecure: bool = False
    """Allow a non-loopback listen address without TLS and tokens (logged at every start)."""

    @property
    def protected(self) -> bool:
        """True when both TLS and a token for every role are configured."""
        return self.tls is not None and all(r in self.token_files for r in ROLES)


# -- files -----------------------------------------------------------------------------------------
def read_secret_file(path: str, what: str) -> bytes:
    """Reads a small secret file; refuses missing, oversized or empty ones with a one-line error."""
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            data = f.read(MAX_TOKEN_BYTES + 1 if what == "token" else 1 << 20)
    except OSError as exc:
        raise AuthConfigError(f"cannot read {what} file {path}: {exc.strerror}") from exc
    if what == "token" and len(data) > MAX_TOKEN_BYTES:
        raise AuthConfigError(f"token file {path} is larger than {MAX_TOKEN_BYTES} bytes")
    if mode & stat.S_IROTH and what in ("token", "key"):
        log.warning("secret_file_world_readable path=%s what=%s", path, what)
    if not data.strip():
        raise AuthConfigError(f"{what} file {path} is empty")
    return data


def read_token(path: str) -> bytes:
    """The token in `path` (surrounding whitespace stripped); at least MIN_TOKEN_CHARS long."""
    token = read_secret_file(path, "token").strip()
    if len(token) < MIN_TOKEN_CHARS or any(c < 0x21 or c > 0x7E for c in token):
        raise AuthConfigError(
            f"token file {path}: a token is at least {MIN_TOKEN_CHARS} printable characters, no spaces"
        )
    return token


# -- listen rule -----------------------------------------------------------------------------------
def is_loopback(listen: str) -> bool:
    """True when HOST of HOST:PORT (or [V6]:PORT, or unix:PATH) only reaches this machine."""
    if listen.startswith(("unix:", "unix-abstract:")):
        return True
    host = listen.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name (or 0.0.0.0-like wildcard spelled otherwise) may resolve anywhere


def check_listen(listen: str, config: Config) -> None:
    """Applies the secure-by-default rule; raises AuthConfigError or logs the --insecure warning."""
    if config.protected or is_loopback(listen):
        return
    if not config.insecure:
        missing = [
            w for w, ok in (("TLS", config.tls is not None), ("tokens", _all_tokens(config))) if not ok
        ]
        raise AuthConfigError(
            f"refusing to listen on non-loopback {listen} without {' and '.join(missing)}: "
            "give --tls-cert/--tls-key/--tls-ca and --agent-token-file/--admin-token-file, "
            "or --insecure to accept the risk"
        )
    log.warning(
        "insecure_listen address=%s tls=%s tokens=%s: anyone who can reach this address can "
        "register nodes, read status and receive commands",
        listen,
        config.tls is not None,
        _all_tokens(config),
    )


def _all_tokens(config: Config) -> bool:
    return all(r in config.token_files for r in ROLES)


# -- TLS -------------------------------------------------------------------------------------------
class TlsReloader:
    """Holds the server's certificate configuration; `request_reload()` makes new handshakes use
    freshly read files (a bad file keeps the old configuration and is logged)."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._lock = threading.Lock()
        self._pending = False
        self.initial = self._load()
        self.reloads = 0

    def _load(self) -> Any:
        return grpc.ssl_server_certificate_configuration(
            [(read_secret_file(self.files.key, "key"), read_secret_file(self.files.cert, "cert"))],
            root_certificates=read_secret_file(self.files.ca, "ca"),
        )

    def request_reload(self) -> None:
        with self._lock:
            self._pending = True

    def fetch(self) -> Any:
        """grpc's certificate-configuration fetcher: None keeps the current configuration."""
        with self._lock:
            if not self._pending:
                return None
            self._pending = False
        try:
            configuration = self._load()
        except AuthConfigError as exc:
            log.error("tls_reload_failed error=%s (keeping the previous certificates)", exc)
            return None
        self.reloads += 1
        log.info("tls_reloaded cert=%s ca=%s", self.files.cert, self.files.ca)
        return configuration

    def credentials(self) -> grpc.ServerCredentials:
        """Server credentials that demand a client certificate signed by the CA."""
        return grpc.dynamic_ssl_server_credentials(
            self.initial, self.fetch, require_client_authentication=True
        )


def client_credentials(files: TlsFiles) -> grpc.ChannelCredentials:
    """Channel credentials of a client (agent, `kedge status`) presenting its own certificate."""
    return grpc.ssl_channel_credentials(
        root_certificates=read_secret_file(files.ca, "ca"),
        private_key=read_secret_file(files.key, "key"),
        certificate_chain=read_secret_file(files.cert, "cert"),
    )


# -- tokens ----------------------------------------------------------------------------------------
class TokenStore:
    """Role -> expected token, re-read from the files on `reload()`."""

    def __init__(self, token_files: Mapping[str, str]) -> None:
        unknown = set(token_files) - set(ROLES)
        if unknown:
            raise AuthConfigError(f"unknown token role(s): {', '.join(sorted(unknown))}")
        self.token_files = dict(token_files)
        self._lock = threading.Lock()
        self._tokens = {role: read_token(path) for role, path in self.token_files.items()}

    def reload(self) -> None:
        try:
            tokens = {role: read_token(path) for role, path in self.token_files.items()}
        except AuthConfigError as exc:
            log.error("token_reload_failed error=%s (keeping the previous tokens)", exc)
            return
        with self._lock:
            self._tokens = tokens
        log.info("tokens_reloaded roles=%s", ",".join(sorted(tokens)))

    def token(self, role: str) -> bytes | None:
        with self._lock:
            return self._tokens.get(role)

    def check(self, role: str, presented: bytes | None) -> str | None:
        """None when `presented` is the role's token, else the reason for the refusal. Roles without
        a configured token accept every caller (loopback-only or --insecure deployments)."""
        expected = self.token(role)
        if expected is None:
            return None
        if presented is None:
            return "no bearer token"
        # compare_digest's time does not depend on where the bytes differ.
        if not hmac.compare_digest(hashlib.sha256(presented).digest(), hashlib.sha256(expected).digest()):
            return "wrong token"
        return None


def bearer_from_metadata(metadata: Any) -> bytes | None:
    """The token of an `authorization: Bearer ...` entry, None when absent or malformed."""
    for key, value in metadata or ():
        if key == AUTH_METADATA_KEY:
            text = value if isinstance(value, str) else value.decode("latin-1")
            if text.startswith(BEARER_PREFIX):
                return text[len(BEARER_PREFIX) :].encode("latin-1")
            return None
    return None


def role_of(method: str) -> str | None:
    for prefix, role in SERVICE_ROLES.items():
        if method.startswith(prefix):
            return role
    return None


class TokenInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """Refuses RPCs whose bearer token does not match their service's role (UNAUTHENTICATED) and
    logs one line naming the method, the peer and the reason."""

    def __init__(self, tokens: TokenStore) -> None:
        self.tokens = tokens
        self.rejected = 0

    def intercept_service(self, continuation: Callable[[Any], Any], handler_call_details: Any) -> Any:
        method = handler_call_details.method
        role = role_of(method)
        reason = "unknown service" if role is None else None
        if role is not None:
            reason = self.tokens.check(role, bearer_from_metadata(handler_call_details.invocation_metadata))
        handler = continuation(handler_call_details)
        if reason is None or handler is None:
            return handler
        self.rejected += 1
        return _rejecting_handler(handler, method, role or "-", reason)


def _rejecting_handler(handler: Any, method: str, role: str, reason: str) -> Any:
    """A handler of the same shape as `handler` that logs the peer and aborts UNAUTHENTICATED."""

    def reject(_request: Any, context: grpc.ServicerContext) -> Any:
        log.warning("auth_rejected method=%s role=%s peer=%s reason=%s", method, role, context.peer(), reason)
        context.abort(grpc.StatusCode.UNAUTHENTICATED, f"kedge: {reason} for role {role}")

    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(reject)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(reject)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(reject)
    return grpc.stream_stream_rpc_method_handler(reject)


# -- server assembly -------------------------------------------------------------------------------
@dataclass(slots=True)
class ServerSecurity:
    """What a server needs from the config: interceptors, a port binder and a reload hook."""

    config: Config
    tokens: TokenStore
    tls: TlsReloader | None

    def interceptors(self) -> list[grpc.ServerInterceptor[Any, Any]]:
        return [TokenInterceptor(self.tokens)]

    def add_port(self, server: grpc.Server, listen: str) -> int:
        """Binds `listen` with TLS when configured; returns the port (0 on failure, as grpc does)."""
        if self.tls is None:
            return int(server.add_insecure_port(listen))
        return int(server.add_secure_port(listen, self.tls.credentials()))

    def reload(self) -> None:
        """Re-reads certificates and tokens (SIGHUP)."""
        self.tokens.reload()
        if self.tls is not None:
            self.tls.request_reload()

    def command_key(self) -> bytes | None:
        return command_key(self.tokens, ROLE_AGENT)


def server_security(listen: str, config: Config) -> ServerSecurity:
    """Checks the listen rule and reads every file once, so a bad setting fails at start."""
    check_listen(listen, config)
    tls = TlsReloader(config.tls) if config.tls is not None else None
    return ServerSecurity(config, TokenStore(config.token_files), tls)


# -- client side (kedge status) --------------------------------------------------------------------
def client_channel(address: str, *, tls: TlsFiles | None, token_file: str | None) -> grpc.Channel:
    """A channel to the coordinator that presents a client certificate and/or a bearer token."""
    channel = (
        grpc.secure_channel(address, client_credentials(tls))
        if tls is not None
        else grpc.insecure_channel(address)
    )
    if token_file is None:
        return channel
    return grpc.intercept_channel(channel, BearerTokenInterceptor(read_token(token_file)))


class BearerTokenInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamStreamClientInterceptor,  # type: ignore[type-arg]
):
    """Adds `authorization: Bearer <token>` to every call (works on plaintext loopback channels too,
    where grpc's call credentials are not allowed)."""

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


# -- command signatures ----------------------------------------------------------------------------
def derive_command_key(agent_token: bytes) -> bytes:
    return hmac.new(agent_token, COMMAND_KEY_CONTEXT, hashlib.sha256).digest()


def command_key(tokens: TokenStore, role: str) -> bytes | None:
    token = tokens.token(role)
    return None if token is None else derive_command_key(token)


def sign_command(key: bytes, job_id: str, incarnation: int, payload: bytes) -> bytes:
    """HMAC-SHA256 over the job id, the incarnation and the command's serialized form (with an
    empty signature field): the agent recomputes it from what it received."""
    return hmac.new(key, _signed_bytes(job_id, incarnation, payload), hashlib.sha256).digest()


def _signed_bytes(job_id: str, incarnation: int, payload: bytes) -> bytes:
    job = job_id.encode()
    return len(job).to_bytes(4, "big") + job + incarnation.to_bytes(8, "big", signed=True) + payload
