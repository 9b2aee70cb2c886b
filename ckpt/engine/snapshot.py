"""The snapshot: copy this rank's shards into host slabs, off the training thread.

CUDA: the copies run on a side stream that first waits on an event recorded on the compute stream at
`save()`, with `non_blocking=True` into pinned slabs; each filled slab carries an event the writer
waits on from its own thread. CPU: the same copies run synchronously on the snapshot thread; torch
releases the GIL inside `copy_`, so training keeps running. Nothing here syncs the device on the
training thread.

Pieces are packed into a slab back to back (64-byte aligned); a shard bigger than a slab is split
into sub-boxes along its leading dimensions (`split_box`) and streams through several slabs.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from kedge.ckpt import faults
from kedge.ckpt.engine.pool import HostPool, Slab, align_up


@dataclass(frozen=True, slots=True)
class Piece:
    """One chunk of one shard, placed in a slab at slab_offset."""

    name: str
    dtype: str
    global_shape: tuple[int, ...]
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    slab_offset: int
    nbytes: int


@dataclass(slots=True)
class FilledSlab:
    """A slab whose copies have been issued; `ready` (a CUDA event) completes them, None on CPU."""

    slab: Slab
    pieces: list[Piece] = field(default_factory=list)
    used_bytes: int = 0
    ready: Any = None

    def view(self, piece: Piece) -> memoryview:
        """The piece's bytes in host memory, without a copy (numpy is not needed)."""
        address = self.slab.buffer.data_ptr() + piece.slab_offset
        return memoryview((ctypes.c_char * piece.nbytes).from_address(address)).cast("B")


def shard_boxes(shard: Any, max_bytes: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Sub-boxes (global offsets, sizes) of a shard, each at most max_bytes."""
    from kedge.ckpt.state import split_box

    itemsize = shard.tensor.element_size()
    nbytes = shard.tensor.numel() * itemsize
    if nbytes <= max_bytes:
        return [(tuple(shard.offsets), tuple(shard.sizes))]
    return [(tuple(o), tuple(s)) for o, s in split_box(shard.offsets, shard.sizes, itemsize, max_bytes)]


def _source_view(shard: Any, offsets: tuple[int, ...], sizes: tuple[int, ...]) -> Any:
    index = tuple(
        slice(o - base, o - base + s) for o, base, s in zip(offsets, shard.offsets, sizes, strict=True)
    )
    return shard.tensor[index] if index else shard.tensor


class SlabPacker:
    """Fills slabs from the pool with pieces and hands each full slab to `emit`."""

    def __init__(
        self,
        pool: HostPool,
        emit: Callable[[FilledSlab], None],
        *,
        side_stream: Any,
        acquire_timeout_s: float,
        stop: threading.Event,
        chunk_bytes: int | None = None,
    ) -> None:
        self._pool = pool
        # A chunk (one piece, one record in the manifest) is at most a slab; slabs pack many chunks.
        self._chunk_bytes = min(chunk_bytes or pool.slab_bytes, pool.slab_bytes)
        self._emit = emit
        self._side_stream = side_stream
        self._acquire_timeout_s = acquire_timeout_s
        self._stop = stop
        self._current: FilledSlab | None = None
        self.copied_bytes = 0

    def add_shard(self, shard: Any) -> None:
        for offsets, sizes in shard_boxes(shard, self._chunk_bytes):
            self._add_piece(shard, offsets, sizes)

    def _add_piece(self, shard: Any, offsets: tuple[int, ...], sizes: tuple[int, ...]) -> None:
        source = _source_view(shard, offsets, sizes)
        nbytes = source.numel() * source.element_size()
        current = self._slab_with_room(nbytes)
        start = align_up(current.used_bytes)
        dest = current.slab.buffer[start : start + nbytes].view(source.dtype).view(source.shape)
        # CPU-resident state (e.g. AdamW's `step` scalars) is copied here and now; only device
        # tensors go through the side stream.
        on_stream = self._side_stream is not None and source.is_cuda
        if on_stream:
            # The caching allocator must not reuse the source's memory before the side stream read it.
            source.record_stream(self._side_stream)
        dest.copy_(source, non_blocking=on_stream)
        current.pieces.append(
            Piece(shard.name, shard.dtype, tuple(shard.global_shape), offsets, sizes, start, nbytes)
        )
        current.used_bytes = start + nbytes
        self.copied_bytes += nbytes
        faults.maybe("ckpt.snapshot_piece")

    def _slab_with_room(self, nbytes: int) -> FilledSlab:
        current = self._current
        if current is not None and align_up(current.used_bytes) + nbytes <= self._pool.slab_bytes:
            return current
        self.flush()
        slab = self._pool.acquire(timeout_s=self._acquire_timeout_s, stop=self._stop)
        self._current = FilledSlab(slab)
        return self._current

    def flush(self) -> None:
        """Emits the slab being filled (with its completion event on CUDA)."""
        current, self._current = self._current, None
        if current is None:
            return
        if self._side_stream is not None:
            current.ready = record_blocking_event(self._side_stream)
        self._emit(current)

    def abandon(self) -> Slab | None:
        """Drops the slab being filled (after an error) and returns it for release."""
        current, self._current = self._current, None
        return None if current is None else current.slab


def iter_written_shards(shards: list[Any]) -> Iterator[Any]:
    """The shards this rank writes (replicated ones are written by one rank only)."""
    return (shard for shard in shards if shard.write)


def record_blocking_event(stream: Any, *, timing: bool = False) -> Any:
    """An event recorded on stream whose synchronize() sleeps instead of spinning a CPU core (the
    writer threads wait on these)."""
    import torch

    event = torch.cuda.Event(blocking=True, enable_timing=timing)  # type: ignore[no-untyped-call]
    event.record(stream)
    return event
