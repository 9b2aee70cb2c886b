"""demo_train's GPU-only faults are refused on a CPU rank (the worker exits with one line)."""

from __future__ import annotations

import pytest
import torch
from kedge.hooks import demo_train

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("kind", ["gpuhang", "cudaerror", "gpustraggler1.2"])
def test_gpu_fault_on_cpu_is_refused(monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    monkeypatch.setenv("KEDGE_DEMO_FAULT", f"{kind}:1:25")
    monkeypatch.setenv("KEDGE_INCARNATION", "1")
    with pytest.raises(SystemExit, match="needs CUDA"):
        demo_train.Faults(1, torch.device("cpu"), 0.05)


def test_cpu_faults_and_other_ranks_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEDGE_DEMO_FAULT", "gpuhang:1:25,straggler1.5:0:30")
    monkeypatch.setenv("KEDGE_INCARNATION", "1")
    faults = demo_train.Faults(0, torch.device("cpu"), 0.05)  # rank 0 only has the host straggler
    assert faults.at(30, "", 0) == "straggler1.5"
    assert faults.slow == 1.5 and faults.gpu_sleep_cycles == 0
