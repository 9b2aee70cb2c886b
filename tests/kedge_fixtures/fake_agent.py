"""A scripted stand-in for the node agent, speaking the real gRPC protocol to a real coordinator.

It runs no workers: it acknowledges StartWorkers/StopWorkers at once and records every command, so
coordinator tests can drive registration, heartbeats, reports, command streams and leases without
the agent's code. Threads stop on `close()`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable

import grpc
from kedge.proto import common_pb2, coordinator_pb2, coordinator_pb2_grpc


class FakeAgent:
    """One node's agent: `register()`, then heartbeats and a Commands stream in background threads."""

    def __init__(
        self, address: str, node_id: str, *, job_id: str = "job", nproc: int = 2, spare: bool = False
    ):
        self.address, self.node_id, self.job_id, self.nproc, self.spare = (
            address,
            node_id,
            job_id,
            nproc,
            spare,
        )
        self.channel = grpc.insecure_channel(address)
        self.stub = coordinator_pb2_grpc.CoordinatorStub(self.channel)
        self.commands: list[coordinator_pb2.Command] = []
        self.incarnation = 0
        self.heartbeating = threading.Event()
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._stream: grpc.Future | None = None

    def register(self) -> coordinator_pb2.RegisterNodeResponse:
        resp = self.stub.RegisterNode(
            coordinator_pb2.RegisterNodeRequest(
                job_id=self.job_id,
                node_id=self.node_id,
                hostname=self.node_id,
                address="127.0.0.1",
                nproc=self.nproc,
                spare=self.spare,
                known_incarnation=self.incarnation,
                command=["train.py"],
            ),
            timeout=5,
        )
        self.heartbeating.set()
        for target in (self._heartbeat_loop, self._command_loop):
            t = threading.Thread(target=target, daemon=True)
            t.start()
            self._threads.append(t)
        return resp

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(0.3):
            if self.heartbeating.is_set():
                req = coordinator_pb2.HeartbeatRequest(job_id=self.job_id, node_id=self.node_id)
                with contextlib.suppress(grpc.RpcError):  # the coordinator may be restarting
                    self.stub.Heartbeat(req, timeout=2)

    def _command_loop(self) -> None:
        stream = self.stub.Commands(
            coordinator_pb2.CommandSubscribe(job_id=self.job_id, node_id=self.node_id)
        )
        self._stream = stream
        try:
            for cmd in stream:
                self._execute(cmd)
        except grpc.RpcError:
            return

    def _execute(self, cmd: coordinator_pb2.Command) -> None:
        if cmd.HasField("start"):
            self.incarnation = cmd.incarnation
        self.stub.CommandDone(
            coordinator_pb2.CommandResult(
                command_id=cmd.command_id,
                job_id=self.job_id,
                node_id=self.node_id,
                incarnation=cmd.incarnation,
                ok=True,
            ),
            timeout=5,
        )
        with self._cond:
            self.commands.append(cmd)
            self._cond.notify_all()

    def wait_for(self, kind: str, incarnation: int, timeout_s: float = 15.0) -> coordinator_pb2.Command:
        """Waits for a command with body `kind` (start|stop|probe) of the given incarnation."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                for cmd in self.commands:
                    if cmd.WhichOneof("body") == kind and cmd.incarnation == incarnation:
                        return cmd
                left = deadline - time.monotonic()
                if left <= 0:
                    got = [(c.WhichOneof("body"), c.incarnation) for c in self.commands]
                    raise TimeoutError(f"{self.node_id}: no {kind} for incarnation {incarnation}; got {got}")
                self._cond.wait(left)

    def report(self, *verdicts: common_pb2.Verdict, ranks: Iterable[common_pb2.RankStatus] = ()) -> None:
        msg = coordinator_pb2.NodeReport(
            job_id=self.job_id,
            node_id=self.node_id,
            incarnation=self.incarnation,
            wall_time_ns=time.time_ns(),
            verdicts=list(verdicts),
            ranks=list(ranks),
        )
        self.stub.Report(iter([msg]), timeout=5)

    def close(self) -> None:
        self._stop.set()
        if self._stream is not None:
            self._stream.cancel()
        for t in self._threads:
            t.join(timeout=5)
        self.channel.close()
