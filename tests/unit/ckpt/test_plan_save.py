"""plan_save: replicated tensors are written exactly once across ranks, balanced; no data copy."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
import torch
from kedge.ckpt.state import LocalShard, dtensor_boxes, plan_save

pytestmark = pytest.mark.timeout(30)
WORLD = 4


def test_replicated_tensors_written_once_and_balanced() -> None:
    state = {f"t{i}": torch.zeros(100 + i) for i in range(16)}
    writers: dict[str, list[int]] = {name: [] for name in state}
    load = [0] * WORLD
    for rank in range(WORLD):
        for shard in plan_save(state, rank, WORLD).shards:
            assert shard.tensor.data_ptr() == state[shard.name].data_ptr()  # no copy
            if shard.write:
                writers[shard.name].append(rank)
                load[rank] += shard.tensor.numel()
    assert all(len(w) == 1 for w in writers.values()), writers
    assert max(load) - min(load) <= 115, load  # within one tensor of perfect balance


def test_local_shards_always_written_by_their_rank() -> None:
    for rank in range(WORLD):
        plan = plan_save({"w": LocalShard(torch.zeros(2, 3), (2 * rank, 0), (8, 3))}, rank, WORLD)
        (shard,) = plan.shards
        assert shard.write and shard.offsets == (2 * rank, 0) and shard.global_shape == (8, 3)


def test_optimizers_are_returned_for_hooks() -> None:
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    plan = plan_save({"model": model, "optim": opt}, 0, 1)
    assert plan.optimizers == [opt]
    assert plan.values["optim/param_groups"][0]["params"] == ["weight", "bias"]


LAYOUTS = [
    ((2, 2), ["S0", "S1"]),
    ((2, 2), ["R", "S1"]),
    ((2, 2), ["SS0", "S0"]),  # FSDP2 over TP: strided dim-0 shards
    ((3,), ["S0"]),
    ((2, 3), ["S1", "S0"]),
]


def _placements(names: list[str]) -> list[Any]:
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.placement_types import _StridedShard

    table = {"S0": Shard(0), "S1": Shard(1), "R": Replicate(), "SS0": _StridedShard(0, split_factor=2)}
    return [table[n] for n in names]


@pytest.mark.parametrize(("mesh_shape", "names"), LAYOUTS)
@pytest.mark.parametrize("shape", [(8, 6), (10, 7), (2, 1)])
def test_dtensor_boxes_tile_the_tensor(
    mesh_shape: tuple[int, ...], names: list[str], shape: tuple[int, int]
) -> None:
    from torch.distributed.tensor._utils import _compute_local_shape_and_global_offset

    placements = _placements(names)
    replicas = math.prod(m for m, n in zip(mesh_shape, names, strict=True) if n == "R")
    seen = torch.zeros(shape, dtype=torch.int64)
    for coord in itertools.product(*(range(m) for m in mesh_shape)):
        pieces = dtensor_boxes(shape, mesh_shape, coord, placements, "x")
        local_shape, first = _compute_local_shape_and_global_offset(
            shape, mesh_shape, list(coord), placements
        )
        held = 0
        for offsets, sizes, _ in pieces:
            seen[tuple(slice(o, o + s) for o, s in zip(offsets, sizes, strict=True))] += 1
            held += math.prod(sizes)
        assert held == math.prod(local_shape)
        if math.prod(local_shape) and "SS0" not in names:
            assert pieces[0][0] == tuple(first)
    assert (seen == replicas).all()
