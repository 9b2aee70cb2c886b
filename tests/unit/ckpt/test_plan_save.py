"""plan_save: replicated tensors are written exactly once across ranks, balanced; no data copy."""

from __future__ import annotations

import pytest
import torch
from kedge.ckpt.state import LocalShard, plan_save

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
