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
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from kedge.ckpt import faults
from kedge.ckpt.engine.pool import HostPool, Slab, align_up

_MIN_CUT_BYTES = 1 << 20  # a slab with less room left is closed rather than filled with a sliver


@dataclass(frozen=True, slots=True)
class Piece:
    """One box of one shard copied into a slab at slab_offset (written as one or more chunks)."""

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
    ) -> None:
        self._pool = pool
        # A piece (one device copy) is at most a slab; writers cut pieces into smaller chunks.
        self._piece_bytes = pool.slab_bytes
        self._emit = emit
        self._side_stream = side_stream
        self._acquire_timeout_s = acquire_timeout_s
        self._stop = stop
        self._current: FilledSlab | None = None
        self.copied_bytes = 0

    def add_shard(self, shard: Any) -> None:
        itemsize = shard.tensor.element_size()
        for offsets, sizes in shard_boxes(shard, self._piece_bytes):
            box: tuple[tuple[int, ...], tuple[int, ...]] | None = (offsets, sizes)
            while box is not None:
                # A box that does not fit the room left in the slab is cut along its leading dimension
                # to fill it: without the cut, 38 MB weights pack one per 64 MiB slab and the state
                # needs ~1.7x its size in slabs, so the snapshot waits on the disk for free slabs.
                head, box = split_to_fit(*box, itemsize, self._room())
                self._add_piece(shard, *head)

    def _room(self) -> int:
        """Bytes left in the slab being filled; 0 when none is being filled or the room is less than
        the smallest cut worth making."""
        current = self._current
        room = 0 if current is None else self._pool.slab_bytes - align_up(current.used_bytes)
        return room if room >= _MIN_CUT_BYTES else 0

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


def split_to_fit(
    offsets: tuple[int, ...], sizes: tuple[int, ...], itemsize: int, room_bytes: int
) -> tuple[tuple[tuple[int, ...], tuple[int, ...]], tuple[tuple[int, ...], tuple[int, ...]] | None]:
    """(head, rest): head is the largest leading-rows prefix of the box within room_bytes, rest the
    remaining rows (None when the whole box fits, or when not even one row fits: then the head is
    the whole box and goes to a fresh slab)."""
    box = (offsets, sizes)
    if not sizes or room_bytes <= 0:
        return box, None
    row_bytes = math.prod(sizes[1:]) * itemsize
    rows = room_bytes // row_bytes if row_bytes else sizes[0]
    if rows >= sizes[0] or rows < 1:
        return box, None
    head = (offsets, (rows, *sizes[1:]))
    rest = ((offsets[0] + rows, *offsets[1:]), (sizes[0] - rows, *sizes[1:]))
    return head, rest


def piece_chunks(
    piece: Piece, data: memoryview, chunk_bytes: int
) -> Iterator[tuple[tuple[int, ...], tuple[int, ...], memoryview]]:
    """The piece as chunks of at most chunk_bytes: (offsets, sizes, bytes) in memory order (leading-
    dimension cuts of a row-major box are consecutive byte ranges of it)."""
    from kedge.ckpt.manifest import DTYPE_ITEMSIZE
    from kedge.ckpt.planner import split_box

    itemsize = DTYPE_ITEMSIZE[piece.dtype]
    start = 0
    for offsets, sizes in split_box(piece.offsets, piece.sizes, itemsize, chunk_bytes):
        nbytes = math.prod(sizes) * itemsize
        yield offsets, sizes, data[start : start + nbytes]
        start += nbytes


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
