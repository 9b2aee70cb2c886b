"""DCP in and out in one process (multi-rank producers are in tests/multiproc/convert)."""

from __future__ import annotations

import io
import pickle
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from kedge.ckpt.convert.dcp import RestrictedUnpickler
from safetensors.torch import load_file
from torch.distributed.checkpoint._extension import ZStandard

from .conftest import leftovers

pytestmark = pytest.mark.timeout(60)


def state() -> dict[str, object]:
    g = torch.Generator().manual_seed(2)
    return {
        "model": {"w": torch.randn(16, 8, generator=g), "b": torch.randn(8, generator=g).to(torch.bfloat16)},
        "step": 7,
    }


def dcp_save(path: Path, compressed: bool) -> None:
    extensions = [ZStandard()] if compressed else None
    with warnings.catch_warnings():  # no process group: DCP warns that it saves as one process
        warnings.simplefilter("ignore", UserWarning)
        dcp.save(state(), storage_writer=dcp.FileSystemWriter(path, _extensions=extensions), no_dist=True)


@pytest.mark.parametrize("compressed", [False, True])
def test_dcp_to_safetensors_equal(convert, tmp_path: Path, compressed: bool) -> None:
    dcp_save(tmp_path / "ck", compressed)
    assert convert(tmp_path / "ck", tmp_path / "out.safetensors").code == 0
    out = load_file(tmp_path / "out.safetensors")
    assert set(out) == {"model.w", "model.b"}
    assert torch.equal(out["model.w"], state()["model"]["w"])  # type: ignore[index]
    assert out["model.b"].dtype == torch.bfloat16


def test_dcp_output_loads_with_dcp_load(convert, tmp_path: Path) -> None:
    dcp_save(tmp_path / "ck", compressed=True)
    assert convert(tmp_path / "ck", tmp_path / "again", "--to", "dcp").code == 0
    target = {"model": {"w": torch.zeros(16, 8), "b": torch.zeros(8, dtype=torch.bfloat16)}, "step": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(target, checkpoint_id=tmp_path / "again", no_dist=True)
    assert torch.equal(target["model"]["w"], state()["model"]["w"])  # type: ignore[index]
    assert target["step"] == 7
    assert leftovers(tmp_path) == []


def test_missing_distcp_file_is_named(convert, tmp_path: Path) -> None:
    dcp_save(tmp_path / "ck", compressed=False)
    (tmp_path / "ck" / "__0_0.distcp").unlink()
    convert(tmp_path / "ck", tmp_path / "out.safetensors").one_line_error("__0_0.distcp", "missing")
    assert not (tmp_path / "out.safetensors").exists()


def test_truncated_distcp_file_is_named(convert, tmp_path: Path) -> None:
    dcp_save(tmp_path / "ck", compressed=False)
    data = (tmp_path / "ck" / "__0_0.distcp").read_bytes()
    (tmp_path / "ck" / "__0_0.distcp").write_bytes(data[: len(data) - 100])
    convert(tmp_path / "ck", tmp_path / "out.safetensors").one_line_error("__0_0.distcp")
    assert not (tmp_path / "out.safetensors").exists()


class Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pwned",))


def test_metadata_unpickler_admits_only_dcp_classes(convert, tmp_path: Path) -> None:
    with pytest.raises(pickle.UnpicklingError, match=r"builtins\.print"):
        RestrictedUnpickler(io.BytesIO(pickle.dumps(Evil()))).load()
    dcp_save(tmp_path / "ck", compressed=False)
    (tmp_path / "ck" / ".metadata").write_bytes(pickle.dumps(Evil()))
    convert(tmp_path / "ck", tmp_path / "out.pt").one_line_error(".metadata", "not allowed")
