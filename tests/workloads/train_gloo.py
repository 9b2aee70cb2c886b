"""A tiny CPU/gloo training job for agent tests, with faults injected by environment.

KEDGE_TEST_FAULT=KIND:RANK:STEP[,KIND:RANK:STEP...] (only in incarnation KEDGE_TEST_FAULT_INCARNATION,
default 1). Kinds: sigkill, sigstop, gil (a Python loop holding the GIL), sleep (blocked in C without
the GIL), gilc (blocked in C with the GIL held), pipe (os.read on a pipe nobody writes), exception, segfault; benign: pause (a 2 s sleep,
like a checkpoint), gc (a 1.5 s GIL-held pause, like a long GC), slow (steps 4x slower from here on).
KEDGE_TEST_STEPS (default 30), KEDGE_TEST_STEP_S (default 0.05): steps and compute time per step.
"""

import ctypes
import os
import signal
import sys
import time

import kedge.hooks as kh
import torch
import torch.distributed as dist


def faults_for(rank: int) -> dict[int, str]:
    spec = os.environ.get("KEDGE_TEST_FAULT", "")
    if os.environ.get("KEDGE_INCARNATION", "1") != os.environ.get("KEDGE_TEST_FAULT_INCARNATION", "1"):
        return {}
    out = {}
    for item in filter(None, spec.split(",")):
        kind, r, step = item.split(":")
        if int(r) == rank:
            out[int(step)] = kind
    return out


def inject(kind: str) -> None:
    mark = os.environ.get("KEDGE_TEST_FAULT_MARK")
    if mark:  # when the fault happened (wall clock ns), for verdict latency measurements
        with open(f"{mark}.rank{os.environ.get('RANK', '0')}", "w") as f:
            f.write(str(time.time_ns()))
    if kind == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif kind == "sigstop":
        os.kill(os.getpid(), signal.SIGSTOP)
    elif kind == "gil":
        while True:
            pass
    elif kind == "gilc":
        ctypes.PyDLL(None).sleep(3600)  # PyDLL keeps the GIL held during the C call
    elif kind == "sleep":
        time.sleep(3600)
    elif kind == "pipe":
        r, _w = os.pipe()
        os.read(r, 1)
    elif kind == "exception":
        raise RuntimeError("injected failure")
    elif kind == "segfault":
        ctypes.string_at(0)
    elif kind == "pause":
        time.sleep(2.0)
    elif kind == "gc":
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            pass


def main() -> int:
    kh.init()
    rank = int(os.environ.get("RANK", "0"))
    print(f"rank {rank} restore_step={kh.restore_step()}", file=sys.stderr)
    dist.init_process_group("gloo")
    steps = int(os.environ.get("KEDGE_TEST_STEPS", "30"))
    step_s = float(os.environ.get("KEDGE_TEST_STEP_S", "0.05"))
    faults = faults_for(rank)
    model = torch.nn.Linear(64, 64)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    slow = 1.0
    for step in range(steps):
        kind = faults.get(step)
        if kind == "slow":
            slow = 4.0
        elif kind:
            inject(kind)
        loss = model(torch.randn(8, 64)).pow(2).mean()
        loss.backward()
        time.sleep(step_s * slow)
        for p in model.parameters():
            dist.all_reduce(p.grad)
        opt.step()
        opt.zero_grad()
    dist.barrier()
    dist.destroy_process_group()
    print(f"rank {rank} done", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
