"""One rank of a gloo job that saves or loads a sharded checkpoint (run as a script by the tests).

usage: dcp_worker.py MODE DIR  with RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT in the environment.
MODE: dcp-save / kedge-save (DCP or kedge with DTensor shards), dcp-load / kedge-load (load into
other placements, then compare). Exits 0 only if every tensor is equal.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor


def full_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return {
        "model.w": torch.randn(12, 6, generator=g),
        "model.emb": torch.randn(9, 4, generator=g).to(torch.bfloat16),
        "model.b": torch.randn(6, generator=g),
        "model.steps": torch.arange(5, dtype=torch.int32),
    }


def placed(mesh: object, full: dict[str, torch.Tensor], shift: int, zero: bool) -> dict[str, object]:
    """DTensors sharded along dim `shift` (w) and the other dim (emb); b replicated; steps plain."""
    make = torch.zeros_like if zero else (lambda t: t)
    return {
        "model.w": distribute_tensor(make(full["model.w"]), mesh, [Shard(shift)]),  # type: ignore[arg-type]
        "model.emb": distribute_tensor(make(full["model.emb"]), mesh, [Shard(1 - shift)]),  # type: ignore[arg-type]
        "model.b": distribute_tensor(make(full["model.b"]), mesh, [Replicate()]),  # type: ignore[arg-type]
        "model.steps": make(full["model.steps"]),
    }


def check(state: dict[str, object], full: dict[str, torch.Tensor]) -> None:
    for name, want in full.items():
        got = state[name]
        got = got.full_tensor() if isinstance(got, DTensor) else got
        assert isinstance(got, torch.Tensor) and got.dtype == want.dtype, name
        assert torch.equal(got, want), f"rank {dist.get_rank()}: {name} differs"


def main() -> None:
    mode, directory = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo")
    try:
        mesh = init_device_mesh("cpu", (dist.get_world_size(),))
        full = full_state()
        if mode == "dcp-save":
            dcp.save(placed(mesh, full, 0, zero=False), checkpoint_id=directory)
        elif mode == "dcp-load":
            state = placed(mesh, full, 1, zero=True)
            dcp.load(state, checkpoint_id=directory)
            check(state, full)
        elif mode == "kedge-save":
            import kedge.ckpt as kc

            kc.save(directory, placed(mesh, full, 0, zero=False), step=3)
        elif mode == "kedge-load":
            import kedge.ckpt as kc

            state = placed(mesh, full, 1, zero=True)
            kc.load(directory, state)
            check(state, full)
        else:
            raise SystemExit(f"unknown mode {mode}")
        dist.barrier()
    finally:
        dist.destroy_process_group()
    os._exit(0)  # skip interpreter teardown of gloo threads; everything is checked and flushed


if __name__ == "__main__":
    main()
