"""Telemetry overhead: step time of a 2-rank DDP job (MLP: matmuls + gradient all_reduce overlapped
with backward) with kedge hooks on vs off, with and without CUDA_DEVICE_MAX_CONNECTIONS=1.

"on" is what a rank under the agent runs: `kedge.hooks.init()` before the process group (it arms
Flight Recorder through TORCH_FR_BUFFER_SIZE), the progress page and its side thread polling Flight
Recorder, and `kh.step()` every step. No agent runs here: the hooks work without one (no socket, so
no telemetry records are sent; the page and Flight Recorder polling are the per-step cost). "off"
imports no kedge at all. Each (setting, hooks) pair is a fresh pair of processes, interleaved over
`--repeats` rounds (order alternates); per launch the median step time after warm-up, per pair the
median over rounds. Step times on CUDA come from events on the default stream (no per-step sync).

    python3 tests/gpu/telemetry_overhead.py --json overhead.json                  # 2 GPUs, NCCL
    .venv/bin/python tests/gpu/telemetry_overhead.py --device cpu --repeats 2     # gloo
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpu_machine import machine_info, machine_line, print_table

GOAL_PCT = 1.0


@dataclass(kw_only=True, slots=True)
class Shape:
    """The workload's size (per device kind)."""

    width: int
    layers: int
    batch: int
    steps: int
    warmup: int


SHAPES = {
    "cuda": Shape(width=4096, layers=8, batch=2048, steps=150, warmup=20),
    "cpu": Shape(width=256, layers=4, batch=256, steps=40, warmup=10),
}


# --- worker (one rank) ---------------------------------------------------------------------------
def worker() -> int:
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel

    hooks_on = os.environ["BENCH_HOOKS"] == "1"
    kh: Any = None
    runtime = None
    if hooks_on:
        import kedge.hooks as kh

        runtime = kh.init()  # before the process group: arms Flight Recorder
    shape = Shape(**json.loads(os.environ["BENCH_SHAPE"]))
    cuda = os.environ["BENCH_DEVICE"] == "cuda"
    device = torch.device(f"cuda:{int(os.environ['LOCAL_RANK'])}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
    dist.init_process_group("nccl" if cuda else "gloo")
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(shape.layers):
        layers += [nn.Linear(shape.width, shape.width), nn.GELU()]
    model = DistributedDataParallel(nn.Sequential(*layers).to(device), device_ids=[device] if cuda else None)
    opt = torch.optim.SGD(model.parameters(), lr=1e-6)
    x = torch.randn(shape.batch, shape.width, device=device)
    marks: list[Any] = []
    for i in range(shape.warmup + shape.steps + 1):
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if kh is not None:
            kh.step(i)
        if i >= shape.warmup:
            marks.append(_mark(torch, cuda))
    step_ms = _durations_ms(torch, cuda, marks)
    out = {
        "rank": dist.get_rank(),
        "hooks_active": runtime is not None,
        "flight_recorder": bool(runtime is not None and runtime._recorder.available),
        "median_ms": statistics.median(step_ms),
        "p90_ms": sorted(step_ms)[int(0.9 * (len(step_ms) - 1))],
    }
    dist.barrier()
    if kh is not None:
        kh.shutdown()
    dist.destroy_process_group()
    if out["rank"] == 0:
        Path(os.environ["BENCH_RESULT"]).write_text(json.dumps(out))
    return 0


def _mark(torch: Any, cuda: bool) -> Any:
    if not cuda:
        return time.perf_counter()
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    return event


def _durations_ms(torch: Any, cuda: bool, marks: list[Any]) -> list[float]:
    if cuda:
        torch.cuda.synchronize()
        return [float(a.elapsed_time(b)) for a, b in itertools.pairwise(marks)]
    return [(b - a) * 1000.0 for a, b in itertools.pairwise(marks)]


# --- parent --------------------------------------------------------------------------------------
@dataclass(kw_only=True, slots=True)
class Launch:
    """One 2-rank run of one configuration."""

    connections: str
    hooks: bool
    round: int
    median_ms: float | None = None
    p90_ms: float | None = None
    hooks_active: bool = False
    flight_recorder: bool = False
    error: str = ""
    wall_s: float = 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(run: Launch, device: str, shape: Shape, tmp: Path, timeout_s: float) -> Launch:
    t0 = time.monotonic()
    result = tmp / f"result-{run.connections}-{int(run.hooks)}-{run.round}.json"
    port = free_port()
    procs = []
    for rank in range(2):
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("KEDGE_", "TORCH_FR", "TORCH_NCCL_T"))
        }
        env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), BENCH_DEVICE=device)
        env.update(BENCH_HOOKS=str(int(run.hooks)), BENCH_RESULT=str(result))
        env.update(BENCH_SHAPE=json.dumps(_shape_dict(shape)))
        env.setdefault("NCCL_NVLS_ENABLE", "0")
        if run.hooks:
            env["KEDGE_PROGRESS_DIR"] = str(tmp / f"pages-{run.round}")
        if run.connections != "unset":
            env["CUDA_DEVICE_MAX_CONNECTIONS"] = run.connections
        else:
            env.pop("CUDA_DEVICE_MAX_CONNECTIONS", None)
        log = tmp / f"rank{rank}-{run.connections}-{int(run.hooks)}-{run.round}.log"
        with open(log, "w") as logf:
            cmd = [sys.executable, __file__, "--worker"]
            procs.append(subprocess.Popen(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT))
    try:
        _reap(procs, timeout_s, run)
    finally:
        for proc in procs:  # interrupted (SIGTERM from `timeout`): no rank is left behind
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if result.exists():
        data = json.loads(result.read_text())
        run.median_ms, run.p90_ms = data["median_ms"], data["p90_ms"]
        run.hooks_active, run.flight_recorder = data["hooks_active"], data["flight_recorder"]
    else:
        logs = [tmp / f"rank{r}-{run.connections}-{int(run.hooks)}-{run.round}.log" for r in range(2)]
        tails = [" | ".join(p.read_text().strip().splitlines()[-2:]) for p in logs]
        run.error = f"{run.error or 'no result'}: {' / '.join(t for t in tails if t)[:300]}"
    run.wall_s = round(time.monotonic() - t0, 1)
    return run


def _shape_dict(shape: Shape) -> dict[str, int]:
    return {f: getattr(shape, f) for f in ("width", "layers", "batch", "steps", "warmup")}


def _reap(procs: list[subprocess.Popen[bytes]], timeout_s: float, run: Launch) -> None:
    deadline = time.monotonic() + timeout_s
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            run.error = f"timed out after {timeout_s:.0f} s"
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.returncode and not run.error:
            run.error = f"a rank exited {proc.returncode}"


def summarize(runs: list[Launch], settings: list[str]) -> list[list[str]]:
    rows = []
    for conn in settings:
        off = [r.median_ms for r in runs if r.connections == conn and not r.hooks and r.median_ms]
        on = [r.median_ms for r in runs if r.connections == conn and r.hooks and r.median_ms]
        if not off or not on:
            rows.append([conn, "-", "-", "-", "-", "no result"])
            continue
        off_ms, on_ms = statistics.median(off), statistics.median(on)
        pct = (on_ms - off_ms) / off_ms * 100.0
        spread = (max(off) - min(off)) / off_ms * 100.0
        verdict = "met" if pct <= GOAL_PCT else "MISSED"
        if spread > GOAL_PCT and abs(pct) < spread:  # launches of the same setting differ by more
            verdict = "inconclusive: noise"
        rows.append(
            [
                conn,
                f"{off_ms:.2f}",
                f"{on_ms:.2f}",
                f"{pct:+.2f}",
                f"{spread:.2f}",
                f"{verdict} (<= {GOAL_PCT}%)",
            ]
        )
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds of every configuration")
    p.add_argument("--connections", default="", help="CUDA_DEVICE_MAX_CONNECTIONS settings (unset,1)")
    p.add_argument("--steps", type=int, default=0, help="timed steps per launch (0: the device default)")
    p.add_argument("--launch-timeout-s", type=float, default=90.0)
    p.add_argument("--budget-s", type=float, default=0.0, help="no new launch after this (0: none)")
    p.add_argument("--json", default="")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker()
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
            print("telemetry_overhead: --device cuda needs 2 CUDA GPUs", file=sys.stderr)
            return 2
    settings = [s for s in (args.connections or ("unset,1" if args.device == "cuda" else "unset")).split(",")]
    shape = SHAPES[args.device]
    if args.steps:
        shape.steps = args.steps
    info = machine_info()
    print(f"{machine_line(info)}; backend {'nccl' if args.device == 'cuda' else 'gloo'}", flush=True)
    print(
        f"workload: DDP MLP {shape.layers}x{shape.width}, batch {shape.batch}, {shape.steps} steps",
        flush=True,
    )
    deadline = time.monotonic() + (args.budget_s if args.budget_s > 0 else 1e9)
    runs: list[Launch] = []
    with tempfile.TemporaryDirectory(prefix="kedge-overhead-") as tmp:
        for rnd in range(args.repeats):
            order = [False, True] if rnd % 2 == 0 else [True, False]
            for conn in settings:
                for hooks in order:
                    if time.monotonic() > deadline:
                        print(f"budget spent: round {rnd} not complete", flush=True)
                        break
                    run = launch(
                        Launch(connections=conn, hooks=hooks, round=rnd),
                        args.device,
                        shape,
                        Path(tmp),
                        args.launch_timeout_s,
                    )
                    runs.append(run)
                    print(json.dumps(_as_dict(run)), flush=True)
    bad = [r for r in runs if r.hooks and r.median_ms and not r.hooks_active]
    if bad:
        print("WARNING: hooks did not start in a hooks-on launch (no agent environment?)")
    headers = ["CUDA_DEVICE_MAX_CONNECTIONS", "off ms", "on ms", "overhead %", "off spread %", "goal"]
    print()
    print_table(headers, summarize(runs, settings))
    if args.json:
        doc = {"machine": info, "device": args.device, "shape": _shape_dict(shape)}
        doc.update(runs=[_as_dict(r) for r in runs], goal_pct=GOAL_PCT)
        Path(args.json).write_text(json.dumps(doc, indent=2))
    return 0


def _as_dict(run: Launch) -> dict[str, Any]:
    return {f: getattr(run, f) for f in Launch.__dataclass_fields__}


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: launch() reaps its ranks
    sys.exit(main())
