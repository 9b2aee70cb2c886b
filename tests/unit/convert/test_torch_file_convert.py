"""torch.save files in and out: weights_only by default, streamed output that torch.load reads."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
import torch

from .conftest import leftovers

pytestmark = pytest.mark.timeout(60)


class NeedsCode:
    """Pickled by reference: loading it runs this module's code, which weights_only refuses."""

    def __init__(self) -> None:
        self.x = 1


def state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "a.weight": torch.randn(8, 4, generator=g),
        "a.bias": torch.randn(4, generator=g).to(torch.bfloat16),
        "ids": torch.arange(5),
        "view": torch.randn(6, 6, generator=g)[1:3],  # a view: its storage is larger than itself
    }


def test_torch_round_trip_keeps_names_dtypes_shapes_and_values(convert, tmp_path: Path) -> None:
    torch.save(state(), tmp_path / "in.pt")
    assert convert(tmp_path / "in.pt", tmp_path / "mid.safetensors").code == 0
    assert convert(tmp_path / "mid.safetensors", tmp_path / "out.pt").code == 0
    loaded = torch.load(tmp_path / "out.pt", weights_only=True)
    assert list(loaded) == list(state())
    for name, tensor in state().items():
        assert loaded[name].dtype == tensor.dtype and loaded[name].shape == tensor.shape
        assert torch.equal(loaded[name], tensor)
    assert leftovers(tmp_path) == []


def test_nested_state_is_flattened_and_plain_values_kept(convert, tmp_path: Path) -> None:
    nested = {"model": collections.OrderedDict(w=torch.ones(2)), "optim": [torch.zeros(3)], "epoch": 4}
    torch.save(nested, tmp_path / "in.pt")
    assert convert(tmp_path / "in.pt", tmp_path / "out.pt").code == 0
    loaded = torch.load(tmp_path / "out.pt", weights_only=True)
    assert set(loaded) == {"model.w", "optim.0", "epoch"} and loaded["epoch"] == 4


def test_pickle_that_needs_code_is_refused_unless_unsafe(convert, tmp_path: Path) -> None:
    torch.save({"w": torch.ones(2), "obj": NeedsCode()}, tmp_path / "in.pt")
    refused = convert(tmp_path / "in.pt", tmp_path / "out.safetensors")
    refused.one_line_error("in.pt", "--unsafe-pickle")
    assert not (tmp_path / "out.safetensors").exists()
    allowed = convert(tmp_path / "in.pt", tmp_path / "out.safetensors", "--unsafe-pickle")
    assert allowed.code == 0, allowed.stderr


def test_corrupted_torch_file_is_named(convert, tmp_path: Path) -> None:
    torch.save(state(), tmp_path / "in.pt")
    data = bytearray((tmp_path / "in.pt").read_bytes())
    (tmp_path / "in.pt").write_bytes(data[: len(data) // 2])
    convert(tmp_path / "in.pt", tmp_path / "out.safetensors").one_line_error("in.pt")
    assert not (tmp_path / "out.safetensors").exists()
