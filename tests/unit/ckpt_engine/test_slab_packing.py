"""Slab packing: shards are cut to fill each slab, so a state needs about its own size in slabs."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest
import torch
from kedge.ckpt.engine.pool import HostPool
from kedge.ckpt.engine.snapshot import FilledSlab, SlabPacker, split_to_fit

pytestmark = pytest.mark.timeout(60)

MIB = 1 << 20


@dataclass
class Shard:
    name: str
    tensor: torch.Tensor
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    global_shape: tuple[int, ...]
    dtype: str = "float32"


def test_split_to_fit_cuts_leading_rows_only() -> None:
    head, rest = split_to_fit((0, 0), (10, 4), 4, 3 * 16)
    assert head == ((0, 0), (3, 4))
    assert rest == ((3, 0), (7, 4))
    assert split_to_fit((0, 0), (10, 4), 4, 1000) == (((0, 0), (10, 4)), None)  # fits whole
    assert split_to_fit((0, 0), (10, 4), 4, 8) == (((0, 0), (10, 4)), None)  # not one row: fresh slab
    assert split_to_fit((5,), (100,), 2, 20) == (((5,), (10,)), ((15,), (90,)))


def test_odd_sized_shards_fill_slabs_and_keep_their_bytes() -> None:
    # Six 5 MiB tensors in 8 MiB slabs: uncut they need six slabs, cut they need four (30 / 8).
    pool = HostPool(capacity_bytes=8 * 8 * MIB, slab_bytes=8 * MIB, pin=False)
    filled: list[FilledSlab] = []
    shards = [Shard(f"w{i}", torch.randn(1280, 1024), (0, 0), (1280, 1024), (1280, 1024)) for i in range(6)]
    try:
        packer = SlabPacker(
            pool, filled.append, side_stream=None, acquire_timeout_s=10, stop=threading.Event()
        )
        for shard in shards:
            packer.add_shard(shard)
        packer.flush()
        assert len(filled) == 4
        assert packer.copied_bytes == 6 * 5 * MIB
        by_name = {s.name: s for s in shards}
        covered = {s.name: 0 for s in shards}
        for slab in filled:
            for piece in slab.pieces:
                source = by_name[piece.name].tensor
                rows = slice(piece.offsets[0], piece.offsets[0] + piece.sizes[0])
                expected = source[rows].contiguous().view(torch.uint8).flatten()
                got = torch.frombuffer(bytearray(slab.view(piece)), dtype=torch.uint8)
                assert torch.equal(got, expected)
                covered[piece.name] += piece.sizes[0]
        assert covered == {s.name: 1280 for s in shards}
    finally:
        for slab in filled:
            pool.release(slab.slab)
        pool.close()
