"""Two gloo ranks save asynchronously (a DTensor sharded across them, a replicated module, values);
the checkpoint then loads resharded into one process, bit-exact."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from kedge.ckpt.engine.checkpointer import Checkpointer
from kedge_fixtures.processes import free_port

pytestmark = [pytest.mark.timeout(240)]  # two children that import torch and start gloo

WORKER = textwrap.dedent(
    """
    import os, sys, torch, torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor
    from kedge.ckpt.engine.checkpointer import Checkpointer

    root = sys.argv[1]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    mesh = init_device_mesh("cpu", (2,))
    full = torch.arange(6 * 5, dtype=torch.float32).reshape(6, 5)
    sharded = distribute_tensor(full.clone(), mesh, [Shard(0)])
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    state = {"w": sharded, "model": model, "meta": {"epoch": 3}}
    with Checkpointer(root, host_cache_bytes=1 << 20, slab_bytes=1 << 16) as ck:
        handle = ck.save(10, state)
        handle.wait("host", timeout_s=60)  # no optimizer here: the host level gates this mutation
        sharded.to_local().add_(100.0)
        handle.wait("local", timeout_s=60)
    dist.destroy_process_group()
    print("DONE", rank, handle.status("host"))
    """
)


def test_two_rank_async_save_loads_resharded_at_world_one(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = free_port()
    procs = []
    for rank in range(2):
        env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "WORLD_SIZE": "2"}
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), str(tmp_path / "ckpt")],
                env={**os.environ, **env},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=220)
        outputs.append(out)
        assert proc.returncode == 0, err[-3000:]
    assert all("DONE" in out and "reached" in out for out in outputs)
    full = torch.arange(6 * 5, dtype=torch.float32).reshape(6, 5)
    torch.manual_seed(0)
    expected_model = torch.nn.Linear(3, 2)
    state = {"w": torch.zeros(6, 5), "model": torch.nn.Linear(3, 2), "meta": {"epoch": 0}}
    with Checkpointer(str(tmp_path / "ckpt"), rank=0, world_size=1) as ck:
        assert ck.load(state) == 10
    assert torch.equal(state["w"], full)
    assert torch.equal(state["model"].weight, expected_model.weight)
    assert state["meta"] == {"epoch": 3}
