"""The host buffer pool: slabs allocated (and pinned, when CUDA is available) once, reused forever.

Pinning costs ~0.3-0.75 s/GiB, so it happens once, in a background thread started with the pool;
the snapshot thread waits for it, never the training thread. Each slab is its own power-of-two
allocation because torch's pinned host allocator rounds every request up to a power of two: one
big odd-sized pinned block would waste up to half of it.

The pool is bounded: `acquire` blocks (with a deadline and a stop event) until a slab is free, which
is the backpressure that lets a state larger than the pool stream through it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_log = logging.getLogger(__name__)

_MIN_SLAB_BYTES = 1 << 16
ALIGN_BYTES = 64  # every piece in a slab starts at this alignment, so views of any dtype are legal


class PoolClosed(RuntimeError):
    """The pool was closed (or its allocation failed) while a caller waited for a slab."""


def round_slab_bytes(requested_bytes: int) -> int:
    """The power of two >= requested_bytes (and >= 64 KiB) used as the slab size."""
    size = _MIN_SLAB_BYTES
    while size < requested_bytes:
        size <<= 1
    return size


def align_up(value: int, align: int = ALIGN_BYTES) -> int:
    return (value + align - 1) // align * align


@dataclass(slots=True)
class Slab:
    """One fixed-size host buffer of the pool; `buffer` is a flat uint8 tensor."""

    index: int
    buffer: torch.Tensor


class HostPool:
    """A bounded set of equal host slabs, allocated once (in the background) and reused."""

    def __init__(self, *, capacity_bytes: int, slab_bytes: int, pin: bool) -> None:
        self.slab_bytes = round_slab_bytes(slab_bytes)
        self.slab_count = max(1, capacity_bytes // self.slab_bytes)
        self.capacity_bytes = self.slab_count * self.slab_bytes
        self.pin = pin
        self._cond = threading.Condition()
        self._free: deque[Slab] = deque()
        self._allocated = 0
        self._closed = False
        self._alloc_error: BaseException | None = None
        self._allocator = threading.Thread(target=self._allocate, name="kedge-ckpt-pool-alloc", daemon=True)
        self._allocator.start()

    def _allocate(self) -> None:
        import torch

        started = time.monotonic()
        try:
            for index in range(self.slab_count):
                with self._cond:
                    if self._closed:
                        return
                buffer = torch.empty(self.slab_bytes, dtype=torch.uint8, pin_memory=self.pin)
                with self._cond:
                    self._free.append(Slab(index, buffer))
                    self._allocated += 1
                    self._cond.notify_all()
        except BaseException as exc:  # an allocation failure must reach waiters, not kill silently
            with self._cond:
                self._alloc_error = exc
                self._cond.notify_all()
            _log.error("event=ckpt_pool_alloc_failed error=%r", exc)
            return
        _log.info(
            "event=ckpt_pool_ready slabs=%d slab_bytes=%d pinned=%s alloc_s=%.3f",
            self.slab_count,
            self.slab_bytes,
            self.pin,
            time.monotonic() - started,
        )

    def acquire(self, *, timeout_s: float, stop: threading.Event | None = None) -> Slab:
        """A free slab; waits at most timeout_s (raises TimeoutError) and wakes on stop (PoolClosed)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not self._free:
                self._raise_if_unusable(stop)
                remaining_s = deadline - time.monotonic()
                if remaining_s <= 0:
                    raise TimeoutError(f"no free host slab within {timeout_s:.1f}s")
                # A short wait bound so a set stop event is noticed without a notify.
                self._cond.wait(min(remaining_s, 0.05))
            return self._free.popleft()

    def _raise_if_unusable(self, stop: threading.Event | None) -> None:
        if self._closed or (stop is not None and stop.is_set()):
            raise PoolClosed("host pool closed")
        if self._alloc_error is not None:
            raise PoolClosed(f"host pool allocation failed: {self._alloc_error!r}")

    def release(self, slab: Slab) -> None:
        with self._cond:
            self._free.append(slab)
            self._cond.notify_all()

    def free_bytes(self) -> int:
        """Bytes in free slabs plus slabs not allocated yet (they will be free when allocated)."""
        with self._cond:
            return (len(self._free) + self.slab_count - self._allocated) * self.slab_bytes

    def wait_ready(self, timeout_s: float) -> bool:
        """True once every slab is allocated (for benchmarks that time pinning apart)."""
        self._allocator.join(timeout_s)
        return not self._allocator.is_alive() and self._alloc_error is None

    def close(self, timeout_s: float = 5.0) -> None:
        """Stops allocation and drops the slabs; callers blocked in acquire get PoolClosed."""
        with self._cond:
            self._closed = True
            self._free.clear()
            self._cond.notify_all()
        self._allocator.join(timeout_s)
