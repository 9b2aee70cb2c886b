"""Lazy semantics on CPU: what is saved equals the state at the save call, bit for bit, while
training goes on; the optimizer pre-hook is what guarantees it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from kedge.ckpt import faults
from kedge.ckpt.engine.checkpointer import Checkpointer
from kedge_fixtures.ckpt_engine import assert_same_state, make_job, snapshot_state, train

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_engine_threads_left")]


@pytest.fixture(autouse=True)
def _disarm() -> Iterator[None]:
    yield
    faults.disarm()


def _checkpointer(path: Path, **kwargs: object) -> Checkpointer:
    options: dict[str, object] = {
        "host_cache_bytes": 1 << 20,
        "slab_bytes": 1 << 16,
        "rank": 0,
        "world_size": 1,
    }
    options.update(kwargs)
    return Checkpointer(str(path), **options)  # type: ignore[arg-type]


def test_saved_state_equals_state_at_save_call_while_training_continues(tmp_path: Path) -> None:
    model, optimizer = make_job()
    train(model, optimizer, 3)
    expected = snapshot_state(model, optimizer)
    faults.arm("ckpt.snapshot_piece", "sleep:0.01")  # keeps the copy running while training goes on
    with _checkpointer(tmp_path) as ck:
        handle = ck.save(3, {"model": model, "optim": optimizer})
        train(model, optimizer, 4, start=3)  # the pre-hook holds step 4 until the snapshot is done
        assert handle.wait("local", timeout_s=30)
    fresh_model, fresh_optimizer = make_job(seed=1)
    train(fresh_model, fresh_optimizer, 1)  # creates optimizer state to load into
    with _checkpointer(tmp_path) as ck:
        assert ck.load({"model": fresh_model, "optim": fresh_optimizer}) == 3
    assert_same_state(expected, fresh_model, fresh_optimizer)


def test_optimizer_step_waits_for_the_snapshot(tmp_path: Path) -> None:
    model, optimizer = make_job()
    train(model, optimizer, 1)
    faults.arm("ckpt.snapshot_piece", "sleep:0.05")
    seen: list[str] = []
    with _checkpointer(tmp_path) as ck:
        handle = ck.save(1, {"model": model, "optim": optimizer})
        # Registered after kedge's pre-hook, so it runs after kedge's wait returned.
        optimizer.register_step_pre_hook(lambda *_: seen.append(handle.status("host")))
        assert handle.status("host") == "pending"  # save() returned before the copy finished
        train(model, optimizer, 1, start=1)
        assert seen == ["reached"]
        handle.wait("local", timeout_s=30)


def test_state_larger_than_pool_streams_through_it(tmp_path: Path) -> None:
    torch.manual_seed(0)
    big = torch.randn(300, 700)  # 840 KB: 13 slabs of 64 KiB, the pool holds 4
    scalar = torch.tensor(3.5, dtype=torch.float64)
    ints = torch.arange(1000, dtype=torch.int16).reshape(10, 100)
    state = {"big": big.clone(), "scalar": scalar.clone(), "ints": ints.clone(), "meta": {"epoch": 7}}
    with _checkpointer(tmp_path, host_cache_bytes=1 << 18, slab_bytes=1 << 16) as ck:
        assert ck.pool_bytes() < big.numel() * 4
        handle = ck.save(5, state)
        assert handle.wait("host", timeout_s=30)
        state["big"].zero_()  # allowed once the host level is reached
        assert handle.wait("local", timeout_s=30)
    loaded = {
        "big": torch.zeros(300, 700),
        "scalar": torch.zeros((), dtype=torch.float64),
        "ints": torch.zeros(10, 100, dtype=torch.int16),
        "meta": {"epoch": 0},
    }
    with _checkpointer(tmp_path) as ck:
        ck.load(loaded)
    assert torch.equal(loaded["big"], big)
    assert torch.equal(loaded["scalar"], scalar)
    assert torch.equal(loaded["ints"], ints)
    assert loaded["meta"] == {"epoch": 7}


def test_retention_keeps_the_newest_local_steps(tmp_path: Path) -> None:
    model, optimizer = make_job()
    with _checkpointer(tmp_path, keep_local=2) as ck:
        for step in range(1, 5):
            train(model, optimizer, 1, start=step)
            ck.save(step, {"model": model, "optim": optimizer}).wait("local", timeout_s=30)
        assert ck.steps() == [3, 4]
        assert ck.metrics.get("committed_local") == 4


def test_remote_only_checkpointer_writes_the_remote_level_directly(tmp_path: Path) -> None:
    remote = f"file://{tmp_path}/remote"
    state = {"w": torch.arange(10, dtype=torch.float32)}
    with Checkpointer(
        None, remote=remote, host_cache_bytes=1 << 20, slab_bytes=1 << 16, rank=0, world_size=1
    ) as ck:
        handle = ck.save(7, state)
        assert handle.wait("remote", timeout_s=30)
        assert handle.status("local") == "absent"
        loaded = {"w": torch.zeros(10)}
        assert ck.load(loaded) == 7
    assert torch.equal(loaded["w"], state["w"])
