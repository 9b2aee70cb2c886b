"""The agent's supervision loop: one thread owns the workers; everything else feeds it through bounded
queues (coordinator commands) or shared snapshots (telemetry, NVML).

Modes:
- launcher, standalone (no coordinator): like torchrun. On a rank failure (died or frozen) stop the
  other ranks, restart all up to `max_restarts`, then exit 1 with one line naming the rank and its
  signal or exit code. All ranks exiting 0 ends the agent with 0.
- launcher, with a coordinator: never restarts on its own. Reports verdicts at once and summaries every
  `report_interval_s`, and executes StartWorkers / StopWorkers / RunProbe commands, dropping commands
  of an older incarnation (fencing).
- sidecar (`kedge agent serve`): ranks started by someone else register through the socket; the agent
  watches and reports them, and can stop them, but does not start them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

import psutil
from kedge.agent import workers as workers_mod
from kedge.agent.config import Config
from kedge.agent.detector import Detector, Observation
from kedge.agent.metrics import Metrics
from kedge.agent.model import (
    CollectiveRecord,
    Command,
    GroupProgress,
    NodeReport,
    RankState,
    RankStatus,
    RunProbe,
    StartWorkers,
    StepTiming,
    StopWorkers,
    Verdict,
    VerdictKind,
    WorkerSpec,
)
from kedge.agent.nvml import GpuMonitor, make_backend
from kedge.agent.progress_reader import PageSnapshot, read_page
from kedge.agent.sdnotify import Notifier
from kedge.agent.socket_server import RankHello, SocketServer, Telemetry
from kedge.agent.workers import Worker

log = logging.getLogger(__name__)

COMMAND_QUEUE_SIZE = 64
MAX_COLLECTIVES_PER_REPORT = 256
MAX_STEPS_PER_REPORT = 1024
FAILURE_KINDS = (VerdictKind.RANK_DIED, VerdictKind.RANK_FROZEN)
EXIT_RANK_FAILED = 1
FLUSH_TIMEOUT_S = 3.0


@dataclass(slots=True)
class Outcome:
    """How the agent ended: exit code and a one-line reason."""

    code: int
    reason: str


class Supervisor:
    """Runs one node: launch/adopt ranks, watch them and the GPUs, report, obey commands."""

    def __init__(self, config: Config, command: Sequence[str] | None) -> None:
        self.config = config
        self.command = list(command) if command else None
        self.run_dir = config.run_dir or f"/dev/shm/kedge-{config.node_id}-{os.getpid()}"
        self.socket_path = config.socket_path or os.path.join(self.run_dir, "agent.sock")
        self.workers: dict[int, Worker] = {}
        self.incarnation = 0
        self.restarts = 0
        self.detector = Detector(
            node_id=config.node_id,
            frozen_margin_s=config.frozen_margin_s,
            stopped_persist_s=config.stopped_persist_s,
        )
        self.verdicts: deque[Verdict] = deque(maxlen=1024)
        self.commands: queue.Queue[Command] = queue.Queue(maxsize=COMMAND_QUEUE_SIZE)
        self._steps: deque[StepTiming] = deque(maxlen=MAX_STEPS_PER_REPORT)
        self._collectives: deque[CollectiveRecord] = deque(maxlen=MAX_COLLECTIVES_PER_REPORT)
        self._procs: dict[int, psutil.Process] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._signal: int | None = None
        self._probe_thread: threading.Thread | None = None
        self._ever_started = False
        self.notifier = Notifier()
        self.metrics = Metrics() if config.metrics_addr else None
        self.gpus = GpuMonitor(make_backend(config.nvml))
        self.server = SocketServer(
            self.socket_path,
            node_id=config.node_id,
            on_register=self._on_register,
            on_telemetry=self._on_telemetry,
            max_ranks=max(16, config.nproc_per_node),
        )
        self.coordinator: CoordinatorClientLike | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def run(self) -> Outcome:
        os.makedirs(self.run_dir, exist_ok=True)
        self.server.start()
        self.gpus.start()
        if self.metrics is not None:
            self.metrics.serve(self.config.metrics_addr)
        self._install_signal_handlers()
        self._start_coordinator_client()
        if self.command is not None and self.config.coordinator is None:
            self._start_standalone()
        self.notifier.ready(f"node {self.config.node_id}")
        try:
            outcome = self._loop()
        finally:
            self._shutdown()
        return outcome

    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        self._signal = signum
        self._stop.set()

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, _frame: self.request_stop(signum))

    def _start_coordinator_client(self) -> None:
        if self.config.coordinator is None:
            return
        from kedge.agent.coordinator_client import CoordinatorClient

        client = CoordinatorClient(
            self.config.coordinator,
            job_id=self.config.job_id,
            node_id=self.config.node_id,
            hostname=socket.gethostname(),
            node_address=self.config.address or self.config.master_addr,
            nproc=self.config.nproc_per_node,
            gpus=self.gpus.backend.gpu_count(),
            command=self.command or [],
            incarnation=lambda: self.incarnation,
            on_command=self._enqueue_command,
            outbox_size=self.config.report_buffer,
        )
        client.start()
        self.coordinator = client

    def _shutdown(self) -> None:
        self.notifier.stopping()
        self._stop_workers(self.config.stop_grace_s, "agent stopping")
        if self._probe_thread is not None:
            self._probe_thread.join(timeout=self.config.stop_grace_s)
        client = self._client()
        if client is not None:
            client.flush(FLUSH_TIMEOUT_S)
            time.sleep(0.2)  # let the report stream put the last message on the wire
            client.stop()
        self.gpus.stop()
        self.server.stop()
        if self.metrics is not None:
            self.metrics.stop()
        if self.command is not None:  # launcher mode owns its ranks' pages; a sidecar does not
            for w in self.workers.values():
                _remove(w.page_path)

    def _client(self) -> CoordinatorClientLike | None:
        return self.coordinator

    # -- the loop --------------------------------------------------------------------------------
    def _loop(self) -> Outcome:
        next_report_s = time.monotonic()
        while not self._stop.is_set():
            self._drain_commands()
            verdicts = self._observe()
            for v in verdicts:
                self._publish(v)
            outcome = self._decide(verdicts)
            if outcome is not None:
                return outcome
            if time.monotonic() >= next_report_s:
                next_report_s = time.monotonic() + self.config.report_interval_s
                self._summarise()
            self.notifier.watchdog()
            self._stop.wait(self.config.tick_s)
        sig = self._signal or signal.SIGTERM
        return Outcome(128 + sig, f"agent stopped by {signal.Signals(sig).name}")

    def _observe(self) -> list[Verdict]:
        observations = []
        for w in list(self.workers.values()):
            rc = w.poll()
            page = read_page(w.page_path) if w.page_path else None
            observations.append(
                Observation(worker=w, page=page, proc_status=self._proc_status(w), returncode=rc)
            )
        verdicts = self.detector.observe_ranks(observations)
        gpu_ranks = {w.local_rank: w.rank for w in self.workers.values()}
        verdicts.extend(self.detector.observe_gpus(self.gpus.snapshots(), gpu_ranks))
        self._last_observations = observations
        return verdicts

    def _proc_status(self, w: Worker) -> str:
        if w.exited:
            return "exited"
        try:
            proc = self._procs.get(w.pid)
            if proc is None:
                proc = self._procs[w.pid] = psutil.Process(w.pid)
            return str(proc.status())
        except psutil.Error:
            return "gone"

    def _publish(self, v: Verdict) -> None:
        level = logging.INFO if v.kind == VerdictKind.RANK_EXITED_OK else logging.WARNING
        log.log(
            level,
            "verdict kind=%s node=%s rank=%d gpu=%d reason=%s",
            v.kind.name,
            v.node_id,
            v.rank,
            v.gpu_index,
            v.reason,
        )
        self.verdicts.append(v)
        if self.config.verdict_log:
            _append_json_line(self.config.verdict_log, v)
        if self.metrics is not None:
            self.metrics.observe_verdict(v)
        client = self._client()
        if client is not None:
            client.report(self._report(verdicts=[v]))

    def _decide(self, verdicts: list[Verdict]) -> Outcome | None:
        if self.command is None:
            return None  # sidecar: someone else owns the ranks' lifecycle
        failure = next((v for v in verdicts if v.kind in FAILURE_KINDS and v.rank >= 0), None)
        if self.config.coordinator is not None:
            return self._all_done_outcome()
        if failure is not None:
            return self._restart_or_give_up(failure)
        return self._all_done_outcome()

    def _all_done_outcome(self) -> Outcome | None:
        if not self.workers or not self._ever_started:
            return None
        if all(w.exited and w.returncode == 0 for w in self.workers.values()):
            return Outcome(0, f"all {len(self.workers)} ranks exited 0")
        return None

    def _restart_or_give_up(self, failure: Verdict) -> Outcome | None:
        self._stop_workers(self.config.stop_grace_s, f"rank {failure.rank} failed")
        if self.restarts >= self.config.max_restarts:
            return Outcome(
                EXIT_RANK_FAILED,
                f"{failure.reason}; restarts exhausted ({self.restarts}/{self.config.max_restarts})",
            )
        self.restarts += 1
        log.warning(
            "restarting_ranks restart=%d/%d cause=%s", self.restarts, self.config.max_restarts, failure.reason
        )
        self._start_standalone(restore_step=-1)
        return None

    # -- workers ---------------------------------------------------------------------------------
    def _start_standalone(self, restore_step: int = -2) -> None:
        n = self.config.nproc_per_node
        spec = StartWorkers(
            world_size=n,
            master_addr=self.config.master_addr,
            master_port=self.config.master_port or _free_port(self.config.master_addr),
            workers=[WorkerSpec(rank=i, local_rank=i) for i in range(n)],
            restore_step=restore_step,
        )
        self._start_workers(spec, self.incarnation + 1)

    def _start_workers(self, spec: StartWorkers, incarnation: int) -> None:
        assert self.command is not None
        self.incarnation = incarnation
        for old in self.workers.values():
            _remove(old.page_path)
        self.workers = {}
        for ws in spec.workers:
            page = os.path.join(self.run_dir, f"inc{incarnation}-rank{ws.rank}.page")
            env = self._rank_env(spec, ws, incarnation, page)
            self.workers[ws.rank] = workers_mod.launch(
                self.command,
                rank=ws.rank,
                local_rank=ws.local_rank,
                incarnation=incarnation,
                page_path=page,
                env=env,
            )
        self._ever_started = True

    def _rank_env(self, spec: StartWorkers, ws: WorkerSpec, incarnation: int, page: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(spec.env)
        env.update(
            RANK=str(ws.rank),
            LOCAL_RANK=str(ws.local_rank),
            WORLD_SIZE=str(spec.world_size),
            LOCAL_WORLD_SIZE=str(len(spec.workers)),
            MASTER_ADDR=spec.master_addr,
            MASTER_PORT=str(spec.master_port),
            KEDGE_AGENT_SOCKET=self.socket_path,
            KEDGE_JOB_ID=self.config.job_id,
            KEDGE_NODE_ID=self.config.node_id,
            KEDGE_INCARNATION=str(incarnation),
            KEDGE_RESTORE_STEP=str(spec.restore_step),
            KEDGE_PROGRESS_DIR=self.run_dir,
            KEDGE_PROGRESS_PAGE=page,
        )
        env.setdefault("TORCH_FR_BUFFER_SIZE", "256")
        return env

    def _stop_workers(self, grace_s: float, reason: str) -> None:
        live = [w for w in self.workers.values() if not w.exited]
        if not live:
            return
        log.warning("stopping_ranks count=%d reason=%s grace_s=%.1f", len(live), reason, grace_s)
        for w in live:
            w.stopping = True
            self.server.send_control(w.rank, w.incarnation, "CONTROL_KIND_ABORT", reason)
        workers_mod.stop(live, grace_s=grace_s)
        self.server.forget(self.incarnation)

    # -- socket callbacks (gRPC threads) ---------------------------------------------------------
    def _on_register(self, hello: RankHello) -> tuple[bool, str, int]:
        with self._lock:
            w = self.workers.get(hello.rank)
            if self.command is not None:
                if w is None or w.pid != hello.pid:
                    return False, f"rank {hello.rank} pid {hello.pid} was not launched by this agent", 0
                return True, "", w.incarnation
            if hello.incarnation < self.incarnation:
                return False, f"stale incarnation {hello.incarnation} < {self.incarnation}", self.incarnation
            self.incarnation = max(self.incarnation, hello.incarnation)
            self.workers[hello.rank] = Worker(
                rank=hello.rank,
                local_rank=hello.local_rank,
                pid=hello.pid,
                incarnation=hello.incarnation,
                page_path=hello.progress_page,
            )
            log.info("rank_adopted rank=%d pid=%d incarnation=%d", hello.rank, hello.pid, hello.incarnation)
            return True, "", self.incarnation

    def _on_telemetry(self, t: Telemetry) -> None:
        self._steps.extend(t.steps)
        self._collectives.extend(t.collectives)
        if self.metrics is not None:
            self.metrics.observe_steps(t.steps)
            self.metrics.observe_collectives(t.collectives)

    # -- coordinator commands --------------------------------------------------------------------
    def _enqueue_command(self, command: Command) -> None:
        try:
            self.commands.put_nowait(command)
        except queue.Full:
            log.error("command_dropped id=%s reason=command queue full", command.command_id)

    def _drain_commands(self) -> None:
        while True:
            try:
                command = self.commands.get_nowait()
            except queue.Empty:
                return
            ok, reason = self._execute(command)
            log.info("command_done id=%s ok=%s reason=%s", command.command_id, ok, reason)
            client = self._client()
            if client is not None and reason != "probe running":
                client.command_done(command, ok, reason)

    def _execute(self, command: Command) -> tuple[bool, str]:
        if command.incarnation < self.incarnation:
            log.warning(
                "command_fenced id=%s incarnation=%d current=%d",
                command.command_id,
                command.incarnation,
                self.incarnation,
            )
            return False, f"stale incarnation {command.incarnation} < {self.incarnation}"
        body = command.body
        if isinstance(body, StopWorkers):
            self._stop_workers(body.grace_s or self.config.stop_grace_s, body.reason)
            return True, "stopped"
        if isinstance(body, StartWorkers):
            if self.command is None:
                return False, "sidecar mode: ranks are started by their pod or scheduler"
            self._stop_workers(self.config.stop_grace_s, "superseded by a new incarnation")
            self._start_workers(body, command.incarnation)
            return True, f"started {len(body.workers)} ranks"
        return self._start_probe(command, body)

    def _start_probe(self, command: Command, probe: RunProbe) -> tuple[bool, str]:
        if self._probe_thread is not None and self._probe_thread.is_alive():
            return False, "a probe is already running"
        from kedge.agent.probe_runner import run_probe

        def target() -> None:
            ok, reason, result = run_probe(command, probe, self.config.node_id)
            client = self._client()
            if client is None:
                return
            if result is not None:
                client.report(self._report(probe=result))
            client.command_done(command, ok, reason)

        self._probe_thread = threading.Thread(target=target, name="kedge-probe", daemon=True)
        self._probe_thread.start()
        return True, "probe running"

    # -- reports ---------------------------------------------------------------------------------
    def rank_statuses(self) -> list[RankStatus]:
        observations = getattr(self, "_last_observations", [])
        return [_rank_status(o, self._rss(o.worker)) for o in observations]

    def _rss(self, w: Worker) -> int:
        proc = self._procs.get(w.pid)
        if proc is None or w.exited:
            return 0
        try:
            return int(proc.memory_info().rss)
        except psutil.Error:
            return 0

    def _report(self, **fields: object) -> NodeReport:
        return NodeReport(
            job_id=self.config.job_id,
            node_id=self.config.node_id,
            incarnation=self.incarnation,
            **fields,  # type: ignore[arg-type]
        )

    def _summarise(self) -> None:
        ranks = self.rank_statuses()
        gpus = self.gpus.snapshots()
        steps = _drain(self._steps)
        collectives = _drain(self._collectives)
        if self.metrics is not None:
            self.metrics.observe_ranks(ranks)
            self.metrics.observe_gpus(gpus)
        client = self._client()
        if client is not None:
            client.report(self._report(ranks=ranks, gpus=gpus, steps=steps, collectives=collectives))


class CoordinatorClientLike(Protocol):
    """The part of CoordinatorClient the supervisor uses."""

    def report(self, report: NodeReport) -> None: ...
    def command_done(self, command: Command, ok: bool, reason: str) -> None: ...
    def flush(self, timeout_s: float) -> bool: ...
    def stop(self) -> None: ...


def _drain(items: deque[StepTiming] | deque[CollectiveRecord]) -> list:  # type: ignore[type-arg]
    out = []
    while items:
        out.append(items.popleft())
    return out


def _rank_status(obs: Observation, rss_bytes: int) -> RankStatus:
    w, page = obs.worker, obs.page
    status = RankStatus(
        rank=w.rank,
        local_rank=w.local_rank,
        pid=w.pid,
        state=_state(obs),
        incarnation=w.incarnation,
        rss_bytes=rss_bytes,
        proc_status=obs.proc_status,
    )
    if obs.returncode is not None:
        status.exit_code, status.signal, _ = workers_mod.describe_exit(obs.returncode)
    if page is not None:
        _fill_from_page(status, page)
    return status


def _fill_from_page(status: RankStatus, page: PageSnapshot) -> None:
    status.step = page.step
    status.step_time_s = page.step_duration_ns / 1e9
    status.heartbeat_mono_ns = page.heartbeat_mono_ns
    status.groups = [
        GroupProgress(
            group=g.name,
            enqueued_seq=g.enqueued_seq,
            started_seq=g.started_seq,
            completed_seq=g.completed_seq,
            enqueued_mono_ns=g.enqueued_mono_ns,
            started_mono_ns=g.started_mono_ns,
            completed_mono_ns=g.completed_mono_ns,
        )
        for g in page.groups
    ]


def _state(obs: Observation) -> RankState:
    if obs.returncode is not None:
        return RankState.STOPPED if obs.worker.stopping else RankState.EXITED
    if obs.proc_status in ("stopped", "tracing-stop"):
        return RankState.FROZEN
    return RankState.RUNNING if obs.page is not None and obs.page.step >= 0 else RankState.STARTING


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _append_json_line(path: str, v: Verdict) -> None:
    record = asdict(v)
    record["kind"] = v.kind.name
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def main_outcome(config: Config, command: Sequence[str] | None) -> int:
    """Runs a supervisor to the end and prints its one-line reason on stderr."""
    outcome = Supervisor(config, command).run()
    print(f"kedge agent: {outcome.reason}", file=sys.stderr)
    return outcome.code
