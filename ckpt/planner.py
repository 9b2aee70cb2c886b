"""Reshard planning, pure (no torch): which parts of which stored chunks fill which wanted boxes.

A box is (offsets, sizes) in a tensor's global index space. `plan_reads` finds every non-empty
intersection of a wanted box with a stored box by sort-and-sweep on dimension 0: both lists are
sorted by their start, and a stored box stays "active" only while it can still meet a later wanted
box, so the work is O((W + S) log(W + S) + pairs that overlap on dimension 0), not W x S.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Box = tuple[tuple[int, ...], tuple[int, ...]]


@dataclass(frozen=True, slots=True)
class Overlap:
    """Stored box `stored` and wanted box `wanted` share the global box (offsets, sizes)."""

    wanted: int
    stored: int
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]


def intersect(a: Box, b: Box) -> Box | None:
    """The common box of a and b, or None if they do not overlap (empty boxes never overlap)."""
    offsets, sizes = [], []
    for ao, as_, bo, bs in zip(a[0], a[1], b[0], b[1], strict=True):
        lo, hi = max(ao, bo), min(ao + as_, bo + bs)
        if hi <= lo:
            return None
        offsets.append(lo)
        sizes.append(hi - lo)
    if not a[0] and (math.prod(a[1]) == 0 or math.prod(b[1]) == 0):
        return None
    return tuple(offsets), tuple(sizes)


def plan_reads(wanted: Sequence[Box], stored: Sequence[Box]) -> list[Overlap]:
    """Every (wanted, stored) pair that overlaps, with the overlap, ordered by stored index."""
    if not wanted or not stored:
        return []
    if not wanted[0][0]:  # 0-dim tensors: a single element, every box is the whole tensor
        return [Overlap(w, s, (), ()) for s in range(len(stored)) for w in range(len(wanted))]
    w_order = sorted(range(len(wanted)), key=lambda i: wanted[i][0][0])
    s_order = sorted(range(len(stored)), key=lambda i: stored[i][0][0])
    active: list[int] = []
    next_s = 0
    found: list[Overlap] = []
    for w in w_order:
        w_lo = wanted[w][0][0]
        w_hi = w_lo + wanted[w][1][0]
        while next_s < len(s_order) and stored[s_order[next_s]][0][0] < w_hi:
            active.append(s_order[next_s])
            next_s += 1
        # wanted starts only grow, so a stored box ending at or before this start is done for good
        active = [s for s in active if stored[s][0][0] + stored[s][1][0] > w_lo]
        for s in active:
            box = intersect(wanted[w], stored[s])
            if box is not None:
                found.append(Overlap(w, s, box[0], box[1]))
    found.sort(key=lambda o: (o.stored, o.wanted))
    return found


def split_box(
    offsets: Sequence[int], sizes: Sequence[int], itemsize: int, max_bytes: int
) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Splits a box into sub-boxes of at most max_bytes each (never below one element).

    Splits along the leading dimensions only, so each piece of a row-major (C-contiguous) tensor that
    covers the box is itself contiguous in memory: it streams without a copy.
    """
    offsets, sizes = tuple(offsets), tuple(sizes)
    total = math.prod(sizes) * itemsize
    if total <= max_bytes or not sizes or total == 0:
        return [(offsets, sizes)]
    # d: the first dimension whose trailing block (one index of d and all later dims) fits
    d = 0
    while d < len(sizes) - 1 and math.prod(sizes[d + 1 :]) * itemsize > max_bytes:
        d += 1
    per_index = math.prod(sizes[d + 1 :]) * itemsize
    step = max(1, max_bytes // per_index)
    pieces: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    for prefix in _indices(sizes[:d]):
        for start in range(0, sizes[d], step):
            n = min(step, sizes[d] - start)
            off = (*tuple(o + i for o, i in zip(offsets[:d], prefix, strict=True)), offsets[d] + start)
            pieces.append((off + offsets[d + 1 :], (1,) * d + (n,) + sizes[d + 1 :]))
    return pieces


def _indices(sizes: Sequence[int]) -> list[tuple[int, ...]]:
    out: list[tuple[int, ...]] = [()]
    for n in sizes:
        out = [(*p, i) for p in out for i in range(n)]
    return out
