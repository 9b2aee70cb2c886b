"""Save at world 4 (gloo, 4 processes), load at worlds 1, 2, 3 and 4 into other placements, bit-exact.

One job runs every scenario (starting 4 torch processes is the expensive part on 2 cores); each test
below checks one scenario's result.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from kedge_fixtures.processes import free_port

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]
WORKER = Path(__file__).with_name("reshard_worker.py")
WORLD = 4


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bool]:
    root = tmp_path_factory.mktemp("reshard")
    port = str(free_port())
    procs = [
        subprocess.Popen([sys.executable, str(WORKER), str(r), str(WORLD), port, str(root)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for r in range(WORLD)
    ]  # fmt: skip
    outputs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=240)
            outputs.append(out.decode(errors="replace")[-3000:])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert all(p.returncode == 0 for p in procs), "\n".join(outputs)
    return dict(json.loads((root / "results.json").read_text()))


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_save_world4_load_world(results: dict[str, bool], world: int) -> None:
    """Shard(0) on 4 -> on `world`; DTensor mesh 2x2 -> 1x`world`; Replicate x Shard(1) -> Replicate;
    FSDP2-over-TP (_StridedShard(0), Shard(0)) on 2x2 -> Shard(0) on `world`."""
    assert results[f"load_w{world}"]


def test_fsdp_shard0_to_replicate_continues_training(results: dict[str, bool]) -> None:
    assert results["fsdp_to_replicate"]


def test_module_adamw_round_trip_continues_bit_identically(results: dict[str, bool]) -> None:
    assert results["adamw"]
