"""Benchmark of the kedge format: save/load vs torch.save/torch.load vs torch.distributed.checkpoint
(DCP), and load-with-reshard vs same-layout load. Prints a table (medians of --runs) and the machine.

    .venv/bin/python tests/bench/bench_format.py [--size-mb 256] [--runs 3] [--device cpu|cuda] [--dir PATH]

All methods write to and read from the same directory (--dir; default a temporary directory), so
they share the storage and the page cache. The reshard case runs in one process: the state is saved
as 2 ranks' row shards (two threads, each a rank writing its own shard; rank 0 commits), then loaded
into 3 ranks' placements (every rank's load in turn, total bytes = the whole state) and compared
with loading the same 2-rank layout it was saved in.
Goals: reshard load <= 1.5x same-layout load; kedge save and load throughput >= DCP's.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import kedge.ckpt as kc
import torch
import torch.distributed.checkpoint as dcp
from kedge.ckpt.state import LocalShard


def make_state(size_mb: int, device: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    n_tensors = 16
    per = size_mb * (1 << 20) // n_tensors
    state = {}
    for i in range(n_tensors):
        dtype = torch.bfloat16 if i % 2 else torch.float32
        rows = per // (1024 * (2 if dtype == torch.bfloat16 else 4))
        state[f"layer{i}.weight"] = torch.randn(rows, 1024, generator=g).to(dtype).to(device)
    return state


def empty_like(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: torch.empty_like(v) for k, v in state.items()}


def timed(fn: Callable[[], Any], runs: int, before: Callable[[], Any] | None = None) -> float:
    times = []
    for _ in range(runs):
        if before is not None:
            before()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def fresh(path: str) -> Callable[[], None]:
    return lambda: shutil.rmtree(path, ignore_errors=True)


def row_shards(state: dict[str, torch.Tensor], rank: int, world: int) -> dict[str, LocalShard]:
    out = {}
    for k, v in state.items():
        rows = v.shape[0]
        lo, hi = rows * rank // world, rows * (rank + 1) // world
        out[k] = LocalShard(
            v[lo:hi].contiguous() if v.device.type == "cpu" else v[lo:hi], (lo, 0), tuple(v.shape)
        )
    return out


def save_world(path: str, state: dict[str, torch.Tensor], world: int, codec: str) -> None:
    def rank_save(rank: int) -> None:
        kc.save(path, row_shards(state, rank, world), codec=codec, rank=rank, world_size=world)

    threads = [threading.Thread(target=rank_save, args=(r,)) for r in range(1, world)]
    for t in threads:
        t.start()
    rank_save(0)
    for t in threads:
        t.join()


def load_world(path: str, state: dict[str, torch.Tensor], world: int) -> None:
    for rank in range(world):
        targets: dict[str, Any] = row_shards(empty_like(state), rank, world)
        kc.load(path, targets, rank=rank, world_size=world)


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (
        f"{model}, {os.cpu_count()} cores{gpu}, torch {torch.__version__}, python {platform.python_version()}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mb", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    args = ap.parse_args()
    base = tempfile.mkdtemp(prefix="kedge-bench-", dir=args.dir)
    state = make_state(args.size_mb, args.device)
    nbytes = sum(v.numel() * v.element_size() for v in state.values())
    rows: list[tuple[str, float, float]] = []
    try:
        p = f"{base}/torch.pt"
        rows.append(("torch.save / torch.load", timed(lambda: torch.save(state, p), args.runs),
                     timed(lambda: torch.load(p, map_location=args.device), args.runs)))  # fmt: skip
        d = f"{base}/dcp"
        rows.append(("torch.distributed.checkpoint", timed(lambda: dcp.save(state, checkpoint_id=d), args.runs, fresh(d)),
                     timed(lambda: dcp.load(empty_like(state), checkpoint_id=d), args.runs)))  # fmt: skip
        for codec in ("raw", "bgzstd"):
            k = f"{base}/kedge-{codec}"
            rows.append((f"kedge ({codec})", timed(lambda k=k, c=codec: kc.save(k, state, codec=c), args.runs, fresh(k)),
                         timed(lambda k=k: kc.load(k, empty_like(state)), args.runs)))  # fmt: skip
        r = f"{base}/kedge-w2"
        save_world(r, state, 2, "raw")
        same = timed(lambda: load_world(r, state, 2), args.runs)
        reshard = timed(lambda: load_world(r, state, 3), args.runs)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    gb = nbytes / 1e9
    print(f"machine: {machine()}")
    print(
        f"state: {len(state)} tensors, {nbytes / (1 << 20):.0f} MiB on {args.device}; medians of {args.runs} runs"
    )
    print(f"{'method':<30} {'save s':>8} {'save GB/s':>10} {'load s':>8} {'load GB/s':>10}")
    for name, save_s, load_s in rows:
        print(f"{name:<30} {save_s:>8.3f} {gb / save_s:>10.2f} {load_s:>8.3f} {gb / load_s:>10.2f}")
    print(f"{'kedge load, saved at world 2:':<30}")
    print(f"{'  same layout (2 ranks)':<30} {'':>8} {'':>10} {same:>8.3f} {gb / same:>10.2f}")
    print(f"{'  resharded to 3 ranks':<30} {'':>8} {'':>10} {reshard:>8.3f} {gb / reshard:>10.2f}")
    print(f"reshard / same-layout = {reshard / same:.2f}x (goal <= 1.5x)")
    dcp_save, dcp_load = rows[1][1], rows[1][2]
    for name, save_s, load_s in rows[2:]:
        print(
            f"{name}: save {dcp_save / save_s:.2f}x DCP throughput, load {dcp_load / load_s:.2f}x DCP (goal >= 1x)"
        )


if __name__ == "__main__":
    main()
