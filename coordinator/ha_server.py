"""The coordinator's gRPC server in high-availability mode (`--store etcd://...`).

Every replica serves both services on its own address; which one acts is decided by the etcd lease
(`kedge.coordinator.ha`):
- the leader answers every RPC through its live core, exactly as the single-coordinator server;
- a standby answers agent RPCs with UNAVAILABLE and the trailing metadata `kedge-leader: ADDRESS`
  (the leader's advertised address), so an agent moves to the next address of its list or straight
  to the leader (redirect, not proxy: the agent's streams then run against the leader itself);
- a standby answers `GetStatus` from the store with `leader = false` (read-only admin calls);
- a leader that is deposed mid-stream ends its Commands streams, so agents reconnect elsewhere.

The replica's identity comes from KEDGE_COORDINATOR_ID (default HOST-PID) and the address it
advertises to agents from KEDGE_COORDINATOR_ADVERTISE (default the bound HOST:PORT).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from kedge.coordinator import auth
from kedge.coordinator.core import Config, CoordinatorCore
from kedge.coordinator.errors import StoreError
from kedge.coordinator.etcd_store import EtcdStore
from kedge.coordinator.ha import HaCoordinator
from kedge.coordinator.leader import LeaderElection
from kedge.coordinator.server import (
    MAX_RPC_THREADS,
    AdminService,
    CommandRouter,
    CoordinatorService,
    add_services,
)
from kedge.coordinator.store import Store

__all__ = ["LEADER_METADATA_KEY", "RunningHaServer", "serve_ha"]

log = logging.getLogger(__name__)

LEADER_METADATA_KEY = "kedge-leader"
"""Trailing metadata of a standby's refusal: the leader's advertised address (empty: none now)."""


class _NotLeaderNow(Exception):
    """Raised by `core` on a standby; turned into UNAVAILABLE + the leader's address."""


class _HaCore:
    """Resolves `core` per access: the live core while leading, else raises _NotLeaderNow."""

    ha: HaCoordinator

    @property
    def core(self) -> CoordinatorCore:
        core = self.ha.core()
        if core is None:
            raise _NotLeaderNow()
        return core

    @core.setter
    def core(self, _: CoordinatorCore) -> None:  # the base classes assign it in __init__
        return

    def _refuse(self, context: grpc.ServicerContext) -> Any:
        try:
            info = self.ha.leader()
            leader = info.address if info is not None else ""
        except Exception:  # etcd unreachable: no leader to name
            leader = ""
        context.set_trailing_metadata(((LEADER_METADATA_KEY, leader),))
        context.abort(grpc.StatusCode.UNAVAILABLE, f"not the leader; leader={leader or 'unknown'}")


class HaCoordinatorService(_HaCore, CoordinatorService):
    """Agent RPCs, served only by the leader."""

    def __init__(
        self,
        ha: HaCoordinator,
        router: CommandRouter,
        stopping: threading.Event,
        security: auth.ServerSecurity | None = None,
    ) -> None:
        self.ha = ha
        super().__init__(None, router, stopping, security)  # type: ignore[arg-type]

    def _guarded(self, method: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(request, context)
        except (_NotLeaderNow, StoreError):
            return self._refuse(context)

    def RegisterNode(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._guarded(super().RegisterNode, request, context)

    def Heartbeat(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._guarded(super().Heartbeat, request, context)

    def Report(self, request_iterator: Any, context: grpc.ServicerContext) -> Any:
        return self._guarded(super().Report, request_iterator, context)

    def CommandDone(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._guarded(super().CommandDone, request, context)

    def Commands(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        if self.ha.core() is None:
            self._refuse(context)
            return
        for command in super().Commands(request, context):
            if self.ha.core() is None:  # deposed: end the stream, the agent reconnects elsewhere
                self._refuse(context)
                return
            yield command


class HaAdminService(_HaCore, AdminService):
    """`kedge status` on any replica: live on the leader, read from the store on a standby."""

    def __init__(self, ha: HaCoordinator, address: str) -> None:
        self.ha = ha
        super().__init__(None, address)  # type: ignore[arg-type]

    @property
    def core(self) -> CoordinatorCore:
        return self.ha.core() or _StatusOnly(self.ha)  # type: ignore[return-value]

    @core.setter
    def core(self, _: CoordinatorCore) -> None:
        return

    def GetStatus(self, request: Any, context: grpc.ServicerContext) -> Any:
        leading = self.ha.core() is not None
        try:
            response = super().GetStatus(request, context)
        except StoreError as error:  # a standby reads the store: say why when etcd is away
            context.abort(grpc.StatusCode.UNAVAILABLE, f"coordinator state unreadable: {error}")
        response.leader = leading
        return response


@dataclass(slots=True)
class _StatusOnly:
    """What AdminService needs of a core, answered from the store (standby)."""

    ha: HaCoordinator

    def status(self, job_id: str = "", recent: int = 10) -> Any:
        return self.ha.status_view(job_id, recent)


@dataclass(slots=True)
class RunningHaServer:
    """A started HA replica: same surface as `server.RunningServer` plus the election."""

    address: str
    port: int
    ha: HaCoordinator
    _server: grpc.Server
    _stopping: threading.Event
    _ticker: threading.Thread
    security: auth.ServerSecurity | None = None

    def reload_security(self) -> None:
        """Re-reads certificates and tokens (the CLI calls this on SIGHUP)."""
        if self.security is not None:
            self.security.reload()

    def stop(self, grace_s: float = 2.0) -> None:
        """Stops ticking, resigns (a standby takes over at once), stops serving, closes the store."""
        self._stopping.set()
        self._ticker.join(timeout=grace_s + 5.0)
        self.ha.stop()
        self._server.stop(grace_s).wait(grace_s + 5.0)
        self.ha.store.close()

    def wait(self) -> None:
        self._stopping.wait()


def serve_ha(
    listen: str, store: Store, config: Config | None = None, security: auth.Config | None = None
) -> RunningHaServer:
    """Binds `listen`, campaigns for leadership on the etcd store, serves (see the module docstring).
    `security` is applied exactly as by `server.serve` (TLS, tokens, loopback-only when insecure)."""
    guard = auth.server_security(listen, security or auth.Config())
    if not isinstance(store, EtcdStore):
        raise RuntimeError("high-availability mode needs the etcd store (--store etcd://...)")
    config = config or Config()
    router = CommandRouter()
    stopping = threading.Event()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=MAX_RPC_THREADS, thread_name_prefix="kedge-rpc"),
        interceptors=guard.interceptors(),
    )
    port = guard.add_port(server, listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    address = f"{listen.rsplit(':', 1)[0]}:{port}"
    candidate_id = os.environ.get("KEDGE_COORDINATOR_ID") or f"{socket.gethostname()}-{os.getpid()}"
    advertise = os.environ.get("KEDGE_COORDINATOR_ADVERTISE") or address
    ha = HaCoordinator(
        store,
        lambda s: CoordinatorCore(s, router, config),
        candidate_id=candidate_id,
        address=advertise,
        config=LeaderElection.Config(),
    )
    add_services(server, HaCoordinatorService(ha, router, stopping, guard), HaAdminService(ha, address))
    server.start()
    ha.start()
    ticker = threading.Thread(target=_tick_loop, args=(ha, config, stopping), name="kedge-tick", daemon=True)
    ticker.start()
    log.warning("coordinator serving address=%s id=%s advertise=%s mode=ha", address, candidate_id, advertise)
    return RunningHaServer(address, port, ha, server, stopping, ticker, guard)


def _tick_loop(ha: HaCoordinator, config: Config, stopping: threading.Event) -> None:
    while not stopping.wait(config.tick_interval_s):
        try:
            ha.tick()
        except Exception:  # a bug in one tick must not stop detection for good; it is logged loudly
            log.exception("coordinator tick failed")
