"""kedge output and input on real S3 (SeaweedFS): committed by the manifest, read back through fsspec."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from kedge.ckpt.cli import main
from kedge_fixtures.seaweedfs import SeaweedFS
from safetensors.torch import load_file, save_file

pytestmark = [pytest.mark.s3, pytest.mark.timeout(120)]


def convert(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["convert", "-q", *map(str, args)], catch_exceptions=False)
    return result.exit_code, result.stderr


def test_safetensors_to_s3_kedge_and_back(seaweedfs: SeaweedFS, s3_bucket: str, tmp_path: Path) -> None:
    state = {"w": torch.randn(64, 8), "b": torch.randn(8).to(torch.bfloat16)}
    save_file(state, tmp_path / "a.safetensors")
    url = f"s3://{s3_bucket}/run"
    assert convert(tmp_path / "a.safetensors", url, "--out-step", "7") == (0, "")
    code, err = convert(tmp_path / "a.safetensors", url, "--out-step", "7")
    assert code != 0 and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert convert(url, tmp_path / "b.safetensors", "--step", "7") == (0, "")
    out = load_file(tmp_path / "b.safetensors")
    for name, tensor in state.items():
        assert out[name].dtype == tensor.dtype and torch.equal(out[name], tensor)
