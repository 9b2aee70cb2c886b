"""kedge checkpoints in and out: every codec, steps, and a corrupted chunk named."""

from __future__ import annotations

import json
from pathlib import Path

import kedge.ckpt as kc
import pytest
import torch
from safetensors.torch import load_file, save_file

from .conftest import leftovers

pytestmark = pytest.mark.timeout(60)


def state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {
        "w": torch.randn(32, 16, generator=g),
        "h": torch.randn(16, generator=g).to(torch.bfloat16),
        "n": torch.arange(12, dtype=torch.int16).reshape(3, 4),
    }


@pytest.mark.parametrize("codec", ["raw", "zstd", "bgzstd"])
def test_safetensors_to_kedge_and_back_is_identical(convert, tmp_path: Path, codec: str) -> None:
    save_file(state(), tmp_path / "a.safetensors")
    assert convert(tmp_path / "a.safetensors", tmp_path / "k", "--to", "kedge", "--codec", codec).code == 0
    assert convert(tmp_path / "k", tmp_path / "b.safetensors").code == 0
    out = load_file(tmp_path / "b.safetensors")
    for name, tensor in state().items():
        assert out[name].dtype == tensor.dtype and torch.equal(out[name], tensor)
    assert leftovers(tmp_path) == []


def test_torch_to_kedge_to_torch_round_trip(convert, tmp_path: Path) -> None:
    torch.save({**state(), "epoch": 9}, tmp_path / "a.pt")
    assert convert(tmp_path / "a.pt", tmp_path / "k", "--to", "kedge").code == 0
    target = {name: torch.zeros_like(t) for name, t in state().items()}
    kc.load(str(tmp_path / "k"), target, rank=0, world_size=1)
    for name, tensor in state().items():
        assert torch.equal(target[name], tensor)
    assert convert(tmp_path / "k", tmp_path / "b.pt").code == 0
    loaded = torch.load(tmp_path / "b.pt", weights_only=True)
    assert sorted(loaded) == sorted([*state(), "epoch"]) and loaded["epoch"] == 9
    for name, tensor in state().items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor)


def test_step_selection_and_a_saved_checkpoint(convert, tmp_path: Path) -> None:
    root = str(tmp_path / "run")
    kc.save(root, state(), step=10, rank=0, world_size=1)
    kc.save(root, {"w": torch.ones(2)}, step=20, rank=0, world_size=1)
    assert convert(root, tmp_path / "latest.safetensors").code == 0
    assert set(load_file(tmp_path / "latest.safetensors")) == {"w"}
    assert convert(root, tmp_path / "ten.safetensors", "--step", "10").code == 0
    assert torch.equal(load_file(tmp_path / "ten.safetensors")["w"], state()["w"])
    convert(root, tmp_path / "x.safetensors", "--step", "15").one_line_error("step 15")


def test_corrupted_kedge_chunk_is_named(convert, tmp_path: Path) -> None:
    save_file(state(), tmp_path / "a.safetensors")
    assert convert(tmp_path / "a.safetensors", tmp_path / "k", "--to", "kedge", "--codec", "raw").code == 0
    step_dir = tmp_path / "k" / "step-000000000000"
    manifest = json.loads((step_dir / "manifest.json").read_text())
    data_file = next(p for p in step_dir.iterdir() if p.name.startswith("data-"))
    data = bytearray(data_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    data_file.write_bytes(bytes(data))
    assert manifest["format_version"] >= 1
    convert(tmp_path / "k", tmp_path / "b.safetensors").one_line_error(data_file.name)
    assert not (tmp_path / "b.safetensors").exists()
