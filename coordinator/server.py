"""gRPC server of the coordinator: the Coordinator service (agents) and the Admin service (status).

`serve(listen, store, config)` starts the server, a tick thread driving the core, and returns a
handle with the bound port and a bounded `stop()`. Commands for a node wait in a bounded per-node
queue until its agent's Commands stream takes them (oldest dropped beyond COMMAND_QUEUE_LEN, with a
log line: an agent that far behind will be declared lost by its lease anyway).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass

import grpc
from kedge.coordinator import wire
from kedge.coordinator.core import Config, CoordinatorCore
from kedge.coordinator.model import CommandData
from kedge.coordinator.store import Store
from kedge.proto import admin_pb2, admin_pb2_grpc, coordinator_pb2, coordinator_pb2_grpc

log = logging.getLogger(__name__)

COMMAND_QUEUE_LEN = 256
"""Commands kept per node while its agent is not reading."""
STREAM_POLL_S = 0.5
"""How often an idle Commands stream checks that it should still run."""
MAX_RPC_THREADS = 64
"""gRPC worker threads: each agent holds two long-lived streams (reports, commands)."""


class CommandRouter:
    """The core's CommandSink: one bounded queue per (job, node), read by that node's stream."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[tuple[str, str], queue.Queue[CommandData]] = {}
        self._generation: dict[tuple[str, str], int] = {}

    def _queue(self, key: tuple[str, str]) -> queue.Queue[CommandData]:
        with self._lock:
            return self._queues.setdefault(key, queue.Queue(maxsize=COMMAND_QUEUE_LEN))

    def send(self, node_id: str, command: CommandData) -> None:
        q = self._queue((command.job_id, node_id))
        while True:
            try:
                q.put_nowait(command)
                return
            except queue.Full:
                dropped = q.get_nowait()
                log.error("command queue full node=%s dropped=%s", node_id, dropped.command_id)

    def subscribe(self, job_id: str, node_id: str) -> tuple[queue.Queue[CommandData], int]:
        """A new stream for the node; an older stream of the same node ends at its next poll."""
        key = (job_id, node_id)
        with self._lock:
            self._generation[key] = self._generation.get(key, 0) + 1
            gen = self._generation[key]
        return self._queue(key), gen

    def current(self, job_id: str, node_id: str, generation: int) -> bool:
        with self._lock:
            return self._generation.get((job_id, node_id)) == generation


class CoordinatorService(coordinator_pb2_grpc.CoordinatorServicer):  # type: ignore[misc]
    """Agent-facing RPCs: thin conversions around the core."""

    def __init__(self, core: CoordinatorCore, router: CommandRouter, stopping: threading.Event) -> None:
        self.core = core
        self.router = router
        self.stopping = stopping

    def RegisterNode(
        self, request: coordinator_pb2.RegisterNodeRequest, context: grpc.ServicerContext
    ) -> coordinator_pb2.RegisterNodeResponse:
        return wire.answer_to_pb(self.core.register_node(wire.registration_from_pb(request)))

    def Heartbeat(
        self, request: coordinator_pb2.HeartbeatRequest, context: grpc.ServicerContext
    ) -> coordinator_pb2.HeartbeatResponse:
        ok, reason = self.core.heartbeat(request.job_id, request.node_id)
        return coordinator_pb2.HeartbeatResponse(
            ok=ok, reason=reason, lease_ttl_s=self.core.config.lease_ttl_s
        )

    def Report(
        self, request_iterator: Iterator[coordinator_pb2.NodeReport], context: grpc.ServicerContext
    ) -> coordinator_pb2.ReportAck:
        count = 0
        for report in request_iterator:
            self.core.report(wire.report_from_pb(report))
            count += 1
        return coordinator_pb2.ReportAck(reports=count)

    def Commands(
        self, request: coordinator_pb2.CommandSubscribe, context: grpc.ServicerContext
    ) -> Iterator[coordinator_pb2.Command]:
        q, gen = self.router.subscribe(request.job_id, request.node_id)
        while (
            context.is_active()
            and not self.stopping.is_set()
            and self.router.current(request.job_id, request.node_id, gen)
        ):
            try:
                command = q.get(timeout=STREAM_POLL_S)
            except queue.Empty:
                continue
            yield wire.command_to_pb(command)

    def CommandDone(
        self, request: coordinator_pb2.CommandResult, context: grpc.ServicerContext
    ) -> coordinator_pb2.CommandAck:
        self.core.command_done(wire.outcome_from_pb(request))
        return coordinator_pb2.CommandAck(ok=True)


class AdminService(admin_pb2_grpc.AdminServicer):  # type: ignore[misc]
    """`kedge status`."""

    def __init__(self, core: CoordinatorCore, address: str) -> None:
        self.core = core
        self.address = address

    def GetStatus(
        self, request: admin_pb2.StatusRequest, context: grpc.ServicerContext
    ) -> admin_pb2.StatusResponse:
        jobs = self.core.status(request.job_id, request.recent or 10)
        return admin_pb2.StatusResponse(
            jobs=[wire.job_status_to_pb(j) for j in jobs], coordinator=self.address, leader=True
        )


@dataclass(slots=True)
class RunningServer:
    """A started coordinator: its address, core, and a bounded stop."""

    address: str
    port: int
    core: CoordinatorCore
    _server: grpc.Server
    _stopping: threading.Event
    _ticker: threading.Thread

    def stop(self, grace_s: float = 2.0) -> None:
        """Stops the tick thread and the server (streams end within STREAM_POLL_S), closes the store."""
        self._stopping.set()
        self._ticker.join(timeout=grace_s + 5.0)
        self._server.stop(grace_s).wait(grace_s + 5.0)
        self.core.store.close()

    def wait(self) -> None:
        """Blocks until stop() is called from another thread or a signal handler."""
        self._stopping.wait()


def serve(listen: str, store: Store, config: Config | None = None) -> RunningServer:
    """Binds `listen` (HOST:PORT, port 0 = any free one) and starts serving."""
    router = CommandRouter()
    core = CoordinatorCore(store, router, config)
    stopping = threading.Event()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=MAX_RPC_THREADS, thread_name_prefix="kedge-rpc")
    )
    port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    host = listen.rsplit(":", 1)[0]
    address = f"{host}:{port}"
    coordinator_pb2_grpc.add_CoordinatorServicer_to_server(CoordinatorService(core, router, stopping), server)
    admin_pb2_grpc.add_AdminServicer_to_server(AdminService(core, address), server)
    server.start()
    ticker = threading.Thread(target=_tick_loop, args=(core, stopping), name="kedge-tick", daemon=True)
    ticker.start()
    log.info("coordinator serving address=%s", address)
    return RunningServer(address, port, core, server, stopping, ticker)


def _tick_loop(core: CoordinatorCore, stopping: threading.Event) -> None:
    while not stopping.wait(core.config.tick_interval_s):
        try:
            core.tick()
        except Exception:  # a bug in one tick must not stop detection for good; it is logged loudly
            log.exception("coordinator tick failed")
