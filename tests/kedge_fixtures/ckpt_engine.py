"""Helpers for the async checkpoint engine tests: a tiny deterministic training job and state checks."""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from typing import Any

import pytest


def make_job(*, seed: int = 0, width: int = 32, lr: float = 1e-2) -> tuple[Any, Any]:
    """A small MLP and its AdamW optimizer, seeded."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, width), nn.ReLU(), nn.Linear(width, 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    return model, optimizer


def train(model: Any, optimizer: Any, steps: int, *, start: int = 0) -> None:
    """Deterministic steps: the batch of step i depends only on i."""
    import torch

    for i in range(start, start + steps):
        gen = torch.Generator().manual_seed(1000 + i)
        x = torch.randn(8, model[0].in_features, generator=gen)
        loss = model(x).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def snapshot_state(model: Any, optimizer: Any) -> dict[str, Any]:
    """A deep copy of the model and optimizer state (the reference a checkpoint must equal)."""
    return copy.deepcopy({"model": model.state_dict(), "optim": optimizer.state_dict()})


def assert_same_state(expected: dict[str, Any], model: Any, optimizer: Any) -> None:
    import torch

    for key, value in expected["model"].items():
        assert torch.equal(model.state_dict()[key], value), key
    got = optimizer.state_dict()["state"]
    for index, per_param in expected["optim"]["state"].items():
        for key, value in per_param.items():
            assert torch.equal(torch.as_tensor(got[index][key]), torch.as_tensor(value)), (index, key)


def engine_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("kedge-ckpt-")]


@pytest.fixture
def no_engine_threads_left() -> Iterator[None]:
    """Fails the test if an engine thread outlives it (close() must stop every thread)."""
    yield
    left = engine_threads()
    for thread in left:
        thread.join(5)
    assert not [t.name for t in left if t.is_alive()]
