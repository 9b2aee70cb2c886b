"""Step-time workload for tests/bench/bench_agent.py: an MLP with gradient all-reduce per step.

BENCH_HOOKS=1 calls kedge.hooks.init() (progress page, side thread, Flight Recorder polling);
BENCH_HOOKS=0 does not (and the launcher turns Flight Recorder off). BENCH_DEVICE=cpu|cuda,
BENCH_BACKEND=gloo|nccl, BENCH_STEPS, BENCH_WIDTH. Rank 0 writes its step durations (seconds,
warm-up excluded) as JSON to BENCH_OUT.
"""

import json
import os
import time

import kedge.hooks as kh
import torch
import torch.distributed as dist

WARMUP_STEPS = 5


def main() -> None:
    hooks = os.environ.get("BENCH_HOOKS", "1") == "1"
    if hooks:
        kh.init()
    device = os.environ.get("BENCH_DEVICE", "cpu")
    if device == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(os.environ.get("BENCH_BACKEND", "gloo"))
    width = int(os.environ.get("BENCH_WIDTH", "512"))
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(4)]).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(64, width, device=device)
    durations = []
    for step in range(int(os.environ.get("BENCH_STEPS", "60"))):
        t0 = time.perf_counter()
        model(x).pow(2).mean().backward()
        for p in model.parameters():
            dist.all_reduce(p.grad)
        opt.step()  # with hooks on, the optimizer hook marks the step boundary
        opt.zero_grad()
        if device == "cuda":
            torch.cuda.synchronize()  # the benchmark's own timing, not something the hooks do
        if step >= WARMUP_STEPS:
            durations.append(time.perf_counter() - t0)
    dist.barrier()
    if dist.get_rank() == 0 and os.environ.get("BENCH_OUT"):
        with open(os.environ["BENCH_OUT"], "w") as f:
            json.dump(durations, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
