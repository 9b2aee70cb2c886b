"""--select, --rename, --dtype, --dry-run, --overwrite, detection errors and a full disk."""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from .conftest import leftovers

pytestmark = pytest.mark.timeout(60)


def write_model(path: Path) -> None:
    save_file(
        {
            "model.w": torch.randn(4, 4),
            "model.b": torch.randn(4).to(torch.float16),
            "model.steps": torch.arange(3),
            "optim.m": torch.randn(4, 4),
        },
        path,
    )


def test_select_rename_and_dtype(convert, tmp_path: Path) -> None:
    write_model(tmp_path / "a.safetensors")
    result = convert(tmp_path / "a.safetensors", tmp_path / "b.safetensors", "--select", "model.*",
                     "--rename", r"^model\.=", "--dtype", "bf16")  # fmt: skip
    assert result.code == 0, result.stderr
    out = load_file(tmp_path / "b.safetensors")
    assert set(out) == {"w", "b", "steps"}
    assert out["w"].dtype == torch.bfloat16 and out["b"].dtype == torch.bfloat16
    assert out["steps"].dtype == torch.int64  # integers are never cast


def test_dry_run_prints_the_plan_and_writes_nothing(convert, tmp_path: Path) -> None:
    write_model(tmp_path / "a.safetensors")
    result = convert(tmp_path / "a.safetensors", tmp_path / "out", "--to", "dcp", "--dry-run")
    assert result.code == 0, result.stderr
    assert "model.w  float32  4x4  64 B" in result.stdout
    assert "total: 4 tensors" in result.stdout and "__0_0.distcp" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]


def test_existing_output_is_refused_without_overwrite(convert, tmp_path: Path) -> None:
    write_model(tmp_path / "a.safetensors")
    (tmp_path / "b.safetensors").write_bytes(b"keep me")
    convert(tmp_path / "a.safetensors", tmp_path / "b.safetensors").one_line_error("--overwrite")
    assert (tmp_path / "b.safetensors").read_bytes() == b"keep me"
    assert convert(tmp_path / "a.safetensors", tmp_path / "b.safetensors", "--overwrite").code == 0
    assert set(load_file(tmp_path / "b.safetensors")) == {"model.w", "model.b", "model.steps", "optim.m"}
    assert leftovers(tmp_path) == []


def test_unknown_format_lists_the_supported_ones(convert, tmp_path: Path) -> None:
    (tmp_path / "x.bin").write_bytes(b"definitely not a checkpoint")
    line = convert(tmp_path / "x.bin", tmp_path / "y.pt").one_line_error("x.bin", "unknown")
    for name in ("kedge", "dcp", "torch", "safetensors"):
        assert name in line
    write_model(tmp_path / "a.safetensors")
    convert(tmp_path / "a.safetensors", tmp_path / "y", "--to", "onnx").one_line_error("onnx", "safetensors")


def test_bad_options_are_one_line_errors(convert, tmp_path: Path) -> None:
    write_model(tmp_path / "a.safetensors")
    convert(tmp_path / "a.safetensors", tmp_path / "b.pt", "--dtype", "int8").one_line_error("--dtype")
    convert(tmp_path / "a.safetensors", tmp_path / "b.pt", "--rename", "nothing").one_line_error("--rename")
    convert(tmp_path / "a.safetensors", tmp_path / "b.pt", "--rename", ".*=x").one_line_error("unique")
    convert(tmp_path / "a.safetensors", tmp_path / "b.pt", "--select", "nope*").one_line_error("--select")


def _limit_file_size() -> None:
    # A file-size limit makes writes past it fail (EFBIG) as a full disk would; without SIG_IGN
    # the kernel would kill the process with SIGXFSZ instead.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))


@pytest.mark.parametrize(
    ("target", "fmt"), [("out.safetensors", "safetensors"), ("out", "dcp"), ("o.pt", "torch"), ("k", "kedge")]
)
def test_full_disk_leaves_no_output(tmp_path: Path, target: str, fmt: str) -> None:
    save_file({"big": torch.randn(256, 256), "small": torch.randn(4)}, tmp_path / "a.safetensors")
    cmd = [sys.executable, "-c", "from kedge.ckpt.cli import main; main()", "convert", "-q", str(tmp_path / "a.safetensors"),
           str(tmp_path / target), "--to", fmt]  # fmt: skip
    proc = subprocess.run(cmd, preexec_fn=_limit_file_size, capture_output=True, text=True, timeout=60)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("ckpt convert: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]
