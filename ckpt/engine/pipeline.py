"""The level pipeline: snapshot thread -> writer threads -> committer -> remote thread.

Threads and what bounds them (every one has a stop, every queue a size):
- snapshot (1): jobs from a queue of at most `max_in_flight`; copies into pool slabs (bounded by the
  pool: when no slab is free it waits for a writer, which is the backpressure of a state larger than
  the pool).
- writers (`writer_threads`): encode and append a slab's chunks to the first level (local, or remote
  when there is no local level), then release the slab. The slab queue holds at most the pool's slabs.
- committer (1): writes this rank's fragment; rank 0 commits the step (manifest last, `commit_step`),
  other ranks wait (bounded) until it is committed; then local retention and the hand-off to remote.
- remote (1): copies a committed local step's already-encoded files (data, then manifest) with bounded
  retries; one checkpoint runs and at most one waits: a newer one is skipped (policy "skip") or replaces
  the waiting one (policy "coalesce").

Admission (on the training thread, `submit`): a snapshot still running is waited for first (no
optimizer step came since, so this is the same wait as the pre-hook's); then a save is skipped rather
than blocking training when `max_in_flight` checkpoints have not reached the first level yet or when
earlier checkpoints hold pool slabs and the pool lacks room for this state. Host data cannot wait for
later, so at this level "coalesce" behaves as "skip".
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from kedge.ckpt import faults
from kedge.ckpt.engine import remote as remote_level
from kedge.ckpt.engine.guard import SnapshotGuard, wait_snapshot
from kedge.ckpt.engine.job import FAILED, LEVELS, REACHED, SKIPPED, CheckpointJob, new_job
from kedge.ckpt.engine.metrics import CheckpointMetrics
from kedge.ckpt.engine.pool import HostPool
from kedge.ckpt.engine.retry import RetryPolicy
from kedge.ckpt.engine.snapshot import (
    FilledSlab,
    SlabPacker,
    iter_written_shards,
    piece_chunks,
    record_blocking_event,
)

_log = logging.getLogger(__name__)

POLICIES = ("skip", "coalesce")
_ERRORS_KEPT = 16
_POLL_MIN_S = 0.02
_POLL_MAX_S = 0.5


_DEFAULT_CHUNK_BYTES = 8 << 20


@dataclass(kw_only=True, slots=True)
class EngineConfig:
    """Settings of the asynchronous engine (defaults are the Checkpointer's)."""

    rank: int = 0
    """This process's rank in the job that saves."""
    world_size: int = 1
    """Ranks that save each checkpoint (rank 0 commits)."""
    host_cache_bytes: int = 4 << 30
    """Size of the host buffer pool (pinned when CUDA is available)."""
    slab_bytes: int = 64 << 20
    """Size of one pool slab = the largest chunk; rounded up to a power of two."""
    chunk_bytes: int | None = None
    """Largest chunk written (None: 8 MiB, at most a slab). A writer thread holds one encoded chunk at
    a time, so the engine's memory beyond the pool is about writer_threads x this; the snapshot still
    copies slab-sized pieces (few, large device copies)."""
    codec: str = "zstd"
    """Codec of the data chunks (see kedge.ckpt.codec)."""
    writer_threads: int = 2
    """Threads that encode and write slabs to the first level."""
    max_in_flight: int = 2
    """Checkpoints at most between save() and their first level's commit."""
    policy: str = "skip"
    """What a level does with a save it cannot absorb now: "skip" it or "coalesce" (keep the newest)."""
    keep_local: int = 2
    """Committed checkpoints kept on the local level."""
    keep_remote: int | None = None
    """Committed checkpoints kept on the remote level (None: all)."""
    remote_every_steps: int = 1
    """Only steps divisible by this go to the remote level."""
    commit_timeout_s: float = 300.0
    """How long a commit waits for every rank's fragment (or a rank for rank 0's manifest)."""
    snapshot_timeout_s: float = 600.0
    """Longest wait of the optimizer pre-hook for a snapshot; past it the checkpoint is abandoned."""
    remote_retry: RetryPolicy = field(default_factory=RetryPolicy)
    """Retries and backoff of remote-level operations."""
    close_timeout_s: float = 60.0
    """How long close() drains in-flight checkpoints before aborting them."""
    pin_memory: bool | None = None
    """Pin the pool (None: when CUDA is available)."""


@dataclass(slots=True)
class _SlabDone:
    job: CheckpointJob


class Engine:
    """Runs checkpoints through host -> local -> remote; `submit` is the only training-thread call."""

    def __init__(self, config: EngineConfig, *, local: Any | None, remote: Any | None) -> None:
        if config.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {config.policy!r}")
        if local is None and remote is None:
            raise ValueError("a checkpointer needs a local or a remote level")
        import torch

        self.config = config
        self.metrics = CheckpointMetrics()
        self._local, self._remote = local, remote
        self._first_level = "local" if local is not None else "remote"
        self._cuda = torch.cuda.is_available()
        pin = self._cuda if config.pin_memory is None else config.pin_memory
        self.pool = HostPool(capacity_bytes=config.host_cache_bytes, slab_bytes=config.slab_bytes, pin=pin)
        self._stop = threading.Event()
        self._closed = False
        self._lock = threading.Lock()
        self._errors: deque[tuple[CheckpointJob, str]] = deque(maxlen=_ERRORS_KEPT)
        self._in_flight: list[CheckpointJob] = []
        self._all_jobs: deque[CheckpointJob] = deque(maxlen=64)
        self._local_steps: list[int] = []
        self._side_streams: dict[int, Any] = {}
        self.guard = SnapshotGuard(
            wait_timeout_s=config.snapshot_timeout_s, on_wait=lambda s: self.metrics.add("prehook_wait_s", s)
        )
        self._snapshot_q: queue.Queue[CheckpointJob | None] = queue.Queue(maxsize=config.max_in_flight + 1)
        self._slab_q: queue.Queue[tuple[CheckpointJob, FilledSlab] | None] = queue.Queue(
            maxsize=self.pool.slab_count + config.writer_threads + 1
        )
        # Not sized: admission bounds it (at most max_in_flight jobs are between save and commit), and a
        # put here must never block a writer that the committer no longer drains after close().
        self._commit_q: queue.Queue[CheckpointJob | None] = queue.Queue()
        self._remote_queue = remote_level.RemoteQueue(policy=config.policy)
        self._threads = [
            threading.Thread(target=self._snapshot_loop, name="kedge-ckpt-snapshot", daemon=True)
        ]
        self._threads += [
            threading.Thread(target=self._writer_loop, name=f"kedge-ckpt-writer-{i}", daemon=True)
            for i in range(max(1, config.writer_threads))
        ]
        self._threads.append(
            threading.Thread(target=self._commit_loop, name="kedge-ckpt-commit", daemon=True)
        )
        if local is not None and remote is not None:
            self._threads.append(
                threading.Thread(target=self._remote_loop, name="kedge-ckpt-remote", daemon=True)
            )
        for thread in self._threads:
            thread.start()

    # ---- training thread -------------------------------------------------------------------------

    def submit(
        self, step: int, shards: list[Any], values: dict[str, Any], optimizers: list[Any]
    ) -> CheckpointJob:
        """Admits (or skips) one checkpoint and enqueues its snapshot; never blocks on data."""
        if self._closed:
            from kedge.ckpt.errors import CkptError

            raise CkptError("Checkpointer is closed")
        job = new_job(
            step, shards, values, has_local=self._local is not None, has_remote=self._remote is not None
        )
        written = list(iter_written_shards(shards))
        job.shards = written
        job.state_bytes = sum(s.tensor.numel() * s.tensor.element_size() for s in written)
        self.guard.watch(optimizers)
        # A snapshot still running means no optimizer step came since that save, so the state has not
        # changed: wait for it here, exactly as the pre-hook would (this is the snapshot wait, bounded).
        self.guard.wait_all(self.config.snapshot_timeout_s)
        with self._lock:
            reason = self._admission_refusal(job)
            if reason:
                self._skip(job, reason)
                return job
            self._record_compute_event(job)
            self._in_flight.append(job)
            self._all_jobs.append(job)
        self.guard.add(job)
        self._snapshot_q.put_nowait(job)  # cannot be full: admission bounds the jobs in flight
        self.metrics.add("saves")
        return job

    def _admission_refusal(self, job: CheckpointJob) -> str:
        self._in_flight = [
            j for j in self._in_flight if j.is_pending(self._first_level) or j.is_pending("host")
        ]
        if len(self._in_flight) >= self.config.max_in_flight:
            return f"{len(self._in_flight)} checkpoints in flight (max_in_flight={self.config.max_in_flight})"
        if any(not j.issued.is_set() for j in self._in_flight):
            return "the previous snapshot is still running"
        room_bytes = self.pool.free_bytes() - self.pool.slab_bytes  # one slab of packing slack
        if self._in_flight and room_bytes < job.state_bytes:
            return f"host pool busy (free~{max(room_bytes, 0)} bytes < state {job.state_bytes} bytes)"
        return ""

    def _skip(self, job: CheckpointJob, reason: str) -> None:
        job.settle_pending(SKIPPED, reason=reason)
        self.metrics.add("skipped_host")
        _log.warning("event=ckpt_skipped step=%d level=host reason=%r", job.step, reason)

    def _record_compute_event(self, job: CheckpointJob) -> None:
        device = next((s.tensor.device for s in job.shards if s.tensor.is_cuda), None)
        if device is None:
            return
        import torch

        # Timing enabled: the benchmark reads the copy time on the device, without any sync here.
        job.compute_event = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        job.compute_event.record(torch.cuda.current_stream(device))
        if device.index not in self._side_streams:
            self._side_streams[device.index] = torch.cuda.Stream(device=device)  # type: ignore[no-untyped-call]

    def wait_host(self, job: CheckpointJob, timeout_s: float | None) -> None:
        wait_snapshot(job, timeout_s)
        if job.copy_done_event is not None:
            job.wait_terminal("host", timeout_s)

    def raise_pending_errors(self) -> None:
        """Raises CheckpointFailed for background failures not reported yet (then forgets them)."""
        from kedge.ckpt.errors import CheckpointFailed

        with self._lock:
            errors = [message for _job, message in self._errors]
            self._errors.clear()
        if errors:
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise CheckpointFailed(errors[0] + more)

    def acknowledge(self, job: CheckpointJob) -> None:
        """The caller has seen job's failure (its handle raised it): not raised again later."""
        with self._lock:
            kept = [(j, message) for j, message in self._errors if j is not job]
            self._errors.clear()
            self._errors.extend(kept)

    def jobs(self) -> list[CheckpointJob]:
        with self._lock:
            return list(self._all_jobs)

    # ---- snapshot thread -------------------------------------------------------------------------

    def _snapshot_loop(self) -> None:
        while (job := self._snapshot_q.get()) is not None:
            self._take_snapshot(job)

    def _take_snapshot(self, job: CheckpointJob) -> None:
        side = None
        if job.compute_event is not None:
            side = next(iter(self._side_streams.values()))  # one device per rank
        packer = SlabPacker(
            self.pool,
            lambda filled: self._emit(job, filled),
            side_stream=side,
            acquire_timeout_s=self.config.snapshot_timeout_s,
            stop=self._stop,
        )
        try:
            faults.maybe("ckpt.snapshot_start")
            job.writer = self._open_writer(job)
            self._copy_shards(job, packer, side)
            job.issued.set()
            if job.copy_done_event is not None:
                job.copy_done_event.synchronize()  # a background thread waits, never the training one
                job.snapshot_device_s = job.compute_event.elapsed_time(job.copy_done_event) / 1e3
            job.settle("host", REACHED)
            self.metrics.add("snapshot_bytes", packer.copied_bytes)
        except Exception as exc:
            abandoned = packer.abandon()
            if abandoned is not None:
                self.pool.release(abandoned)
            self._fail(job, "host", exc)
        finally:
            self._slab_done(job, enqueued_all=True)

    def _copy_shards(self, job: CheckpointJob, packer: SlabPacker, side: Any) -> None:
        stream_ctx: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if side is not None:
            import torch

            stream_ctx = torch.cuda.stream(side)
            side.wait_event(job.compute_event)
        with stream_ctx:
            for shard in job.shards:
                if not job.is_pending("host") or not job.is_pending(self._first_level):
                    raise RuntimeError("snapshot abandoned")
                packer.add_shard(shard)
            packer.flush()
            if side is not None:
                job.copy_done_event = record_blocking_event(side, timing=True)

    def _open_writer(self, job: CheckpointJob) -> Any:
        from kedge.ckpt.writer import RankWriter

        return RankWriter(self._first_storage(), job.step, self.config.rank, self.config.codec)

    def _first_storage(self) -> Any:
        """The level written from host memory: local, or remote when there is no local level."""
        return self._local if self._local is not None else self._remote

    def _emit(self, job: CheckpointJob, filled: FilledSlab) -> None:
        with job.cond:
            job.slabs_outstanding += 1
        self._slab_q.put((job, filled))

    # ---- writer threads --------------------------------------------------------------------------

    def _writer_loop(self) -> None:
        while (item := self._slab_q.get()) is not None:
            job, filled = item
            try:
                self._write_slab(job, filled)
            except Exception as exc:
                self._fail(job, self._first_level, exc)
            finally:
                self.pool.release(filled.slab)
                self._slab_done(job, enqueued_all=False)

    def _write_slab(self, job: CheckpointJob, filled: FilledSlab) -> None:
        if filled.ready is not None:
            filled.ready.synchronize()
        if not job.is_pending(self._first_level) or self._stop.is_set():
            return  # failed or aborted: the slab is only released
        faults.maybe("ckpt.write_slab")
        chunk_bytes = min(self.config.chunk_bytes or _DEFAULT_CHUNK_BYTES, self.pool.slab_bytes)
        for piece in filled.pieces:
            for offsets, sizes, data in piece_chunks(piece, filled.view(piece), chunk_bytes):
                record = job.writer.add_chunk(
                    piece.name, piece.dtype, piece.global_shape, offsets, sizes, data
                )
                with job.cond:
                    job.files.add(record.file)
                    job.encoded_bytes += record.byte_length

    def _slab_done(self, job: CheckpointJob, *, enqueued_all: bool) -> None:
        with job.cond:
            if enqueued_all:
                job.all_slabs_enqueued = True
            else:
                job.slabs_outstanding -= 1
            ready = job.all_slabs_enqueued and job.slabs_outstanding == 0
        if ready:
            self._commit_q.put(job)

    # ---- committer thread ------------------------------------------------------------------------

    def _commit_loop(self) -> None:
        while (job := self._commit_q.get()) is not None:
            level = self._first_level
            if not job.is_pending(level) or job.status("host") != REACHED:
                continue  # failed earlier; its uncommitted step directory is debris for retention
            try:
                self._commit_first_level(job, level)
            except Exception as exc:
                self._fail(job, level, exc)
                continue
            self._after_commit(job, level)

    def _commit_first_level(self, job: CheckpointJob, level: str) -> None:
        storage = self._first_storage()
        faults.maybe("ckpt.engine.before_finish")
        job.writer.finish(job.values)
        if self._stop.is_set():
            raise RuntimeError("checkpointer closed before commit")
        if self.config.rank == 0:
            from kedge.ckpt.writer import commit_step

            commit_step(storage, job.step, self.config.world_size, timeout_s=self.config.commit_timeout_s)
        else:
            self._wait_committed(storage, job.step)
        self.metrics.add(f"committed_{level}")
        self.metrics.add("encoded_bytes", job.encoded_bytes)
        _log.info(
            "event=ckpt_commit step=%d level=%s rank=%d bytes=%d encoded_bytes=%d seconds=%.3f",
            job.step,
            level,
            self.config.rank,
            job.state_bytes,
            job.encoded_bytes,
            time.monotonic() - job.created_monotonic_s,
        )

    def _wait_committed(self, storage: Any, step: int) -> None:
        deadline = time.monotonic() + self.config.commit_timeout_s
        poll_s = _POLL_MIN_S
        while step not in storage.committed_steps():
            if time.monotonic() >= deadline or self._stop.is_set():
                raise TimeoutError(
                    f"step {step} not committed by rank 0 within {self.config.commit_timeout_s}s"
                )
            self._stop.wait(poll_s)
            poll_s = min(poll_s * 2, _POLL_MAX_S)

    def _after_commit(self, job: CheckpointJob, level: str) -> None:
        """Retention first, so that a caller woken by the commit sees the level already trimmed."""
        if level == "local":
            self._local_steps.append(job.step)
            self._retain_local()
        else:
            self._retain_remote()
        job.settle(level, REACHED)
        if level == "local" and self._remote is not None:
            self._remote_queue.offer(job, self.config.remote_every_steps, self._on_remote_skip)

    def _retain_local(self) -> None:
        busy = self._remote_queue.busy_steps()
        while len(self._local_steps) > max(1, self.config.keep_local):
            old = self._local_steps[0]
            if old in busy:
                return  # its remote copy still reads it; retried after the next commit
            self._local_steps.pop(0)
            remote_level.remove_step(self._local, old)
            _log.info("event=ckpt_retention level=local removed_step=%d", old)

    def _retain_remote(self) -> None:
        if self.config.rank == 0 and self.config.keep_remote is not None:
            remote_level.retain(self._remote, self.config.keep_remote)

    # ---- remote thread ---------------------------------------------------------------------------

    def _on_remote_skip(self, job: CheckpointJob, reason: str) -> None:
        if job.settle("remote", SKIPPED, reason=reason) and "not a remote step" not in reason:
            self.metrics.add("skipped_remote")
            _log.warning("event=ckpt_skipped step=%d level=remote reason=%r", job.step, reason)

    def _remote_loop(self) -> None:
        while (job := self._remote_queue.take(self._stop)) is not None:
            try:
                remote_level.copy_step(
                    self._local,
                    self._remote,
                    job,
                    rank=self.config.rank,
                    policy=self.config.remote_retry,
                    stop=self._stop,
                    timeout_s=self.config.commit_timeout_s,
                    on_retry=lambda _exc: self.metrics.add("retries_remote"),
                )
                self.metrics.add("committed_remote")
                _log.info("event=ckpt_commit step=%d level=remote rank=%d", job.step, self.config.rank)
                self._retain_remote()
                job.settle("remote", REACHED)
            except Exception as exc:
                self._fail(job, "remote", exc)
            finally:
                self._remote_queue.done(job)

    # ---- failures, waiting, close ----------------------------------------------------------------

    def _fail(self, job: CheckpointJob, level: str, exc: BaseException) -> None:
        """Fails level and every later one; the first level that changes is reported once."""
        reason = f"{type(exc).__name__}: {exc}"
        changed = [
            name
            for name in LEVELS[LEVELS.index(level) :]
            if job.settle(name, FAILED, error=exc, reason=reason if name == level else f"{level} failed")
        ]
        if not changed:
            return
        self.metrics.add(f"failed_{changed[0]}")
        with self._lock:
            self._errors.append((job, f"checkpoint step={job.step} failed at level={changed[0]}: {reason}"))
        _log.error("event=ckpt_failed step=%d level=%s error=%r", job.step, changed[0], reason)

    def wait(self, level: str, timeout_s: float | None) -> None:
        """Waits until every checkpoint admitted so far has settled level (bounded by timeout_s)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for job in self.jobs():
            remaining_s = None if deadline is None else max(0.0, deadline - time.monotonic())
            job.wait_terminal(level, remaining_s)

    def close(self, *, drain: bool = True, timeout_s: float | None = None) -> None:
        """Drains (or aborts) in-flight checkpoints, stops every thread; bounded by timeout_s."""
        if self._closed:
            return
        self._closed = True
        bound_s = self.config.close_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + bound_s
        if drain:
            for level in LEVELS:
                with contextlib.suppress(TimeoutError):
                    self.wait(level, max(0.0, deadline - time.monotonic()))
        self._stop.set()
        for job in self.jobs():
            job.settle_pending(FAILED, reason="checkpointer closed before completion")
        self.pool.close()
        self._remote_queue.close()
        for q, count in (
            (self._snapshot_q, 1),
            (self._slab_q, self.config.writer_threads),
            (self._commit_q, 1),
        ):
            for _ in range(max(1, count)):
                _put_until(q, None, deadline)
        for thread in self._threads:
            thread.join(max(0.1, deadline - time.monotonic()))
        self.guard.remove_hooks()
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            _log.error("event=ckpt_close_threads_alive threads=%s", ",".join(alive))

    def pending_levels(self) -> dict[int, dict[str, str]]:
        """Status per level of every recent checkpoint (for logs and tests)."""
        return {job.step: {level: job.status(level) for level in LEVELS} for job in self.jobs()}


def _put_until(q: queue.Queue[Any], item: Any, deadline: float) -> None:
    while True:
        try:
            q.put(item, timeout=0.05)
            return
        except queue.Full:
            if time.monotonic() >= deadline:
                _drain_one(q)


def _drain_one(q: queue.Queue[Any]) -> None:
    with contextlib.suppress(queue.Empty):
        q.get_nowait()
