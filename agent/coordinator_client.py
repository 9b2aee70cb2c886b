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

Several coordinators (high availability, `--coordinator A,B,C`): when the session's RPC fails, the
client moves to the leader a standby named in its refusal (trailing metadata `kedge-leader`), else to
the next address, and registers there with the incarnation its workers run, so healthy workers keep
running (the new leader continues the same incarnation).
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
from kedge.agent.auth import AgentSecurity, CommandVerifier, coordinator_channel
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
        security: AgentSecurity | None = None,
    ) -> None:
        self.addresses = [a.strip() for a in address.split(",") if a.strip()]
        self.address = self.addresses[0]
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
        # Security (issue 12): client certificate and bearer token; commands verified before use.
        self._channel = coordinator_channel(
            self.address,
            tls=security.tls if security else None,
            token=security.token if security else None,
        )
        self._tls = security is not None and security.tls is not None
        self._security = security
        self._verifier = CommandVerifier(job_id, security.command_key() if security else None)
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
                if self._stop.wait(self.heartbeat_interval_s):
                    return  # stop() closes the channel: a heartbeat now would raise ValueError
                self._heartbeat()
            except grpc.RpcError as exc:
                _log_session_error(self.address, exc, self._tls)
                if not isinstance(exc, _Rejected):
                    self._fail_over(exc)
                backoff.wait(self._stop)

    def _fail_over(self, exc: grpc.RpcError) -> None:
        """Moves to the leader the refusal names, else to the next address; registers again there."""
        hint = _leader_hint(exc)
        index = self.addresses.index(self.address) if self.address in self.addresses else -1
        target = hint or self.addresses[(index + 1) % len(self.addresses)]
        if target == self.address:
            return
        log.warning("coordinator_failover node=%s from=%s to=%s", self.node_id, self.address, target)
        old, self.address = self._channel, target
        self._channel = coordinator_channel(
            target,
            tls=self._security.tls if self._security else None,
            token=self._security.token if self._security else None,
        )
        self._stub = coordinator_pb2_grpc.CoordinatorStub(self._channel)
        self.registered.clear()
        old.close()  # ends the report and command streams on the old coordinator; they follow

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
                    if not self._verified(msg):
                        continue
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

    def _verified(self, msg: coordinator_pb2.Command) -> bool:
        """Security (issue 12): own job, current or newer incarnation, valid signature (if keyed)."""
        signature = msg.signature
        unsigned = coordinator_pb2.Command()
        unsigned.CopyFrom(msg)
        unsigned.ClearField("signature")
        self._verifier.observe_incarnation(self._incarnation())
        reason = self._verifier.check(
            command_id=msg.command_id,
            job_id=msg.job_id,
            incarnation=msg.incarnation,
            payload=unsigned.SerializeToString(deterministic=True),
            signature=signature,
        )
        if reason is not None:
            self._report_rejected(msg, reason)
        return reason is None

    def _report_rejected(self, msg: coordinator_pb2.Command, reason: str) -> None:
        """Tells the coordinator (one attempt) so its executor does not wait for a refused command."""
        result = coordinator_pb2.CommandResult(
            command_id=msg.command_id,
            job_id=self.job_id,
            node_id=self.node_id,
            incarnation=msg.incarnation,
            ok=False,
            reason=f"rejected: {reason}",
        )
        try:
            self._stub.CommandDone(result, timeout=RPC_TIMEOUT_S)
        except grpc.RpcError as exc:
            log.warning("command_done_failed id=%s code=%s", msg.command_id[:64], _code(exc))

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


def _leader_hint(exc: grpc.RpcError) -> str:
    """The leader's address from a standby coordinator's refusal (metadata `kedge-leader`), or ''."""
    metadata = getattr(exc, "trailing_metadata", None)
    try:
        pairs = metadata() if callable(metadata) else None
    except Exception:  # a locally made error carries no metadata
        return ""
    for key, value in pairs or ():
        if key == "kedge-leader" and isinstance(value, str):
            return value
    return ""


def _log_session_error(address: str, exc: grpc.RpcError, tls: bool) -> None:
    """Security (issue 12): a refused token gets its own line; with TLS, the transport's detail is
    logged too (a certificate the coordinator refuses shows as the socket closing after the
    handshake: TLS 1.3 verifies the client's certificate after the client considers it done)."""
    code = getattr(exc, "code", None)
    details = getattr(exc, "details", None)
    text = details() if callable(details) else ""
    if callable(code) and code() == grpc.StatusCode.UNAUTHENTICATED:
        log.error("coordinator_refused_agent addr=%s reason=%s", address, text)
    elif tls:
        log.warning(
            "coordinator_unreachable addr=%s code=%s tls=on detail=%s (if the coordinator is up, check "
            "that this agent's certificate is signed by the CA it trusts, and the reverse)",
            address,
            _code(exc),
            text,
        )
    else:
        log.warning("coordinator_unreachable addr=%s code=%s", address, _code(exc))


def _code(exc: grpc.RpcError) -> str:
    code = getattr(exc, "code", None)
    return str(code()) if callable(code) else str(exc)
