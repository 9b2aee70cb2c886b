"""Checkpointer with a local level and an S3 (SeaweedFS) remote level; resharded ranged reads from S3."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import kedge.ckpt as kc
import pytest
import torch
from kedge.ckpt.state import LocalShard
from kedge.ckpt.storage import Storage
from kedge_fixtures.seaweedfs import SeaweedFS

pytestmark = [pytest.mark.s3, pytest.mark.timeout(120)]


def test_remote_level_retention_and_reshard(seaweedfs: SeaweedFS, s3_bucket: str, tmp_path: Path) -> None:
    remote = f"s3://{s3_bucket}/run"
    ck = kc.Checkpointer(str(tmp_path / "local"), remote=remote, keep_local=1, keep_remote=2,
                         remote_options=seaweedfs.storage_options, chunk_bytes=1024)  # fmt: skip
    full = torch.arange(40 * 9, dtype=torch.float32).reshape(40, 9)
    for step in (1, 2, 3):
        ck.save(step, {"w": full + step, "meta": {"step": step}})
    assert Storage(str(tmp_path / "local")).committed_steps() == [3]
    assert Storage(remote, **seaweedfs.storage_options).committed_steps() == [2, 3]
    shutil.rmtree(tmp_path / "local")
    assert ck.steps() == [2, 3]
    # rank 1 of 3 loads its rows straight from S3 (only the overlapping 1 KiB chunks are read)
    target: dict[str, Any] = {"w": LocalShard(torch.zeros(13, 9), (13, 0), (40, 9)), "meta": None}
    assert ck.load(target) == 3
    assert torch.equal(target["w"].tensor, full[13:26] + 3) and target["meta"] == {"step": 3}
    ck.close()
