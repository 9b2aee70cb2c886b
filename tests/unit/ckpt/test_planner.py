"""Property test of the reshard planner: any chunking on both sides reconstructs exactly."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kedge.ckpt.planner import plan_reads, split_box

pytestmark = pytest.mark.timeout(60)


def _grid_boxes(
    shape: tuple[int, ...], cuts: list[list[int]]
) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Boxes of the grid that cuts each dim at the given points."""
    bounds = [sorted({0, n, *[c for c in cs if 0 < c < n]}) for n, cs in zip(shape, cuts, strict=True)]
    boxes: list[tuple[tuple[int, ...], tuple[int, ...]]] = [((), ())]
    for b in bounds:
        boxes = [((*o, lo), (*s, hi - lo)) for o, s in boxes for lo, hi in itertools.pairwise(b)]
    return boxes


@st.composite
def layouts(draw: st.DrawFn) -> tuple[tuple[int, ...], list[list[list[int]]]]:
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.integers(1, 9)) for _ in range(ndim))
    sides = [[draw(st.lists(st.integers(0, n), max_size=4)) for n in shape] for _ in range(2)]
    return shape, sides


@settings(max_examples=150, deadline=None)
@given(layouts())
def test_any_chunking_reconstructs_exactly(layout: tuple[tuple[int, ...], list[list[list[int]]]]) -> None:
    shape, (stored_cuts, wanted_cuts) = layout
    full = np.arange(math.prod(shape)).reshape(shape)
    stored = _grid_boxes(shape, stored_cuts)
    wanted = _grid_boxes(shape, wanted_cuts)
    outs = [np.full(s, -1) for _, s in wanted]
    filled = [0] * len(wanted)
    for ov in plan_reads(wanted, stored):
        src = full[tuple(slice(o, o + s) for o, s in zip(ov.offsets, ov.sizes, strict=True))]
        w_off = wanted[ov.wanted][0]
        dst = tuple(slice(o - b, o - b + s) for o, s, b in zip(ov.offsets, ov.sizes, w_off, strict=True))
        assert (outs[ov.wanted][dst] == -1).all(), "an element was written twice"
        outs[ov.wanted][dst] = src
        filled[ov.wanted] += math.prod(ov.sizes)
    for (off, sizes), out, n in zip(wanted, outs, filled, strict=True):
        assert n == math.prod(sizes)
        assert (out == full[tuple(slice(o, o + s) for o, s in zip(off, sizes, strict=True))]).all()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 7), min_size=1, max_size=3), st.integers(1, 4), st.integers(1, 200))
def test_split_box_tiles_the_box(sizes: list[int], itemsize: int, max_bytes: int) -> None:
    offsets = tuple(range(len(sizes)))
    pieces = split_box(offsets, tuple(sizes), itemsize, max_bytes)
    seen = np.zeros(sizes, dtype=int)
    for off, sz in pieces:
        assert (
            math.prod(sz) * itemsize <= max(max_bytes, math.prod(sizes[1:]) * 0 + itemsize)
            or math.prod(sz) == 1
        )
        seen[tuple(slice(o - b, o - b + s) for o, s, b in zip(off, sz, offsets, strict=True))] += 1
    assert (seen == 1).all()


def test_zero_dim_tensors() -> None:
    assert [(o.wanted, o.stored) for o in plan_reads([((), ())], [((), ())])] == [(0, 0)]
