"""The remote level: copy a committed local step's encoded files to any fsspec URL, and its queue.

The copy never re-encodes: every rank copies the data files it wrote (streamed in bounded blocks), then
rank 0 waits (bounded) until every file the manifest names exists on the remote with its full size,
and copies the manifest last. So the remote commit is the same protocol as the local one: data first,
manifest last, and a step without its manifest is never listed as loadable.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kedge.ckpt import faults
from kedge.ckpt.engine.job import CheckpointJob
from kedge.ckpt.engine.retry import RetryPolicy, with_retries

_log = logging.getLogger(__name__)

COPY_BLOCK_BYTES = 16 << 20
_POLL_MIN_S = 0.05
_POLL_MAX_S = 1.0


class RemoteQueue:
    """One checkpoint copying and at most one waiting; `policy` decides who waits when full."""

    def __init__(self, *, policy: str) -> None:
        self._policy = policy
        self._cond = threading.Condition()
        self._waiting: CheckpointJob | None = None
        self._running: CheckpointJob | None = None
        self._closed = False

    def offer(
        self, job: CheckpointJob, every_steps: int, on_skip: Callable[[CheckpointJob, str], None]
    ) -> None:
        if job.step % max(1, every_steps) != 0:
            on_skip(job, f"not a remote step (remote_every_steps={every_steps})")
            return
        with self._cond:
            if self._closed:
                on_skip(job, "checkpointer closing")
                return
            previous = self._waiting
            if previous is not None and self._policy == "skip":
                on_skip(job, f"remote level busy with step {previous.step}")
                return
            self._waiting = job
            self._cond.notify_all()
        if previous is not None:
            on_skip(previous, f"coalesced into step {job.step}")

    def take(self, stop: threading.Event) -> CheckpointJob | None:
        with self._cond:
            while self._waiting is None:
                if self._closed or stop.is_set():
                    return None
                self._cond.wait(0.1)
            job, self._waiting = self._waiting, None
            self._running = job
            return job

    def done(self, job: CheckpointJob) -> None:
        with self._cond:
            self._running = None

    def busy_steps(self) -> set[int]:
        """Steps whose local files the remote level still needs."""
        with self._cond:
            return {j.step for j in (self._waiting, self._running) if j is not None}

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


def copy_step(
    local: Any,
    remote: Any,
    job: CheckpointJob,
    *,
    rank: int,
    policy: RetryPolicy,
    stop: threading.Event,
    timeout_s: float,
    on_retry: Callable[[BaseException], None],
) -> None:
    """Copies this rank's files of job's committed local step; rank 0 then commits on the remote."""
    step_dir = local.step_dir(job.step)
    for name in sorted(job.files):
        relpath = f"{step_dir}/{name}"

        def copy_one(relpath: str = relpath) -> None:
            _copy_file(local, remote, relpath, stop)

        with_retries(copy_one, policy=policy, what=f"copy {relpath}", stop=stop, on_retry=on_retry)
    if rank != 0:
        return
    from kedge.ckpt.reader import open_manifest

    manifest = open_manifest(local, job.step)
    _wait_files(remote, step_dir, _expected_sizes(manifest), timeout_s, stop)
    faults.maybe("ckpt.remote.before_manifest")
    manifest_rel = f"{step_dir}/{manifest_name()}"
    with_retries(
        lambda: remote.write_bytes(manifest_rel, local.read_bytes(manifest_rel)),
        policy=policy,
        what=f"commit {manifest_rel}",
        stop=stop,
        on_retry=on_retry,
    )


def manifest_name() -> str:
    from kedge.ckpt import storage

    return str(storage.MANIFEST_NAME)


def _copy_file(local: Any, remote: Any, relpath: str, stop: threading.Event) -> None:
    size = local.size(relpath)
    with remote.open_write(relpath) as out:
        for offset in range(0, size, COPY_BLOCK_BYTES):
            if stop.is_set():
                raise RuntimeError("checkpointer closed during remote copy")
            faults.maybe("ckpt.remote.copy_block")
            out.write(local.read_range(relpath, offset, min(COPY_BLOCK_BYTES, size - offset)))


def _expected_sizes(manifest: Any) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for record in manifest.tensors.values():
        for chunk in record.chunks:
            sizes[chunk.file] = max(sizes.get(chunk.file, 0), chunk.byte_offset + chunk.byte_length)
    return sizes


def _wait_files(
    remote: Any, step_dir: str, sizes: dict[str, int], timeout_s: float, stop: threading.Event
) -> None:
    deadline = time.monotonic() + timeout_s
    poll_s = _POLL_MIN_S
    missing = dict(sizes)
    while missing:
        missing = {name: n for name, n in missing.items() if not _has_size(remote, f"{step_dir}/{name}", n)}
        if not missing:
            return
        if time.monotonic() >= deadline or stop.is_set():
            raise TimeoutError(
                f"remote files of {step_dir} incomplete after {timeout_s}s: {sorted(missing)[:4]}"
            )
        stop.wait(poll_s)
        poll_s = min(poll_s * 2, _POLL_MAX_S)


def _has_size(remote: Any, relpath: str, size: int) -> bool:
    try:
        return bool(remote.exists(relpath)) and int(remote.size(relpath)) >= size
    except FileNotFoundError:
        return False


def remove_step(storage: Any, step: int) -> None:
    """Removes one step directory, manifest first so that it never looks committed while half
    removed; a missing one is fine (another rank may have removed it)."""
    try:
        storage.remove(f"{storage.step_dir(step)}/{manifest_name()}")
        storage.remove_tree(storage.step_dir(step))
    except FileNotFoundError:
        pass
    except Exception as exc:  # retention must never fail a checkpoint
        _log.warning("event=ckpt_retention_failed step=%d error=%r", step, exc)


def retain(storage: Any, keep: int) -> None:
    """Keeps the newest `keep` committed steps of a level, removing older ones."""
    try:
        steps = sorted(storage.committed_steps())
    except Exception as exc:
        _log.warning("event=ckpt_retention_failed error=%r", exc)
        return
    for old in steps[: max(0, len(steps) - max(1, keep))]:
        remove_step(storage, old)
        _log.info("event=ckpt_retention level=remote removed_step=%d", old)
