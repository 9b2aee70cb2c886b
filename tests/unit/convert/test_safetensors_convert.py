"""safetensors in and out: single files and Hugging Face sharded weights written by the real library."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from kedge.ckpt.convert.base import TensorMeta
from kedge.ckpt.convert.safetensors_file import parse_size, plan_shards
from safetensors import safe_open
from safetensors.torch import load_file, save_file

pytestmark = pytest.mark.timeout(60)


def sample_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "embed.weight": torch.randn(50, 16, generator=g),
        "layers.0.attn.weight": torch.randn(16, 16, generator=g).to(torch.bfloat16),
        "layers.0.norm.weight": torch.randn(16, generator=g).to(torch.float16),
        "layers.0.count": torch.arange(7, dtype=torch.int32),
        "mask": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 4),
        "scalar": torch.tensor(3.5, dtype=torch.float64),
    }


def write_hf_sharded(directory: Path, state: dict[str, torch.Tensor], per_shard: int) -> None:
    """Writes sharded weights the way Hugging Face does: shard files plus a weight_map index."""
    names = list(state)
    groups = [names[i : i + per_shard] for i in range(0, len(names), per_shard)]
    weight_map = {}
    for i, group in enumerate(groups):
        file = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        save_file({n: state[n] for n in group}, directory / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(group, file))
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))


def raw_bytes(directory: Path) -> dict[str, tuple[str, list[int], bytes]]:
    """name -> (dtype, shape, bytes) over every .safetensors file in a directory or a single file."""
    files = sorted(directory.glob("*.safetensors")) if directory.is_dir() else [directory]
    out = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a Mapping)
                t = f.get_tensor(name)
                out[name] = (str(t.dtype), list(t.shape), t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return out


def test_hf_sharded_to_kedge_layout_and_back_is_byte_identical(convert, tmp_path: Path) -> None:
    src = tmp_path / "hf"
    src.mkdir()
    write_hf_sharded(src, sample_state(), per_shard=3)
    assert convert(src, tmp_path / "single.safetensors").code == 0
    assert convert(tmp_path / "single.safetensors", tmp_path / "out", "--to", "safetensors",
                   "--max-shard-size", "2KB").code == 0  # fmt: skip
    assert raw_bytes(tmp_path / "out") == raw_bytes(src) == raw_bytes(tmp_path / "single.safetensors")
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(sample_state())
    assert len(set(index["weight_map"].values())) > 1
    state = sample_state()
    for file in set(index["weight_map"].values()):
        held = [state[n].nbytes for n, f in index["weight_map"].items() if f == file]
        assert sum(held) <= 2000 or len(held) == 1  # only a single oversized tensor may exceed it


def test_output_loads_with_the_safetensors_library(convert, tmp_path: Path) -> None:
    save_file(sample_state(), tmp_path / "a.safetensors")
    assert convert(tmp_path / "a.safetensors", tmp_path / "b.safetensors").code == 0
    loaded = load_file(tmp_path / "b.safetensors")
    for name, tensor in sample_state().items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor)


def test_index_pointing_at_a_missing_shard_is_named(convert, tmp_path: Path) -> None:
    src = tmp_path / "hf"
    src.mkdir()
    write_hf_sharded(src, sample_state(), per_shard=3)
    (src / "model-00002-of-00003.safetensors").unlink()
    result = convert(src, tmp_path / "out.safetensors")
    result.one_line_error("model-00002-of-00003.safetensors", "missing")
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("cut", [4, 100, -5])
def test_truncated_file_is_named(convert, tmp_path: Path, cut: int) -> None:
    save_file(sample_state(), tmp_path / "a.safetensors")
    data = (tmp_path / "a.safetensors").read_bytes()
    (tmp_path / "a.safetensors").write_bytes(data[:cut])
    result = convert(tmp_path / "a.safetensors", tmp_path / "b.pt", "--from", "safetensors")
    result.one_line_error("a.safetensors")
    assert not (tmp_path / "b.pt").exists()


def test_shard_plan_is_greedy_and_keeps_order() -> None:
    metas = [TensorMeta(f"t{i}", "float32", (n,)) for i, n in enumerate([10, 10, 20, 5, 40])]
    shards = plan_shards(metas, max_shard_bytes=100)
    assert [[m.name for m in s] for s in shards] == [["t0", "t1"], ["t2", "t3"], ["t4"]]


def test_sizes_parse_like_hugging_face() -> None:
    assert parse_size("5GB") == 5 * 10**9
    assert parse_size("512MiB") == 512 << 20
    assert parse_size("1000") == 1000
    with pytest.raises(Exception, match="bad size"):
        parse_size("lots")
