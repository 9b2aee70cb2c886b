"""Optimizer step pre-hooks: the one place training waits for a snapshot.

After `optimizer.step()` the state is immutable until the next step, so the snapshot of step s may run
while step s+1 computes forward/backward. kedge enforces the end of that window itself: a pre-hook on
every optimizer found in the state blocks the next `step()` until this rank's snapshot is complete.
On CUDA the hook waits only until the copies are *issued*, then makes the compute stream wait on the
copy event (no host-device sync); on CPU it waits for the copies themselves.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from kedge.ckpt.engine.job import CheckpointJob

_log = logging.getLogger(__name__)


class SnapshotGuard:
    """Holds the in-flight snapshot and the pre-hooks that make optimizers wait for it."""

    def __init__(self, *, wait_timeout_s: float, on_wait: Callable[[float], None] | None = None) -> None:
        self._wait_timeout_s = wait_timeout_s
        self._on_wait = on_wait
        self._lock = threading.Lock()
        self._pending: list[CheckpointJob] = []
        self._hooks: dict[int, Any] = {}
        self._optimizers: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()

    def watch(self, optimizers: list[Any]) -> None:
        """Registers the pre-hook once per optimizer (cheap when already registered)."""
        for optimizer in optimizers:
            key = id(optimizer)
            if self._optimizers.get(key) is optimizer:
                continue
            self._optimizers[key] = optimizer
            self._hooks[key] = optimizer.register_step_pre_hook(self._pre_hook)

    def add(self, job: CheckpointJob) -> None:
        with self._lock:
            self._pending.append(job)

    def _pre_hook(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.wait_all(self._wait_timeout_s)

    def wait_all(self, timeout_s: float | None) -> None:
        """Blocks until every pending snapshot no longer needs the live tensors."""
        with self._lock:
            jobs, self._pending = self._pending, []
        if not jobs:
            return
        started = time.perf_counter()
        for job in jobs:
            wait_snapshot(job, timeout_s)
        if self._on_wait is not None:
            self._on_wait(time.perf_counter() - started)

    def remove_hooks(self) -> None:
        for handle in self._hooks.values():
            handle.remove()
        self._hooks.clear()
        self._optimizers.clear()


def wait_snapshot(job: CheckpointJob, timeout_s: float | None) -> None:
    """Returns once the live tensors may change: copies done (CPU) or ordered before (CUDA)."""
    if not job.issued.wait(timeout_s):
        # Never hang training: past the bound the snapshot is abandoned (the job fails at every level).
        _log.error("event=ckpt_snapshot_wait_timeout step=%d timeout_s=%s", job.step, timeout_s)
        job.settle_pending("failed", reason=f"snapshot not complete within {timeout_s}s")
        return
    if job.copy_done_event is not None:
        import torch

        torch.cuda.current_stream().wait_event(job.copy_done_event)
