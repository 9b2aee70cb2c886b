"""The golden checkpoint (format v1) pins the format: it must keep loading to the same values, and
today's writer must produce the same manifest and data files for the same input.

If this fails after a deliberate format change, bump FORMAT_VERSION, keep reading v1, and regenerate
with `python tests/unit/ckpt/test_golden.py` (a zstd library upgrade that
changes frames also shows here: then the old golden must still load, and may be regenerated).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import kedge.ckpt as kc
import pytest
import torch

pytestmark = pytest.mark.timeout(60)
GOLDEN = Path(__file__).with_name("golden")
STEP_DIR = "step-000000000007"


def golden_state() -> dict[str, Any]:
    return {
        "model": {
            "weight": (torch.arange(48, dtype=torch.float32).reshape(6, 8) / 7 - 3),
            "half": torch.linspace(-2, 2, 24, dtype=torch.float32).to(torch.bfloat16).reshape(4, 6),
            "ids": torch.arange(10, dtype=torch.int64) * 1_000_003,
            "flag": torch.tensor([True, False, True]),
            "scale": torch.tensor(0.5, dtype=torch.float64),
        },
        "meta": {"epoch": 3, "name": "golden", "betas": (0.9, 0.999), "missing": None},
    }


def write(root: Path) -> None:
    kc.save(root, golden_state(), step=7, codec="bgzstd", chunk_bytes=64, rank=0, world_size=1, threads=1)


def manifest_doc(root: Path) -> dict[str, Any]:
    doc = json.loads((root / STEP_DIR / "manifest.json").read_bytes())
    doc.pop("created_unix_s")
    return dict(doc)


def regenerate() -> None:
    """Rewrites the golden checkpoint (run this file as a script, deliberately)."""
    shutil.rmtree(GOLDEN, ignore_errors=True)
    write(GOLDEN)
    for frag in (GOLDEN / STEP_DIR).glob("fragment-*.json"):
        frag.unlink()  # not needed to read a committed step


def test_golden_loads_to_known_values() -> None:
    want = golden_state()
    target = {"model": {k: torch.zeros_like(v) for k, v in want["model"].items()}, "meta": None}
    assert kc.load(GOLDEN, target) == 7
    for k, v in want["model"].items():
        assert torch.equal(target["model"][k], v), k
    assert target["meta"] == want["meta"]


def test_writer_reproduces_golden_bytes(tmp_path: Path) -> None:
    write(tmp_path)
    assert manifest_doc(tmp_path) == manifest_doc(GOLDEN)
    for data in sorted((GOLDEN / STEP_DIR).glob("data-*.bin")):
        assert (tmp_path / STEP_DIR / data.name).read_bytes() == data.read_bytes(), data.name


if __name__ == "__main__":
    regenerate()
