"""Worker for test_reshard.py: one gloo job of 4 ranks runs every reshard scenario once.

Run as `python reshard_worker.py RANK WORLD PORT ROOT`; rank 0 writes ROOT/results.json.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import kedge.ckpt as kc
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.placement_types import _StridedShard

ROWS, COLS = 10, 7  # 10 rows over 3 or 4 ranks: uneven shards


def full(seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(ROWS, COLS, generator=g) * 10).to(dtype)


def mesh_of(ranks: list[int], shape: tuple[int, ...]) -> DeviceMesh:
    return DeviceMesh("cpu", torch.tensor(ranks).reshape(shape))


def dt(t: torch.Tensor, mesh: DeviceMesh, placements: list[Any]) -> DTensor:
    return distribute_tensor(t, mesh, placements)


def fsdp_over_tp(t: torch.Tensor, mesh: DeviceMesh) -> DTensor:
    """What FSDP2 makes of a TP-sharded (Shard(0) on mesh dim 1) param: the TP-local tensor chunked
    over mesh dim 0, labelled (_StridedShard(0, split_factor=tp), Shard(0))."""
    tp_local = dt(t, mesh, [Replicate(), Shard(0)]).to_local()
    coord = mesh.get_coordinate()
    assert coord is not None
    piece = torch.chunk(tp_local, mesh.mesh.shape[0], dim=0)[coord[0]].contiguous()
    placements = [_StridedShard(0, split_factor=mesh.mesh.shape[1]), Shard(0)]
    return DTensor.from_local(piece, mesh, placements, shape=t.shape, stride=t.stride())


def save_world4(root: str) -> None:
    mesh1 = mesh_of([0, 1, 2, 3], (4,))
    mesh2 = mesh_of([0, 1, 2, 3], (2, 2))
    state = {
        "row": dt(full(1), mesh1, [Shard(0)]),
        "grid": dt(full(2, torch.bfloat16), mesh2, [Shard(0), Shard(1)]),
        "mixed": dt(full(3), mesh2, [Replicate(), Shard(1)]),
        "plain": full(4),
        "meta": {"epoch": 7},
        # FSDP2 over TP: dim 0 sharded by TP first, then strided-sharded by FSDP
        "strided": fsdp_over_tp(full(5), mesh2),
    }
    kc.save(root + "/w4", state, codec="bgzstd", chunk_bytes=48)


def load_at(root: str, rank: int, world: int) -> bool:
    """Loads the world-4 checkpoint into a world of `world` ranks; True if every value matches."""
    ranks = list(range(world))
    mesh1 = mesh_of(ranks, (world,))
    mesh13 = mesh_of(ranks, (1, world))
    state: dict[str, Any] = {
        "row": dt(torch.zeros(ROWS, COLS), mesh1, [Shard(0)]),
        "grid": dt(torch.zeros(ROWS, COLS, dtype=torch.bfloat16), mesh13, [Shard(0), Shard(1)]),
        "mixed": dt(torch.zeros(ROWS, COLS), mesh1, [Replicate()]),
        "plain": torch.zeros(ROWS, COLS),
        "meta": None,
        "strided": dt(torch.zeros(ROWS, COLS), mesh1, [Shard(0)]),
    }
    if rank >= world:
        return True
    kc.load(root + "/w4", state, rank=rank, world_size=world)
    ok = state["meta"] == {"epoch": 7} and torch.equal(state["plain"], full(4))
    for name, seed, dtype in (
        ("row", 1, torch.float32),
        ("grid", 2, torch.bfloat16),
        ("mixed", 3, torch.float32),
    ):
        t = state[name]
        box = kc_box(t)
        ok = ok and torch.equal(t.to_local(), full(seed, dtype)[box])
    return bool(ok)


def kc_box(t: DTensor) -> tuple[slice, ...]:
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
    return tuple(slice(o, o + s) for o, s in zip(offset, shape, strict=True))


def model_and_opt(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    return model, torch.optim.AdamW(model.parameters(), lr=0.01)


def train(model: torch.nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(5, 8, generator=g)).pow(2).mean().backward()
        opt.step()


def fsdp_to_replicate(root: str, rank: int, world: int) -> bool:
    """FSDP-style Shard(0) params + AdamW at world 4 -> plain (replicated) on 1 rank, then 3 more steps."""
    mesh = mesh_of(list(range(world)), (world,))
    model, opt = model_and_opt(0)
    train(model, opt, 2, seed=1)
    sharded = {n: dt(p.detach(), mesh, [Shard(0)]) for n, p in model.named_parameters()}
    opt_state = {
        n: {k: (dt(v, mesh, [Shard(0)]) if v.dim() else v) for k, v in opt.state[p].items()}
        for n, p in model.named_parameters()
    }
    kc.save(root + "/fsdp", {"params": sharded, "opt": opt_state})
    if rank != 0:
        return True
    model2, opt2 = model_and_opt(99)
    train(model2, opt2, 1, seed=5)  # creates optimizer state of the right shapes
    target = {
        "params": dict(model2.named_parameters()),
        "opt": {n: dict(opt2.state[p]) for n, p in model2.named_parameters()},
    }
    with torch.no_grad():
        kc.load(root + "/fsdp", target, rank=0, world_size=1)
    train(model, opt, 3, seed=2)
    train(model2, opt2, 3, seed=2)
    return all(torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters(), strict=True))


def module_optimizer_round_trip(root: str, rank: int) -> bool:
    """nn.Module + AdamW through kc.save/kc.load (every rank replicated), then identical training."""
    model, opt = model_and_opt(0)
    train(model, opt, 2, seed=1)
    kc.save(root + "/adamw", {"model": model, "optim": opt})
    model2, opt2 = model_and_opt(123)
    kc.load(root + "/adamw", {"model": model2, "optim": opt2})
    train(model, opt, 3, seed=2)
    train(model2, opt2, 3, seed=2)
    return all(torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters(), strict=True))


def main() -> None:
    rank, world, port, root = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    results: dict[str, bool] = {}
    save_world4(root)
    for w in (1, 2, 3, 4):
        results[f"load_w{w}"] = load_at(root, rank, w)
    results["fsdp_to_replicate"] = fsdp_to_replicate(root, rank, world)
    results["adamw"] = module_optimizer_round_trip(root, rank)
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, results)
    if rank == 0:
        merged = {k: all(r[k] for r in gathered) for k in results}
        with open(root + "/results.json", "w") as f:
            json.dump(merged, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
