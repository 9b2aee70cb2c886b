"""The remote level against a real S3 server (SeaweedFS): copy and commit, then the server stopped
mid-upload: that checkpoint fails at the remote level after bounded retries, training and the local
level go on, and the remote level works again once the server is back."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kedge.ckpt import faults
from kedge.ckpt.engine.checkpointer import Checkpointer
from kedge.ckpt.engine.retry import RetryPolicy
from kedge.ckpt.errors import CheckpointFailed
from kedge_fixtures.ckpt_engine import assert_same_state, make_job, snapshot_state, train

pytestmark = [pytest.mark.timeout(120), pytest.mark.s3, pytest.mark.usefixtures("no_engine_threads_left")]


@pytest.fixture(autouse=True)
def _disarm() -> Iterator[None]:
    yield
    faults.disarm()


def _remote_options(seaweedfs: Any) -> dict[str, Any]:
    # Bounded client timeouts: a stopped server must fail fast, not hang the remote thread.
    options = dict(seaweedfs.storage_options)
    options["config_kwargs"] = {"connect_timeout": 2, "read_timeout": 5, "retries": {"max_attempts": 1}}
    return options


def test_remote_level_survives_the_server_stopping_mid_upload(
    tmp_path: Any, seaweedfs: Any, s3_bucket: str
) -> None:
    remote = f"s3://{s3_bucket}/run"
    model, optimizer = make_job()
    state = {"model": model, "optim": optimizer}
    ck = Checkpointer(
        str(tmp_path / "local"),
        remote=remote,
        remote_options=_remote_options(seaweedfs),
        host_cache_bytes=1 << 20,
        slab_bytes=1 << 16,
        rank=0,
        world_size=1,
        remote_retry=RetryPolicy(attempts=3, backoff_s=0.2, max_backoff_s=0.5),
    )
    try:
        train(model, optimizer, 1)
        expected = snapshot_state(model, optimizer)
        assert ck.save(1, state).wait("remote", timeout_s=60)

        faults.arm("ckpt.remote.copy_block", "sleep:1.5")  # the upload of step 2 is under way ...
        train(model, optimizer, 1, start=1)
        handle = ck.save(2, state)
        assert handle.wait("local", timeout_s=30)
        seaweedfs.stop()  # ... when the server goes away
        train(model, optimizer, 1, start=2)  # training is not blocked
        with pytest.raises(CheckpointFailed, match="level=remote"):
            handle.wait("remote", timeout_s=60)
        assert ck.metrics.get("retries_remote") >= 1 and ck.metrics.get("failed_remote") == 1
    finally:
        faults.disarm()
        seaweedfs.start()
    try:
        assert ck.save(3, state).wait("remote", timeout_s=60)
        ck.close()
        remote_only = Checkpointer(
            None, remote=remote, remote_options=seaweedfs.storage_options, rank=0, world_size=1
        )
        with remote_only:
            assert remote_only.steps() == [1, 3]
            fresh_model, fresh_optimizer = make_job(seed=3)
            train(fresh_model, fresh_optimizer, 1)
            assert remote_only.load({"model": fresh_model, "optim": fresh_optimizer}, step=1) == 1
        assert_same_state(expected, fresh_model, fresh_optimizer)
    finally:
        ck.close()
