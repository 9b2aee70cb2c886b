"""Real producers at several world sizes: DCP and kedge saved by 2-rank gloo jobs with DTensor shards."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from kedge.ckpt.cli import main as ckpt_main
from kedge_fixtures.processes import free_port
from safetensors.torch import load_file

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]
WORKER = Path(__file__).with_name("dcp_worker.py")
RANK_TIMEOUT_S = 120


def run_ranks(mode: str, directory: Path, world_size: int) -> None:
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "WORLD_SIZE": str(world_size), "OMP_NUM_THREADS": "1"}  # fmt: skip
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), mode, str(directory)],
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(world_size)
    ]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=RANK_TIMEOUT_S)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    codes = [p.returncode for p in procs]
    assert codes == [0] * world_size, f"{mode} at world {world_size}: {codes}\n" + "\n".join(outputs)


def convert(*args: str | Path) -> None:
    result = CliRunner().invoke(ckpt_main, ["convert", "-q", *map(str, args)], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr


def full_state() -> dict[str, torch.Tensor]:
    sys.path.insert(0, str(WORKER.parent))
    try:
        from dcp_worker import full_state as make  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(WORKER.parent))
    return make()  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def dcp_world2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("dcp") / "world2"
    run_ranks("dcp-save", directory, 2)
    assert sorted(p.name for p in directory.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    return directory


def test_dcp_world2_to_safetensors_is_the_full_state(dcp_world2: Path, tmp_path: Path) -> None:
    convert(dcp_world2, tmp_path / "out.safetensors")
    out = load_file(tmp_path / "out.safetensors")
    for name, tensor in full_state().items():
        assert out[name].dtype == tensor.dtype and torch.equal(out[name], tensor), name


def load_dcp_in_one_process(directory: Path) -> None:
    """dcp.load at world 1 (no process group), compared with the full state."""
    import torch.distributed.checkpoint as dcp

    target = {name: torch.zeros_like(t) for name, t in full_state().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # no process group: DCP says it loads as one
        dcp.load(target, checkpoint_id=directory, no_dist=True)
    for name, tensor in full_state().items():
        assert target[name].dtype == tensor.dtype and torch.equal(target[name], tensor), name


def test_dcp_to_dcp_loads_at_world_1_and_2(dcp_world2: Path, tmp_path: Path) -> None:
    convert(dcp_world2, tmp_path / "again", "--to", "dcp")
    run_ranks("dcp-load", tmp_path / "again", 2)
    load_dcp_in_one_process(tmp_path / "again")


def test_dcp_world2_to_kedge_loads_at_world_3(dcp_world2: Path, tmp_path: Path) -> None:
    convert(dcp_world2, tmp_path / "kedge", "--to", "kedge")
    run_ranks("kedge-load", tmp_path / "kedge", 3)


def test_kedge_world2_to_dcp_loads_at_world_1_and_2(tmp_path: Path) -> None:
    run_ranks("kedge-save", tmp_path / "kedge", 2)
    convert(tmp_path / "kedge", tmp_path / "dcp", "--to", "dcp")
    run_ranks("dcp-load", tmp_path / "dcp", 2)
    load_dcp_in_one_process(tmp_path / "dcp")
