"""GPU checks under pytest (`pytest -m gpu tests/gpu`); skipped where CUDA is not available, so
`make test` on CPU never runs them. The bodies live in gpu_checks.py (also runnable without pytest)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_checks

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize("check", gpu_checks.CHECKS, ids=lambda c: c.__name__)
def test_gpu(check: Callable[[Path], None], tmp_path: Path) -> None:
    check(tmp_path)
