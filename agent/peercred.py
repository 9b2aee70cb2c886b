"""Locks the agent's Unix socket down to the users allowed to register ranks or receive control.

Two barriers:
1. File modes: the socket's directory is 0700 (0750 when a group is allowed) and the socket 0600
   (0660), so other users cannot even connect.
2. Peer credentials: every accepted connection's SO_PEERCRED (uid, gid, pid, set by the kernel at
   connect time, not forgeable by the client) is checked against the allowed uids/gids.

Why a small accepting relay: grpc's Python server accepts Unix connections inside its C core and
tells the servicer only `context.peer() == "unix:"` (no uid, even with local credentials), and it
cannot be handed an already-accepted socket. So `PeerCheckedRelay` owns the public socket: it
accepts, checks SO_PEERCRED, closes refused connections at once (logging uid/gid/pid), and for
allowed ones copies bytes to and from the grpc server's private socket in a 0700 subdirectory that
only the agent's user can reach. One thread per connection, connections bounded by
`max_connections`; the relay adds one local copy per message, negligible next to telemetry rates.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import stat
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

RELAY_BUFFER_BYTES = 256 * 1024
ACCEPT_POLL_S = 0.2
_UCRED = struct.Struct("3i")  # struct ucred { pid_t pid; uid_t uid; gid_t gid; }


@dataclass(frozen=True, slots=True)
class PeerCred:
    pid: int
    uid: int
    gid: int


def peer_cred(sock: socket.socket) -> PeerCred:
    """The kernel's record of who connected `sock` (Linux SO_PEERCRED)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return PeerCred(pid=pid, uid=uid, gid=gid)


@dataclass(kw_only=True, slots=True)
class PeerPolicy:
    """Who may talk to the agent's socket."""

    uids: frozenset[int] = field(default_factory=lambda: frozenset({os.getuid()}))
    """Allowed user ids (default: the agent's own)."""
    gids: frozenset[int] = frozenset()
    """Allowed primary group ids of the peer process (0750/0660 deployments)."""

    def allows(self, cred: PeerCred) -> bool:
        return cred.uid in self.uids or cred.gid in self.gids

    @classmethod
    def parse(cls, uids: Iterable[int] = (), gids: Iterable[int] = ()) -> PeerPolicy:
        """The agent's own uid plus the given ones."""
        return cls(uids=frozenset({os.getuid(), *uids}), gids=frozenset(gids))


def secure_dir(path: str, group: int | None = None) -> None:
    """Creates `path` (mode 0700, or 0750 owned by `group`) and refuses one that others can write
    or that belongs to another user (someone could swap the socket)."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise PermissionError(f"socket directory {path} is not a directory")
    if st.st_uid != os.getuid():
        raise PermissionError(f"socket directory {path} belongs to uid {st.st_uid}, not {os.getuid()}")
    if st.st_mode & (stat.S_IWOTH | stat.S_ISVTX):
        raise PermissionError(
            f"socket directory {path} is shared (world-writable or sticky): give the socket its own"
        )
    if group is not None:
        os.chown(path, -1, group)
    os.chmod(path, 0o750 if group is not None else 0o700)


def secure_socket_file(path: str, group: int | None = None) -> None:
    if group is not None:
        os.chown(path, -1, group)
    os.chmod(path, 0o660 if group is not None else 0o600)


def private_backend_path(public_path: str) -> str:
    """Where the grpc server listens: a 0700 subdirectory next to the public socket."""
    directory = os.path.join(os.path.dirname(os.path.abspath(public_path)), ".private")
    return os.path.join(directory, os.path.basename(public_path))


class PeerCheckedRelay:
    """Accepts on `public_path`, admits peers the policy allows, relays them to `backend_path`."""

    def __init__(
        self,
        public_path: str,
        backend_path: str,
        policy: PeerPolicy,
        *,
        group: int | None = None,
        max_connections: int = 128,
    ) -> None:
        self.public_path = public_path
        self.backend_path = backend_path
        self.policy = policy
        self.group = group
        self.max_connections = max_connections
        self.rejected = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None

    def start(self) -> None:
        secure_dir(os.path.dirname(os.path.abspath(self.public_path)), self.group)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.public_path)  # a stale socket of a previous agent
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # no window in which the socket is reachable by others
        try:
            listener.bind(self.public_path)
        finally:
            os.umask(old_umask)
        secure_socket_file(self.public_path, self.group)
        listener.listen(64)
        listener.settimeout(ACCEPT_POLL_S)
        self._listener = listener
        self._acceptor = threading.Thread(target=self._accept_loop, name="kedge-sock-accept", daemon=True)
        self._acceptor.start()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                raise
            self._admit(conn)

    def _admit(self, conn: socket.socket) -> None:
        conn.settimeout(None)
        cred = peer_cred(conn)
        reason = None if self.policy.allows(cred) else "uid/gid not allowed"
        with self._lock:
            if reason is None and len(self._conns) >= self.max_connections:
                reason = f"too many connections (max {self.max_connections})"
        if reason is not None:
            self.rejected += 1
            log.warning(
                "agent_socket_peer_rejected uid=%d gid=%d pid=%d reason=%s",
                cred.uid,
                cred.gid,
                cred.pid,
                reason,
            )
            conn.close()
            return
        thread = threading.Thread(target=self._relay, args=(conn, cred), name="kedge-sock-relay", daemon=True)
        with self._lock:
            self._conns.add(conn)
            self._threads.add(thread)
        thread.start()

    def _relay(self, conn: socket.socket, cred: PeerCred) -> None:
        backend = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            backend.connect(self.backend_path)
            with self._lock:
                self._conns.add(backend)
            _pump(conn, backend, self._stop)
        except OSError as exc:
            log.debug("agent_socket_relay_ended pid=%d error=%s", cred.pid, exc)
        finally:
            with self._lock:
                self._conns.discard(conn)
                self._conns.discard(backend)
                self._threads.discard(threading.current_thread())
            conn.close()
            backend.close()

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.close()
        if self._acceptor is not None:
            self._acceptor.join(timeout_s)
        with self._lock:
            conns, threads = list(self._conns), list(self._threads)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        for t in threads:
            t.join(timeout_s)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.public_path)


def _pump(a: socket.socket, b: socket.socket, stop: threading.Event) -> None:
    """Copies bytes both ways until either side closes (half-closes are passed on)."""
    peers = {a: b, b: a}
    open_readers = [a, b]
    while open_readers and not stop.is_set():
        ready, _, _ = select.select(open_readers, [], [], ACCEPT_POLL_S)
        for src in ready:
            data = src.recv(RELAY_BUFFER_BYTES)
            if not data:
                open_readers.remove(src)
                with contextlib.suppress(OSError):
                    peers[src].shutdown(socket.SHUT_WR)
                continue
            peers[src].sendall(data)
