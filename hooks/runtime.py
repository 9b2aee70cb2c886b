"""The hooks' per-process state: progress page, step timing, the side thread and the agent client.

What the page's two clocks mean (docs/PROGRESS.md):
- `heartbeat` is bumped every `heartbeat_interval_s` by a side thread; it goes stale only when no
  Python thread can run: the process is stopped, or one thread holds the GIL (a pure-Python loop, a
  long GC). A rank blocked in C with the GIL released (a stuck collective, `time.sleep`, a read on a
  pipe) keeps a fresh heartbeat.
- `progress` moves on every step boundary and every change of a process group's collective
  sequence numbers (read from Flight Recorder by the same side thread). It goes stale whenever
  training stops moving, whatever the cause.
So the agent reports liveness and progress separately, and the (group, seq) numbers say whether a
stalled rank is waiting inside a collective (enqueued > completed) or never enqueued it.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from kedge.hooks.flight_recorder import BUFFER_ENV_VARS, DEFAULT_BUFFER_ENTRIES, FlightRecorderPoller
from kedge.hooks.progress_page import ProgressPage

log = logging.getLogger(__name__)

MAX_PENDING_STEPS = 1024
MAX_RECORDS_PER_BATCH = 512


@dataclass(kw_only=True, slots=True)
class Config:
    """Hook settings, from the environment the agent gives each rank (argument > env > default)."""

    agent_socket: str | None = None
    """Unix socket of the node agent (KEDGE_AGENT_SOCKET); None: no agent client."""
    progress_page: str | None = None
    """Path of this rank's page (KEDGE_PROGRESS_PAGE, or KEDGE_PROGRESS_DIR/rank-<RANK>.page)."""
    job_id: str = ""
    """KEDGE_JOB_ID."""
    node_id: str = ""
    """KEDGE_NODE_ID."""
    incarnation: int = 0
    """KEDGE_INCARNATION: which world of the job this process belongs to."""
    restore_step: int = -2
    """KEDGE_RESTORE_STEP: -1 latest committed checkpoint, -2 fresh start."""
    rank: int = 0
    """RANK."""
    local_rank: int = 0
    """LOCAL_RANK."""
    world_size: int = 1
    """WORLD_SIZE."""
    heartbeat_interval_s: float = 0.1
    """How often the side thread bumps the heartbeat."""
    status_interval_s: float = 0.2
    """How often the side thread copies Flight Recorder's per-group sequence numbers to the page."""

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Config:
        e = dict(os.environ if env is None else env)
        page = e.get("KEDGE_PROGRESS_PAGE")
        if page is None and "KEDGE_PROGRESS_DIR" in e:
            page = os.path.join(e["KEDGE_PROGRESS_DIR"], f"rank-{e.get('RANK', '0')}.page")
        return cls(
            agent_socket=e.get("KEDGE_AGENT_SOCKET"),
            progress_page=page,
            job_id=e.get("KEDGE_JOB_ID", ""),
            node_id=e.get("KEDGE_NODE_ID", ""),
            incarnation=int(e.get("KEDGE_INCARNATION", "0")),
            restore_step=int(e.get("KEDGE_RESTORE_STEP", "-2")),
            rank=int(e.get("RANK", "0")),
            local_rank=int(e.get("LOCAL_RANK", "0")),
            world_size=int(e.get("WORLD_SIZE", "1")),
        )


class Runtime:
    """Everything `kedge.hooks.init()` sets up; `step()` is the only training-thread entry point."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.step_value = -1
        self._last_step_ns = time.monotonic_ns()
        self._pending_steps: deque[tuple[int, float, int]] = deque(maxlen=MAX_PENDING_STEPS)
        self.dropped_records = 0
        self.checkpoint_requested = threading.Event()
        self._stop = threading.Event()
        self._page: ProgressPage | None = None
        self._client: Any = None
        self._recorder = FlightRecorderPoller()
        self._thread: threading.Thread | None = None
        self._telemetry_interval_s = 1.0

    def start(self) -> None:
        cfg = self.config
        for var in BUFFER_ENV_VARS[:1]:
            # Flight Recorder is armed by the environment when the process group is created.
            os.environ.setdefault(var, str(DEFAULT_BUFFER_ENTRIES))
        # KEDGE_NCCL_TIMING=1 times NCCL collectives on the device (a CUDA start event per collective),
        # the only timing that says which rank reached a collective last on an asynchronous device.
        # Off by default: on 2 H200s it cost +1.2% step time, and +8.3% with
        # CUDA_DEVICE_MAX_CONNECTIONS=1 (it breaks compute/communication overlap); without it no
        # straggler is inferred on NCCL (docs/GPU.md). An explicit TORCH_NCCL_ENABLE_TIMING wins.
        if os.environ.get("KEDGE_NCCL_TIMING", "0") == "1":
            os.environ.setdefault("TORCH_NCCL_ENABLE_TIMING", "1")
        if cfg.progress_page:
            self._page = ProgressPage(
                cfg.progress_page,
                rank=cfg.rank,
                local_rank=cfg.local_rank,
                world_size=cfg.world_size,
                incarnation=cfg.incarnation,
            )
        if cfg.agent_socket:
            self._connect(cfg.agent_socket)
        self._thread = threading.Thread(target=self._side_loop, name="kedge-hooks", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def _connect(self, socket_path: str) -> None:
        from kedge.hooks.agent_client import AgentClient

        cfg = self.config
        client = AgentClient(socket_path, rank=cfg.rank, incarnation=cfg.incarnation)
        try:
            reg = client.register(
                job_id=cfg.job_id,
                local_rank=cfg.local_rank,
                world_size=cfg.world_size,
                pid=os.getpid(),
                page=cfg.progress_page or "",
                hostname=socket.gethostname(),
            )
        except Exception as exc:  # the agent being away must never stop training
            log.warning("agent_unreachable socket=%s error=%s", socket_path, exc)
            client.close()
            return
        if not reg.accepted:
            log.warning("agent_rejected_rank rank=%d reason=%s", cfg.rank, reg.reason)
            client.close()
            return
        self._telemetry_interval_s = reg.telemetry_interval_s
        client.start(self._on_control)
        self._client = client

    def step(self, step: int | None) -> None:
        """Training thread: a step boundary. Cost: a clock read, a deque append, four pack_into."""
        now = time.monotonic_ns()
        value = self.step_value + 1 if step is None else step
        duration_ns = now - self._last_step_ns
        self._last_step_ns = now
        self.step_value = value
        if len(self._pending_steps) == MAX_PENDING_STEPS:
            self.dropped_records += 1
        self._pending_steps.append((value, duration_ns / 1e9, now))
        if self._page is not None:
            self._page.mark_step(value, now, duration_ns)

    def _side_loop(self) -> None:
        cfg = self.config
        next_status = next_batch = 0.0
        after_seq: dict[str, int] = {}
        while not self._stop.wait(cfg.heartbeat_interval_s):
            now_s = time.monotonic()
            if self._page is not None:
                self._page.beat(time.monotonic_ns())
            if now_s >= next_status:
                next_status = now_s + cfg.status_interval_s
                self._copy_status()
            if self._client is not None and now_s >= next_batch:
                next_batch = now_s + self._telemetry_interval_s
                self._send_batch(after_seq)

    def _copy_status(self) -> None:
        if self._page is None or not self._recorder.available:
            return
        now = time.monotonic_ns()
        for g in self._recorder.status():
            self._page.set_group(g.name, g.enqueued_seq, g.started_seq, g.completed_seq, now)

    def _send_batch(self, after_seq: dict[str, int]) -> None:
        from kedge.hooks.agent_client import Batch

        steps = []
        while self._pending_steps:
            steps.append(self._pending_steps.popleft())
        records = self._recorder.records(after_seq) if self._recorder.available else []
        dropped = max(0, len(records) - MAX_RECORDS_PER_BATCH)
        async_device = bool(records) and _nccl_backend()
        batch = Batch(
            steps=steps,
            collectives=[
                _record_fields(r, self.step_value, async_device=async_device)
                for r in records[-MAX_RECORDS_PER_BATCH:]
            ],
            dropped_records=self.dropped_records + dropped,
            gauges={"flight_recorder_dump_s": self._recorder.dump_s},
        )
        self.dropped_records = 0
        if not self._client.send(batch):
            self.dropped_records += len(steps) + len(batch.collectives)

    def _on_control(self, kind: str, reason: str) -> None:
        log.warning("agent_control kind=%s reason=%s rank=%d", kind, reason, self.config.rank)
        if kind == "CONTROL_KIND_CHECKPOINT":
            self.checkpoint_requested.set()
        elif kind == "CONTROL_KIND_DUMP_TRACE":
            self._dump_trace()
        elif kind == "CONTROL_KIND_ABORT":
            _abort_process_groups()
            self.close(clean=False)
            signal.raise_signal(signal.SIGTERM)

    def _dump_trace(self) -> None:
        """Writes the full Flight Recorder dump next to the page (runs on the control thread)."""
        if not self.config.progress_page:
            return
        path = f"{self.config.progress_page}.trace.json"
        with open(path, "w") as f:
            f.write(self._recorder.dump_json())
        log.warning("flight_recorder_dumped path=%s", path)

    def close(self, *, clean: bool = True) -> None:
        if self._page is not None:
            self._page.mark_exiting()
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._page is not None:
            self._page.close(clean=clean)


def _abort_process_groups() -> None:
    """Best effort: aborts communicators so peers blocked with this rank fail fast instead of hanging."""
    with contextlib.suppress(Exception):
        import torch.distributed as dist

        abort = getattr(dist.distributed_c10d, "_abort_process_group", None)
        if abort is not None and dist.is_initialized():
            abort()


def _record_fields(rec: Any, step: int, *, async_device: bool = False) -> dict[str, int | str]:
    """Wire fields of one record. The coordinator times a collective as complete - start (or -
    enqueue): the rank with the shortest time arrived last. With a device-measured duration, start is
    placed that long before completion. On an asynchronous device (NCCL) without one, the CPU's
    enqueue time says nothing about when the rank reached the collective (the CPU runs ahead, and a
    rank that syncs lags behind in CPU time though its GPU is early), and completion is only
    discovered by polling: no timing is sent then, so no straggler is inferred from it."""
    enqueue_ns = _wall_to_mono(rec.created_wall_ns)
    start_ns = _wall_to_mono(rec.started_wall_ns)
    complete_ns = _wall_to_mono(rec.completed_wall_ns)
    if rec.device_duration_ns > 0 and complete_ns > 0:
        start_ns = complete_ns - rec.device_duration_ns
    elif async_device:
        enqueue_ns = start_ns = 0
    return {
        "group": rec.group,
        "seq": rec.seq,
        "op": rec.op,
        "size_bytes": rec.size_bytes,
        "state": rec.state,
        "enqueue_mono_ns": enqueue_ns,
        "start_mono_ns": start_ns,
        "complete_mono_ns": complete_ns,
        "step": step,
    }


def _nccl_backend() -> bool:
    """Whether the default process group runs on NCCL (read from the side thread; no collective)."""
    try:
        import torch.distributed as dist

        return dist.is_initialized() and "nccl" in str(dist.get_backend()).lower()
    except (ImportError, RuntimeError, ValueError):
        return False


def _wall_to_mono(wall_ns: int) -> int:
    """Flight Recorder stamps wall-clock time; the wire uses the node's monotonic clock."""
    if wall_ns <= 0:
        return 0
    return wall_ns - time.time_ns() + time.monotonic_ns()
