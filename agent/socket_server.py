"""The agent's local gRPC service (kedge.agent.v1.AgentLocal) on a Unix socket, for the node's ranks.

Each rank holds two long-lived streams (telemetry in, control out), so the thread pool is sized for
the node's ranks; every control queue is bounded.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass

import grpc
from kedge.agent import wire
from kedge.agent.model import CollectiveRecord, StepTiming
from kedge.proto import agent_pb2, agent_pb2_grpc

log = logging.getLogger(__name__)

CONTROL_QUEUE_SIZE = 8
_CONTROL_POLL_S = 0.25


@dataclass(slots=True, frozen=True)
class RankHello:
    """A rank's RegisterRank request in the agent's terms."""

    job_id: str
    rank: int
    local_rank: int
    world_size: int
    pid: int
    progress_page: str
    incarnation: int


@dataclass(slots=True, frozen=True)
class Telemetry:
    rank: int
    incarnation: int
    steps: list[StepTiming]
    collectives: list[CollectiveRecord]
    dropped_records: int
    gauges: dict[str, float]


RegisterFn = Callable[[RankHello], tuple[bool, str, int]]
TelemetryFn = Callable[[Telemetry], None]


class _Servicer(agent_pb2_grpc.AgentLocalServicer):  # type: ignore[misc]
    def __init__(self, server: SocketServer) -> None:
        self._server = server

    def RegisterRank(
        self, request: agent_pb2.RegisterRankRequest, context: grpc.ServicerContext
    ) -> agent_pb2.RegisterRankResponse:
        hello = RankHello(
            job_id=request.job_id,
            rank=request.rank,
            local_rank=request.local_rank,
            world_size=request.world_size,
            pid=request.pid,
            progress_page=request.progress_page,
            incarnation=request.incarnation,
        )
        accepted, reason, incarnation = self._server.on_register(hello)
        return agent_pb2.RegisterRankResponse(
            accepted=accepted,
            reason=reason,
            node_id=self._server.node_id,
            incarnation=incarnation,
            telemetry_interval_s=self._server.telemetry_interval_s,
        )

    def StreamTelemetry(
        self, request_iterator: Iterator[agent_pb2.TelemetryBatch], context: grpc.ServicerContext
    ) -> agent_pb2.TelemetryAck:
        batches = 0
        for batch in request_iterator:
            batches += 1
            self._server.on_telemetry(
                Telemetry(
                    rank=batch.rank,
                    incarnation=batch.incarnation,
                    steps=[
                        StepTiming(
                            rank=s.rank, step=s.step, duration_s=s.duration_s, end_mono_ns=s.end_mono_ns
                        )
                        for s in batch.steps
                    ],
                    collectives=[wire.collective_from_proto(c, batch.rank) for c in batch.collectives],
                    dropped_records=batch.dropped_records,
                    gauges=dict(batch.gauges),
                )
            )
        return agent_pb2.TelemetryAck(batches=batches)

    def Control(
        self, request: agent_pb2.ControlSubscribe, context: grpc.ServicerContext
    ) -> Iterator[agent_pb2.ControlMessage]:
        q = self._server.control_queue(request.rank, request.incarnation)
        while context.is_active() and not self._server.stopping.is_set():
            try:
                kind, reason = q.get(timeout=_CONTROL_POLL_S)
            except queue.Empty:
                continue
            yield agent_pb2.ControlMessage(
                kind=agent_pb2.ControlKind.Value(kind),  # type: ignore[arg-type]
                incarnation=request.incarnation,
                reason=reason,
            )


class SocketServer:
    """Serves AgentLocal on `socket_path`; the supervisor supplies the register/telemetry callbacks."""

    def __init__(
        self,
        socket_path: str,
        *,
        node_id: str,
        on_register: RegisterFn,
        on_telemetry: TelemetryFn,
        max_ranks: int = 32,
        telemetry_interval_s: float = 1.0,
    ) -> None:
        self.socket_path = socket_path
        self.node_id = node_id
        self.on_register = on_register
        self.on_telemetry = on_telemetry
        self.telemetry_interval_s = telemetry_interval_s
        self.stopping = threading.Event()
        self._queues: dict[tuple[int, int], queue.Queue[tuple[str, str]]] = {}
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2 * max_ranks + 8))
        agent_pb2_grpc.add_AgentLocalServicer_to_server(_Servicer(self), self._server)

    def start(self) -> None:
        os.makedirs(os.path.dirname(self.socket_path) or ".", exist_ok=True)
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)  # a stale socket of a previous agent on this node
        self._server.add_insecure_port(f"unix:{self.socket_path}")
        self._server.start()
        log.info("agent_socket_listening path=%s", self.socket_path)

    def control_queue(self, rank: int, incarnation: int) -> queue.Queue[tuple[str, str]]:
        with self._lock:
            return self._queues.setdefault((rank, incarnation), queue.Queue(maxsize=CONTROL_QUEUE_SIZE))

    def send_control(self, rank: int, incarnation: int, kind: str, reason: str) -> bool:
        """Queues a control message (kind: a ControlKind name) for a rank; False when its queue is full."""
        try:
            self.control_queue(rank, incarnation).put_nowait((kind, reason))
            return True
        except queue.Full:
            return False

    def forget(self, incarnation: int) -> None:
        """Drops the control queues of an incarnation whose ranks are gone."""
        with self._lock:
            for key in [k for k in self._queues if k[1] == incarnation]:
                del self._queues[key]

    def stop(self, grace_s: float = 1.0) -> None:
        self.stopping.set()
        self._server.stop(grace_s).wait(grace_s + 1.0)
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)
