"""Cheap checks on a CUDA machine: the checkpoint engine round-trips a CUDA model and optimizer (the
side-stream snapshot path), the agent's real NVML backend reads its fields, and demo_train's GPU faults
do what the fault matrix assumes. Run by pytest (`pytest -m gpu tests/gpu`, test_gpu.py) or, where
pytest is not installed, directly: `python3 tests/gpu/gpu_checks.py` (a PASS/FAIL line per check).
"""

from __future__ import annotations

import copy
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def _cuda_job(seed: int) -> tuple[Any, Any]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 8)).cuda()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def _train(model: Any, optimizer: Any, steps: int) -> None:
    for i in range(steps):
        x = torch.randn(32, 64, generator=torch.Generator().manual_seed(i)).cuda()
        model(x).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def _checkpointer(path: Path) -> Any:
    from kedge.ckpt.engine.checkpointer import Checkpointer

    return Checkpointer(str(path), rank=0, world_size=1, host_cache_bytes=64 << 20, slab_bytes=4 << 20)


def checkpoint_engine_round_trips_cuda_state(tmp_path: Path) -> None:
    model, optimizer = _cuda_job(0)
    _train(model, optimizer, 3)
    expected = copy.deepcopy({"model": model.state_dict(), "optim": optimizer.state_dict()})
    with _checkpointer(tmp_path) as ck:
        handle = ck.save(3, {"model": model, "optim": optimizer})
        _train(model, optimizer, 2)  # training goes on while the snapshot drains
        assert handle.wait("local", timeout_s=60)
    fresh, fresh_opt = _cuda_job(1)
    _train(fresh, fresh_opt, 1)
    with _checkpointer(tmp_path) as ck:
        assert ck.load({"model": fresh, "optim": fresh_opt}) == 3
    for key, value in expected["model"].items():
        got = fresh.state_dict()[key]
        assert got.is_cuda and torch.equal(got, value), key
    for index, per_param in expected["optim"]["state"].items():
        for key, value in per_param.items():
            assert torch.equal(
                torch.as_tensor(fresh_opt.state_dict()["state"][index][key]).cpu(),
                torch.as_tensor(value).cpu(),
            ), (index, key)


def real_nvml_backend_reads_its_fields(tmp_path: Path) -> None:
    from kedge.agent.nvml_real import RealNvml

    backend = RealNvml()
    try:
        assert backend.gpu_count() >= torch.cuda.device_count()
        gpu = backend.snapshot(0)
        assert gpu.uuid.startswith("GPU-")
        assert 0 < gpu.temperature_c < 120
        assert gpu.power_w > 0
        assert gpu.sm_clock_mhz > 0
        assert gpu.pcie_gen_max >= gpu.pcie_gen > 0
        assert backend.wait_xid(0.2) == []  # a healthy GPU: the event wait times out quietly
    finally:
        backend.close()


def _run_fault(kind: str) -> subprocess.CompletedProcess[str]:
    code = (
        "import torch, kedge.hooks.demo_train as d\n"
        "dev = torch.device('cuda:0')\n"
        f"d.inject_gpu({kind!r}, dev)\n"
        "torch.cuda.synchronize()\n"
        "print('survived')\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=90)


def cudaerror_fault_poisons_the_context(tmp_path: Path) -> None:
    result = _run_fault("cudaerror")
    assert result.returncode != 0
    assert "survived" not in result.stdout
    assert "device-side assert" in result.stderr or "CUDA error" in result.stderr


def gpu_sleep_rate_is_calibrated(tmp_path: Path) -> None:
    from kedge.hooks.demo_train import gpu_cycles_per_s

    rate = gpu_cycles_per_s(torch.device("cuda:0"))
    assert 1e8 < rate < 1e10  # clock cycles per second of a real GPU (hundreds of MHz to a few GHz)


CHECKS: list[Callable[[Path], None]] = [
    checkpoint_engine_round_trips_cuda_state,
    real_nvml_backend_reads_its_fields,
    cudaerror_fault_poisons_the_context,
    gpu_sleep_rate_is_calibrated,
]


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu_checks: needs a CUDA GPU", file=sys.stderr)
        return 2
    failed = 0
    for check in CHECKS:
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory() as tmp:
            try:
                check(Path(tmp))
                outcome = "PASS"
            except Exception:
                outcome, failed = "FAIL", failed + 1
                traceback.print_exc()
        print(f"{outcome} {check.__name__} ({time.monotonic() - t0:.1f} s)", flush=True)
    print(f"{len(CHECKS) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
