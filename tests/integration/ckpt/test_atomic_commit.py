"""SIGKILL the saving process at each commit failpoint, on local disk and on S3 (SeaweedFS):
the previous checkpoint still loads, a partial step is never listed, the next save cleans up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import kedge.ckpt as kc
import pytest
import torch
from kedge.ckpt.storage import Storage
from kedge_fixtures.seaweedfs import SeaweedFS

pytestmark = pytest.mark.timeout(120)
SAVER = Path(__file__).with_name("crash_saver.py")
POINTS = ["ckpt.after_data", "ckpt.before_fragment", "ckpt.after_fragment", "ckpt.before_manifest",
          "ckpt.after_manifest"]  # fmt: skip


def crash_at(url: str, step: int, point: str, options: dict[str, Any]) -> int:
    env = dict(os.environ, KEDGE_FAILPOINTS=f"{point}=kill")
    proc = subprocess.run(
        [sys.executable, str(SAVER), url, str(step), json.dumps(options)],
        env=env,
        timeout=60,
        capture_output=True,
    )
    return proc.returncode


def check_crashes(url: str, options: dict[str, Any]) -> None:
    storage = Storage(url, **options)
    kc.save(storage, {"x": torch.full((16,), 1.0), "meta": 1}, step=1)
    for i, point in enumerate(POINTS):
        step = 10 + i
        assert crash_at(url, step, point, options) == -signal.SIGKILL, point
        committed = storage.committed_steps()
        if point == "ckpt.after_manifest":
            assert step in committed  # the manifest landed before the crash: the step is complete
        else:
            assert step not in committed and step in storage.all_step_dirs(), point
        target: dict[str, Any] = {"x": torch.zeros(16), "meta": None}
        assert kc.load(storage, target, step=1) == 1 and target["x"][0] == 1.0, point
        latest: dict[str, Any] = {"x": torch.zeros(16), "meta": None}
        assert kc.load(storage, latest) == max(committed)
        assert latest["meta"] == max(committed)
    # the next successful save removes every partial step older than itself
    kc.save(storage, {"x": torch.full((16,), 2.0), "meta": 2}, step=20)
    assert storage.all_step_dirs() == storage.committed_steps() == [1, 14, 20]


def test_sigkill_at_each_failpoint_local(tmp_path: Path) -> None:
    check_crashes(str(tmp_path / "run"), {})


@pytest.mark.s3
def test_sigkill_at_each_failpoint_s3(seaweedfs: SeaweedFS, s3_bucket: str) -> None:
    options = seaweedfs.storage_options
    check_crashes(f"s3://{s3_bucket}/run", options)
