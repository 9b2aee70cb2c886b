"""The agent's client of the coordinator (kedge.coordinator.v1.Coordinator).

Three daemon threads, each reconnecting with bounded exponential backoff:
- session: RegisterNode, then Heartbeat at the interval the coordinator returned (the lease); an
  answer `ok=false` (e.g. the coordinator forgot the node) registers again;
- reports: one Report stream fed from a bounded outbox. Verdict reports go first; when the outbox is
  full the oldest summary is dropped. Delivery of verdicts is at-least-once: after a broken stream
  the verdicts of the last `VERDICT_RESEND_S` are sent again (the coordinator dedupes them by
  node, rank, kind and wall time);
- commands: the Commands stream; each command goes to the supervisor's bounded queue.
While the coordinator is unreachable the supervisor keeps working; only this module waits.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence

import grpc
from kedge.agent import wire
from kedge.agent.model import Command, NodeReport
from kedge.proto import coordinator_pb2, coordinator_pb2_grpc

log = logging.getLogger(__name__)

BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 2.0
RPC_TIMEOUT_S = 3.0
VERDICT_RESEND_S = 60.0
MAX_RESEND_VERDICTS = 32
DONE_ATTEMPTS = 5


class Backoff:
    """Exponential backoff with jitter, bounded by BACKOFF_MAX_S."""

    def __init__(self) -> None:
        self.delay_s = BACKOFF_MIN_S

    def wait(self, stop: threading.Event) -> None:
        stop.wait(self.delay_s * (0.5 + random.random() / 2))
        self.delay_s = min(self.delay_s * 2, BACKOFF_MAX_S)

    def reset(self) -> None:
        self.delay_s = BACKOFF_MIN_S


class CoordinatorClient:
    """Keeps this node registered, its reports flowing and its commands arriving."""

    def __init__(
        self,
        address: str,
        *,
        job_id: str,
        node_id: str,
        hostname: str,
        node_address: str,
        nproc: int,
        gpus: int,
        command: Sequence[str],
        incarnation: Callable[[], int],
        on_command: Callable[[Command], None],
        outbox_size: int = 120,
    ) -> None:
        self.address = address
        self.job_id = job_id
        self.node_id = node_id
        self._hello = coordinator_pb2.RegisterNodeRequest(
            job_id=job_id,
            node_id=node_id,
            hostname=hostname,
            address=node_address,
            nproc=nproc,
            gpus=gpus,
            command=list(command),
        )
        self._incarnation = incarnation
        self._on_command = on_command
        self._channel = grpc.insecure_channel(address)
        self._stub = coordinator_pb2_grpc.CoordinatorStub(self._channel)
        self._outbox: deque[NodeReport] = deque()
        self._outbox_size = outbox_size
        self._recent_verdicts: deque[NodeReport] = deque(maxlen=MAX_RESEND_VERDICTS)
        self._cv = threading.Condition()
        self._stop = threading.Event()
        self.registered = threading.Event()
        self.heartbeat_interval_s = 1.0
        self.dropped_reports = 0
        self.sent_reports = 0
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for target in (self._session_loop, self._report_loop, self._command_loop):
            thread = threading.Thread(target=target, name=f"kedge-coord-{target.__name__}", daemon=True)
            thread.start()
            self._threads.append(thread)

    # -- reports ---------------------------------------------------------------------------------
    def report(self, report: NodeReport) -> None:
        """Queues a report without blocking; verdicts jump ahead of summaries."""
        with self._cv:
            if report.verdicts or report.probe is not None:
                self._outbox.appendleft(report)
                if report.verdicts:
                    self._recent_verdicts.append(report)
            else:
                self._outbox.append(report)
            while len(self._outbox) > self._outbox_size:
                self._drop_one()
            self._cv.notify()

    def _drop_one(self) -> None:
        for i, r in enumerate(self._outbox):
            if not r.verdicts and r.probe is None:
                del self._outbox[i]
                self.dropped_reports += 1
                return
        self._outbox.pop()  # only verdicts left: drop the oldest one
        self.dropped_reports += 1

    def _next_reports(self, broken: threading.Event) -> Iterator[coordinator_pb2.NodeReport]:
        while not self._stop.is_set() and not broken.is_set():
            with self._cv:
                if not self._outbox:
                    self._cv.wait(0.2)
                    continue
                report = self._outbox.popleft()
            self.sent_reports += 1
            yield wire.report_to_proto(report)

    def _report_loop(self) -> None:
        backoff = Backoff()
        while not self._stop.is_set():
            if not self.registered.wait(0.2):
                continue
            broken = threading.Event()
            try:
                self._stub.Report(self._next_reports(broken))
                backoff.reset()
            except grpc.RpcError as exc:
                broken.set()
                if self._stop.is_set():
                    return
                log.warning("coordinator_report_stream_broken code=%s", _code(exc))
                self._requeue_recent_verdicts()
                backoff.wait(self._stop)

    def _requeue_recent_verdicts(self) -> None:
        cutoff_ns = time.time_ns() - int(VERDICT_RESEND_S * 1e9)
        with self._cv:
            for report in self._recent_verdicts:
                if report.wall_time_ns >= cutoff_ns and report not in self._outbox:
                    self._outbox.appendleft(report)

    # -- session ---------------------------------------------------------------------------------
    def _session_loop(self) -> None:
        backoff = Backoff()
        while not self._stop.is_set():
            try:
                if not self.registered.is_set():
                    self._register()
                    backoff.reset()
                self._stop.wait(self.heartbeat_interval_s)
                self._heartbeat()
            except grpc.RpcError as exc:
                log.warning("coordinator_unreachable addr=%s code=%s", self.address, _code(exc))
                backoff.wait(self._stop)

    def _register(self) -> None:
        request = coordinator_pb2.RegisterNodeRequest()
        request.CopyFrom(self._hello)
        request.known_incarnation = self._incarnation()
        reply = self._stub.RegisterNode(request, timeout=RPC_TIMEOUT_S)
        if not reply.accepted:
            log.error("coordinator_rejected_node node=%s reason=%s", self.node_id, reply.reason)
            raise _Rejected(reply.reason)
        self.heartbeat_interval_s = reply.heartbeat_interval_s or 1.0
        log.info(
            "node_registered node=%s lease_s=%.1f heartbeat_s=%.1f incarnation=%d",
            self.node_id,
            reply.lease_ttl_s,
            self.heartbeat_interval_s,
            reply.incarnation,
        )
        self.registered.set()

    def _heartbeat(self) -> None:
        if not self.registered.is_set():
            return
        reply = self._stub.Heartbeat(
            coordinator_pb2.HeartbeatRequest(
                job_id=self.job_id, node_id=self.node_id, incarnation=self._incarnation()
            ),
            timeout=RPC_TIMEOUT_S,
        )
        if not reply.ok:
            log.warning("heartbeat_refused node=%s reason=%s", self.node_id, reply.reason)
            self.registered.clear()

    # -- commands --------------------------------------------------------------------------------
    def _command_loop(self) -> None:
        backoff = Backoff()
        while not self._stop.is_set():
            if not self.registered.wait(0.2):
                continue
            call = self._stub.Commands(
                coordinator_pb2.CommandSubscribe(job_id=self.job_id, node_id=self.node_id)
            )
            try:
                for msg in call:
                    backoff.reset()
                    command = wire.command_from_proto(msg)
                    if command is None:
                        log.warning("command_unknown id=%s", msg.command_id)
                        continue
                    self._on_command(command)
                    if self._stop.is_set():
                        call.cancel()
                        return
            except grpc.RpcError as exc:
                if self._stop.is_set():
                    return
                log.warning("coordinator_command_stream_broken code=%s", _code(exc))
            backoff.wait(self._stop)

    def command_done(self, command: Command, ok: bool, reason: str) -> None:
        """Tells the coordinator a command finished (bounded retries; called by the supervisor)."""
        request = coordinator_pb2.CommandResult(
            command_id=command.command_id,
            job_id=self.job_id,
            node_id=self.node_id,
            incarnation=command.incarnation,
            ok=ok,
            reason=reason,
        )
        backoff = Backoff()
        for _ in range(DONE_ATTEMPTS):
            try:
                self._stub.CommandDone(request, timeout=RPC_TIMEOUT_S)
                return
            except grpc.RpcError as exc:
                log.warning("command_done_failed id=%s code=%s", command.command_id, _code(exc))
                backoff.wait(self._stop)

    def flush(self, timeout_s: float) -> bool:
        """Waits (bounded) until the outbox is empty; True if it emptied."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._cv:
                if not self._outbox:
                    return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        self._channel.close()
        for thread in self._threads:
            thread.join(timeout=RPC_TIMEOUT_S)


class _Rejected(grpc.RpcError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.FAILED_PRECONDITION


def _code(exc: grpc.RpcError) -> str:
    code = getattr(exc, "code", None)
    return str(code()) if callable(code) else str(exc)
