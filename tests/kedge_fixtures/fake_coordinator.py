"""A tiny in-test coordinator (test code only): records registrations, heartbeats, reports and command
results, and hands out the commands a test queues. The real one lives in kedge.coordinator."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures

import grpc
from kedge.proto import coordinator_pb2 as pb
from kedge.proto import coordinator_pb2_grpc as pb_grpc


class FakeCoordinator(pb_grpc.CoordinatorServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.registrations: list[pb.RegisterNodeRequest] = []
        self.heartbeats = 0
        self.reports: list[pb.NodeReport] = []
        self.results: list[pb.CommandResult] = []
        self.commands: queue.Queue[pb.Command] = queue.Queue(maxsize=64)
        self._cv = threading.Condition()
        self._stop = threading.Event()
        self._server: grpc.Server | None = None

    def serve(self, port: int) -> None:
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        pb_grpc.add_CoordinatorServicer_to_server(self, self._server)
        self._server.add_insecure_port(f"127.0.0.1:{port}")
        self._server.start()

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.stop(0.5).wait(2)

    def RegisterNode(self, request: pb.RegisterNodeRequest, context: object) -> pb.RegisterNodeResponse:
        with self._cv:
            self.registrations.append(request)
            self._cv.notify_all()
        return pb.RegisterNodeResponse(accepted=True, lease_ttl_s=5.0, heartbeat_interval_s=0.5)

    def Heartbeat(self, request: pb.HeartbeatRequest, context: object) -> pb.HeartbeatResponse:
        self.heartbeats += 1
        return pb.HeartbeatResponse(ok=True, lease_ttl_s=5.0)

    def Report(self, request_iterator: Iterator[pb.NodeReport], context: object) -> pb.ReportAck:
        n = 0
        for report in request_iterator:
            n += 1
            with self._cv:
                self.reports.append(report)
                self._cv.notify_all()
        return pb.ReportAck(reports=n)

    def Commands(self, request: pb.CommandSubscribe, context: grpc.ServicerContext) -> Iterator[pb.Command]:
        while context.is_active() and not self._stop.is_set():
            try:
                yield self.commands.get(timeout=0.2)
            except queue.Empty:
                continue

    def CommandDone(self, request: pb.CommandResult, context: object) -> pb.CommandAck:
        with self._cv:
            self.results.append(request)
            self._cv.notify_all()
        return pb.CommandAck(ok=True)

    def wait_for(self, predicate: Callable[[], object], timeout_s: float) -> object:
        """Waits until predicate() is truthy (re-checked on every report/result); returns it."""
        deadline = time.monotonic() + timeout_s
        with self._cv:
            while True:
                value = predicate()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout_s}s waiting for {predicate}")
                self._cv.wait(min(left, 0.2))

    def verdicts(self) -> list[object]:
        return [v for r in list(self.reports) for v in r.verdicts]

    def result(self, command_id: str) -> pb.CommandResult | None:
        return next((r for r in list(self.results) if r.command_id == command_id), None)
