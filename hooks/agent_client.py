"""The rank's client of the node agent's Unix-socket service (kedge.agent.v1.AgentLocal).

The only hooks module that touches generated protobuf code; callers get plain dataclasses. All calls
run on the hooks' side threads, never on the training thread.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc
from kedge.proto import agent_pb2, agent_pb2_grpc, common_pb2

log = logging.getLogger(__name__)

RPC_TIMEOUT_S = 5.0
_QUEUE_POLL_S = 0.2


@dataclass(slots=True, frozen=True)
class Registration:
    """The agent's answer to RegisterRank."""

    accepted: bool
    reason: str
    node_id: str
    incarnation: int
    telemetry_interval_s: float


@dataclass(slots=True)
class Batch:
    """One telemetry batch: step timings (rank, step, duration_s, end_mono_ns) and collective records."""

    steps: list[tuple[int, float, int]] = field(default_factory=list)
    collectives: list[dict[str, int | str]] = field(default_factory=list)
    dropped_records: int = 0
    gauges: dict[str, float] = field(default_factory=dict)


class AgentClient:
    """Connection to the agent at `socket_path` for one rank of one incarnation."""

    def __init__(self, socket_path: str, *, rank: int, incarnation: int) -> None:
        self._channel = grpc.insecure_channel(f"unix:{socket_path}")
        self._stub = agent_pb2_grpc.AgentLocalStub(self._channel)
        self._rank = rank
        self._incarnation = incarnation
        self._batches: queue.Queue[Batch | None] = queue.Queue(maxsize=16)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def register(
        self, *, job_id: str, local_rank: int, world_size: int, pid: int, page: str, hostname: str
    ) -> Registration:
        reply = self._stub.RegisterRank(
            agent_pb2.RegisterRankRequest(
                job_id=job_id,
                rank=self._rank,
                local_rank=local_rank,
                world_size=world_size,
                pid=pid,
                progress_page=page,
                incarnation=self._incarnation,
                hostname=hostname,
                cuda_device=-1,
            ),
            timeout=RPC_TIMEOUT_S,
            wait_for_ready=True,
        )
        return Registration(
            accepted=reply.accepted,
            reason=reply.reason,
            node_id=reply.node_id,
            incarnation=reply.incarnation,
            telemetry_interval_s=reply.telemetry_interval_s or 1.0,
        )

    def start(self, on_control: Callable[[str, str], None]) -> None:
        """Starts the telemetry stream and the control subscription (each on its own daemon thread)."""
        for target, args in ((self._stream_telemetry, ()), (self._subscribe, (on_control,))):
            thread = threading.Thread(target=target, args=args, name="kedge-hooks-rpc", daemon=True)
            thread.start()
            self._threads.append(thread)

    def send(self, batch: Batch) -> bool:
        """Queues a batch without blocking; False (batch dropped) when the bounded queue is full."""
        try:
            self._batches.put_nowait(batch)
            return True
        except queue.Full:
            return False

    def _requests(self) -> Iterator[agent_pb2.TelemetryBatch]:
        while not self._stop.is_set():
            try:
                batch = self._batches.get(timeout=_QUEUE_POLL_S)
            except queue.Empty:
                continue
            if batch is None:
                return
            yield self._to_proto(batch)

    def _to_proto(self, batch: Batch) -> agent_pb2.TelemetryBatch:
        msg = agent_pb2.TelemetryBatch(
            rank=self._rank, incarnation=self._incarnation, dropped_records=batch.dropped_records
        )
        for step, duration_s, end_ns in batch.steps:
            msg.steps.append(
                common_pb2.StepTiming(rank=self._rank, step=step, duration_s=duration_s, end_mono_ns=end_ns)
            )
        for rec in batch.collectives:
            msg.collectives.append(common_pb2.CollectiveRecord(**rec))  # type: ignore[arg-type]
        msg.gauges.update(batch.gauges)
        return msg

    def _stream_telemetry(self) -> None:
        try:
            self._stub.StreamTelemetry(self._requests())
        except grpc.RpcError as exc:
            if not self._stop.is_set():
                log.warning("telemetry_stream_ended code=%s", exc.code())

    def _subscribe(self, on_control: Callable[[str, str], None]) -> None:
        request = agent_pb2.ControlSubscribe(rank=self._rank, incarnation=self._incarnation)
        try:
            for msg in self._stub.Control(request):
                on_control(agent_pb2.ControlKind.Name(msg.kind), msg.reason)
        except grpc.RpcError as exc:
            if not self._stop.is_set():
                log.warning("control_stream_ended code=%s", exc.code())

    def close(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._batches.put_nowait(None)
        self._channel.close()
        for thread in self._threads:
            if thread is not threading.current_thread():  # close() may run on the control thread
                thread.join(timeout=timeout_s)
