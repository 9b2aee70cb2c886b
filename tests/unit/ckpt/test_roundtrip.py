"""Save and load in one process: every kind of state, errors that name the key path."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import kedge.ckpt as kc
import pytest
import torch
from kedge.ckpt.errors import FormatError, IntegrityError, NotFoundError
from kedge.ckpt.storage import Storage

pytestmark = pytest.mark.timeout(60)

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.bool, torch.uint8, torch.float64]


def test_all_is_pinned() -> None:
    assert kc.__all__ == [
        "CheckpointFailed", "Checkpointer", "CkptError", "FormatError", "IntegrityError", "LocalShard",
        "NotFoundError", "RNGState", "StorageError", "load", "save",
    ]  # fmt: skip


def test_import_does_not_import_torch() -> None:
    code = (
        "import sys, kedge.ckpt, kedge.ckpt.manifest, kedge.ckpt.storage; assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize("codec", ["raw", "zstd", "bgzstd"])
def test_tensors_of_every_dtype_round_trip(tmp_path: Path, codec: str) -> None:
    g = torch.Generator().manual_seed(0)
    state = {f"t{i}": (torch.randn(37, 5, generator=g) * 100).to(d) for i, d in enumerate(DTYPES)}
    state["scalar"] = torch.tensor(3.5)
    state["empty"] = torch.zeros(0, 4)
    kc.save(tmp_path, state, codec=codec, chunk_bytes=64)
    target = {k: torch.zeros_like(v) for k, v in state.items()}
    assert kc.load(tmp_path, target) == 0
    for k, v in state.items():
        assert torch.equal(target[k], v), k


def test_module_optimizer_values_rng(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.BatchNorm1d(4))
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    model(torch.randn(8, 6)).sum().backward()
    opt.step()
    random.seed(5)
    gen = torch.Generator().manual_seed(9)
    data = {"epoch": 3, "names": ["a", "b"], "pair": (1, 2.5), "weird": {1: "x"}, "nan": float("nan")}
    kc.save(tmp_path, {"model": model, "optim": opt, "data": data, "rng": kc.RNGState(), "gen": gen})
    want_py, want_torch = random.random(), torch.rand(1)
    model2 = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.BatchNorm1d(4))
    opt2 = torch.optim.AdamW(model2.parameters(), lr=0.5)
    gen2 = torch.Generator()
    state: dict[str, Any] = {"model": model2, "optim": opt2, "data": None, "rng": kc.RNGState(), "gen": gen2}
    kc.load(tmp_path, state)
    assert random.random() == want_py and torch.equal(torch.rand(1), want_torch)
    assert torch.equal(gen2.get_state(), gen.get_state())
    for (k, a), b in zip(model.state_dict().items(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert_same_optimizer_state(opt2.state_dict(), opt.state_dict())
    assert state["data"]["pair"] == (1, 2.5) and state["data"]["weird"] == {1: "x"}


def assert_same_optimizer_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for i, entry in a["state"].items():
        assert entry.keys() == b["state"][i].keys()
        for k, v in entry.items():
            assert torch.equal(v, b["state"][i][k]), (i, k)


class _Opaque:
    pass


def test_unsupported_type_names_key_path(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="extra/inner/0"):
        kc.save(tmp_path, {"extra": {"inner": [_Opaque()]}})
    kc.save(tmp_path, {"extra": {"inner": [_Opaque()]}}, allow_pickle=True, step=1)
    with pytest.raises(TypeError, match="allow_pickle"):
        kc.load(tmp_path, {"extra": {"inner": [None]}})
    target: dict[str, Any] = {"extra": {"inner": [None]}}
    kc.load(tmp_path, target, allow_pickle=True)
    assert isinstance(target["extra"]["inner"][0], _Opaque)


def test_mismatch_errors_and_cast(tmp_path: Path) -> None:
    kc.save(tmp_path, {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)})
    with pytest.raises(FormatError, match=r"'w'.*shape"):
        kc.load(tmp_path, {"w": torch.zeros(3, 2)})
    with pytest.raises(FormatError, match=r"'w'.*dtype float32.*cast=True"):
        kc.load(tmp_path, {"w": torch.zeros(2, 3, dtype=torch.bfloat16)})
    target = {"w": torch.zeros(2, 3, dtype=torch.float64)}
    kc.load(tmp_path, target, cast=True)
    assert target["w"].tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(NotFoundError, match="'other'"):
        kc.load(tmp_path, {"other": torch.zeros(1)})


def test_corruption_names_tensor_chunk_file(tmp_path: Path) -> None:
    kc.save(tmp_path, {"a": torch.zeros(1000), "b": torch.ones(1000)}, codec="raw")
    data = next((tmp_path / "step-000000000000").glob("data-*.bin"))
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match=r"tensor 'b' chunk 0 \(file data-00000.bin"):
        kc.load(tmp_path, {"a": torch.zeros(1000), "b": torch.zeros(1000)})


def test_checkpointer_steps_and_retention(tmp_path: Path) -> None:
    ck = kc.Checkpointer(str(tmp_path), keep_local=2)
    for step in (1, 2, 3):
        ck.save(step, {"x": torch.full((4,), float(step))})
    assert ck.steps() == [2, 3] and ck.latest_step() == 3
    target = {"x": torch.zeros(4)}
    assert ck.load(target) == 3 and target["x"][0] == 3
    assert ck.load(target, step=2) == 2 and target["x"][0] == 2
    ck.close()
    assert Storage(str(tmp_path)).all_step_dirs() == [2, 3]
