"""The plan cache reuses the module/optimizer plan only while the very same tensors are in place, and
always re-reads values and optimizer hyper-parameters."""

from __future__ import annotations

import pytest
import torch
from kedge.ckpt.engine.plan_cache import PlanCache
from kedge.ckpt.state import plan_save
from kedge_fixtures.ckpt_engine import make_job, train

pytestmark = pytest.mark.timeout(30)


def _by_name(plan: object) -> dict[str, torch.Tensor]:
    return {shard.name: shard.tensor for shard in plan.shards}  # type: ignore[attr-defined]


def test_cached_plan_equals_a_fresh_plan_and_follows_changes() -> None:
    model, optimizer = make_job()
    train(model, optimizer, 1)
    cache = PlanCache()
    state = {"model": model, "optim": optimizer, "meta": {"epoch": 1}}
    cache.plan(state, 0, 1)
    state["meta"]["epoch"] = 2
    for group in optimizer.param_groups:
        group["lr"] = 0.5
    cached = cache.plan(state, 0, 1)
    fresh = plan_save(state, 0, 1)
    assert cache.hits == 1 and cache.misses == 1
    assert cached.values == fresh.values  # epoch 2 and lr 0.5, not the values of the first save
    assert _by_name(cached).keys() == _by_name(fresh).keys()
    for name, tensor in _by_name(fresh).items():
        assert _by_name(cached)[name].data_ptr() == tensor.data_ptr(), name

    model[0].weight = torch.nn.Parameter(torch.zeros_like(model[0].weight))  # a replaced parameter
    replaced = cache.plan(state, 0, 1)
    assert cache.misses == 2
    weight = next(
        s.tensor for s in replaced.shards if s.name.endswith("0.weight") and s.name.startswith("model")
    )
    assert weight.data_ptr() == model[0].weight.data_ptr()


def test_new_optimizer_state_is_a_miss() -> None:
    model, optimizer = make_job()
    cache = PlanCache()
    state = {"model": model, "optim": optimizer}
    empty = cache.plan(state, 0, 1)
    train(model, optimizer, 1)  # AdamW creates its state lazily at the first step
    with_state = cache.plan(state, 0, 1)
    assert cache.misses == 2
    assert len(with_state.shards) > len(empty.shards)
