"""Baseline for the GPU fault matrix: what plain PyTorch does when one NCCL rank dies or hangs.

Two ranks all-reduce in a loop; after a few steps rank 1 is SIGKILLed (or SIGSTOPped). We time how
long the survivor takes to exit (or to raise) with a given process-group timeout, and whether
anything names the culprit. Run on a machine with >= 2 GPUs:

    python tests/gpu/baseline_pg_timeout.py --timeout-s 20 --fault sigkill
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time

from gpu_machine import machine_line

WORKER = r"""
import datetime, os, sys, time, torch, torch.distributed as dist
rank = int(os.environ["RANK"])
torch.cuda.set_device(rank)
dist.init_process_group("nccl", timeout=datetime.timedelta(seconds=float(os.environ["PG_TIMEOUT_S"])))
x = torch.ones(1 << 20, device="cuda")
step = 0
while True:
    dist.all_reduce(x)
    torch.cuda.synchronize()
    x.fill_(1.0)
    step += 1
    print(f"step {step} rank {rank} t={time.monotonic():.3f}", flush=True)
    time.sleep(0.05)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_once(timeout_s: float, fault: str, deadline_s: float) -> dict[str, object]:
    port = free_port()
    procs = []
    for rank in range(2):
        env = dict(
            os.environ,
            RANK=str(rank),
            WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            PG_TIMEOUT_S=str(timeout_s),
            NCCL_NVLS_ENABLE="0",
            TORCH_SYMM_MEM_DISABLE_MULTICAST="1",
            NVSHMEM_DISABLE_NVLS="1",
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", WORKER],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    survivor, victim = procs
    # wait until both ranks made progress
    seen = 0
    while seen < 5:
        line = survivor.stdout.readline() if survivor.stdout else ""
        if not line:
            break
        seen += line.startswith("step")
    t_fault = time.monotonic()
    victim.send_signal(signal.SIGKILL if fault == "sigkill" else signal.SIGSTOP)
    try:
        out, _ = survivor.communicate(timeout=deadline_s)
        exit_s = time.monotonic() - t_fault
        code = survivor.returncode
    except subprocess.TimeoutExpired:
        survivor.kill()
        out, _ = survivor.communicate()
        exit_s, code = float("nan"), None
    victim.kill()
    victim.wait()
    tail = [ln for ln in (out or "").splitlines() if ln and not ln.startswith("step")][-3:]
    return {
        "fault": fault,
        "pg_timeout_s": timeout_s,
        "survivor_exit_s": round(exit_s, 1),
        "survivor_code": code,
        "names_culprit": any("rank 1" in ln.lower() for ln in tail),
        "last_lines": tail,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--timeout-s", type=float, default=20.0)
    ap.add_argument("--fault", choices=["sigkill", "sigstop"], default="sigkill")
    ap.add_argument("--deadline-s", type=float, default=300.0)
    ap.add_argument("--json", default="", help="also write the result here")
    args = ap.parse_args()
    print(machine_line(), flush=True)
    result = run_once(args.timeout_s, args.fault, args.deadline_s)
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
