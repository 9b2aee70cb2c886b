"""The workload of `kedge demo` and the fault matrix: a small transformer trained with FSDP2 under
kedge, checkpointed with kedge.ckpt, resumable under another world size.

Run by the agent (launcher mode), which sets the torchrun environment plus KEDGE_*:

    kedge agent run --coordinator ADDR --nproc-per-node 2 -- python -m kedge.hooks.demo_train \\
        --ckpt file:///tmp/run --steps 200

Each step feeds a batch derived from the step number (so a resumed run sees the same data stream),
runs forward/backward/AdamW, and every `--ckpt-every` steps saves asynchronously. Rank 0 appends one
JSON line per event to `--log` (start/resume with world and incarnation, step with loss).

Faults for tests and the demo, injected in one incarnation only:
KEDGE_DEMO_FAULT=KIND:RANK:STEP[,...] in incarnation KEDGE_DEMO_FAULT_INCARNATION (default 1).
Kinds: sigkill, sigstop, gil (C call holding the GIL), nogil (blocked without the GIL), desync (skip
one collective), straggler (this rank 1.5x slower from STEP on; `straggler1.2` etc. for other
factors), pause (benign 2 s pause on one rank, like a checkpoint or GC).
GPU-only kinds (the worker refuses them without CUDA): gpuhang (a `torch.cuda._sleep` kernel that spins
for about an hour; the host runs on until its next sync point), cudaerror (an out-of-range index on
the device: a device-side assert poisons the CUDA context, surfacing at the next sync), gpustraggler
(from STEP on, a `torch.cuda._sleep` of 1.5x `--step-s` per step on this rank's stream, so its GPU
and no longer its host paces the job; `gpustraggler1.2` etc. for other factors).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import sys
import time
from typing import Any

import kedge.ckpt as kc
import kedge.hooks as kh
import torch
import torch.distributed as dist
from torch import nn


class TinyTransformer(nn.Module):
    """Embedding, a few encoder layers, and a vocabulary head."""

    def __init__(self, vocab: int, dim: int, layers: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, nhead=4, dim_feedforward=2 * dim, batch_first=True, dropout=0.0)
            for _ in range(layers)
        )
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x)
        out: torch.Tensor = self.head(x)
        return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True, help="Checkpoint root URL (file:///..., s3://...).")
    p.add_argument("--steps", type=int, default=200, help="Train until this global step.")
    p.add_argument("--ckpt-every", type=int, default=10, help="Checkpoint every this many steps.")
    p.add_argument("--step-s", type=float, default=0.1, help="Extra compute time per step (paces the job).")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--batch", type=int, default=8, help="Global batch (split over ranks).")
    p.add_argument("--seq", type=int, default=32)
    p.add_argument("--log", default="", help="Rank 0 appends JSON events here.")
    return p.parse_args(argv)


def faults_for(rank: int) -> dict[int, str]:
    """This rank's faults by step, in the incarnation that should see them."""
    incarnation = os.environ.get("KEDGE_INCARNATION", "1")
    if incarnation != os.environ.get("KEDGE_DEMO_FAULT_INCARNATION", "1"):
        return {}
    out: dict[int, str] = {}
    for item in filter(None, os.environ.get("KEDGE_DEMO_FAULT", "").split(",")):
        kind, fault_rank, step = item.split(":")
        if int(fault_rank) == rank:
            out[int(step)] = kind
    return out


def inject(kind: str) -> None:
    """Faults that stop the rank where it stands (the others then wait in their next collective)."""
    if kind == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif kind == "sigstop":
        os.kill(os.getpid(), signal.SIGSTOP)
    elif kind == "gil":
        ctypes.PyDLL(None).sleep(3600)  # PyDLL keeps the GIL held during the C call
    elif kind == "nogil":
        time.sleep(3600)
    elif kind == "pause":
        time.sleep(2.0)


GPU_FAULTS = ("gpuhang", "cudaerror", "gpustraggler")
HANG_CYCLES = 1 << 42  # ~1 h of spinning at ~1.5 GHz; the process is killed long before


def inject_gpu(kind: str, device: torch.device) -> None:
    """GPU faults that break the device, not the host."""
    if kind == "gpuhang":
        torch.cuda._sleep(HANG_CYCLES)  # type: ignore[no-untyped-call]
    elif kind == "cudaerror":
        bad = torch.tensor([1 << 30], device=device)
        torch.zeros(4, device=device)[bad] += 1.0  # device-side assert: index out of bounds
        torch.cuda.synchronize(device)  # the sticky error surfaces here (RuntimeError), as in real jobs


def gpu_cycles_per_s(device: torch.device) -> float:
    """The rate of `torch.cuda._sleep` cycles, timed once (a sync: only when the fault starts)."""
    start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
    end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
    cycles = 50_000_000
    start.record()
    torch.cuda._sleep(cycles)  # type: ignore[no-untyped-call]
    end.record()
    end.synchronize()
    return cycles / max(float(start.elapsed_time(end)) / 1000.0, 1e-6)


class Faults:
    """This rank's injected faults: one-off ones at their step, stragglers on every later step."""

    def __init__(self, rank: int, device: torch.device, step_s: float) -> None:
        self.by_step = faults_for(rank)
        self.device = device
        self.step_s = step_s
        self.slow = 1.0
        self.gpu_sleep_cycles = 0
        gpu_only = [k for k in self.by_step.values() if k.startswith(GPU_FAULTS)]
        if gpu_only and device.type != "cuda":
            raise SystemExit(f"demo_train: fault {gpu_only[0]} needs CUDA (this rank runs on {device})")

    def at(self, step: int, log_path: str, rank: int) -> str:
        """Injects this step's fault (if any) and returns its kind."""
        kind = self.by_step.get(step, "")
        if kind:
            record_fault(log_path, kind, rank, step)
        if kind.startswith("gpustraggler"):
            factor = float(kind.removeprefix("gpustraggler") or 1.5)
            self.gpu_sleep_cycles = int(factor * self.step_s * gpu_cycles_per_s(self.device))
        elif kind.startswith("straggler"):
            self.slow = float(kind.removeprefix("straggler") or 1.5)
        elif kind.startswith(GPU_FAULTS):
            inject_gpu(kind, self.device)
        elif kind and kind != "desync":
            inject(kind)
        return kind

    def per_step(self) -> None:
        """The straggler's extra GPU time, queued on this rank's stream."""
        if self.gpu_sleep_cycles:
            torch.cuda._sleep(self.gpu_sleep_cycles)  # type: ignore[no-untyped-call]


def record_fault(log_path: str, kind: str, rank: int, step: int) -> None:
    """The faulty rank notes when it broke itself (`<log>.faults`), so benchmarks can time from it."""
    if log_path:
        with open(log_path + ".faults", "a") as f:
            f.write(
                json.dumps({"t": time.time(), "event": "fault", "kind": kind, "rank": rank, "step": step})
                + "\n"
            )


class EventLog:
    """Rank 0's JSON-lines event log (one line per event, flushed: the demo reads it live)."""

    def __init__(self, path: str, rank: int) -> None:
        self._file = open(path, "a", buffering=1) if path and rank == 0 else None  # noqa: SIM115

    def write(self, event: str, **fields: Any) -> None:
        if self._file is not None:
            self._file.write(json.dumps({"t": time.time(), "event": event, **fields}) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def batch_for(
    step: int, args: argparse.Namespace, rank: int, world: int, device: torch.device
) -> torch.Tensor:
    """The global batch of `step` (same for any world size), this rank's slice of it."""
    g = torch.Generator().manual_seed(1000 + step)
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq + 1), generator=g)
    per = max(1, args.batch // world)
    return tokens[rank * per : (rank + 1) * per].to(device)


def build(args: argparse.Namespace, device: torch.device) -> tuple[nn.Module, torch.optim.Optimizer]:
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = TinyTransformer(args.vocab, args.dim, args.layers).to(device)
    for layer in model.layers:
        fully_shard(layer)
    fully_shard(model)
    return model, torch.optim.AdamW(model.parameters(), lr=3e-3)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    kh.init()
    # NCCL needs a GPU per rank; the demo's nodes share one host, so use GPUs only if there are enough
    world_env = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available() and torch.cuda.device_count() >= world_env
    gpu = int(os.environ.get("RANK", "0")) % max(torch.cuda.device_count(), 1)
    device = torch.device(f"cuda:{gpu}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    # one line per rank in the agent's log: benchmarks check that every rank got its own GPU
    print(f"demo_train rank={rank} device={device} backend={dist.get_backend()}", file=sys.stderr, flush=True)
    log = EventLog(args.log, rank)
    model, optim = build(args, device)
    ck = kc.Checkpointer(args.ckpt, keep_local=3)
    state: dict[str, Any] = {"model": model, "optim": optim}
    start = 0
    restore = kh.restore_step()
    if restore != -2 and ck.latest_step() is not None:
        start = ck.load(state, step=None if restore < 0 else restore)
    incarnation = int(os.environ.get("KEDGE_INCARNATION", "0"))
    log.write("start", step=start, world=world, incarnation=incarnation, resumed=start > 0)
    faults = Faults(rank, device, args.step_s)
    loss_sum = torch.zeros(1, device=device)
    for step in range(start + 1, args.steps + 1):
        kind = faults.at(step, args.log, rank)
        tokens = batch_for(step, args, rank, world, device)
        faults.per_step()
        time.sleep(args.step_s * faults.slow)  # the model is tiny: this stands for the compute of a real step
        logits = model(tokens[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, args.vocab), tokens[:, 1:].reshape(-1))
        loss.backward()  # type: ignore[no-untyped-call]
        optim.step()
        optim.zero_grad(set_to_none=True)
        loss_sum.copy_(loss.detach())
        if kind != "desync":  # the desync fault skips this collective once
            dist.all_reduce(loss_sum)
        kh.step(step)
        if rank == 0:  # reading the loss syncs with the device: only the logging rank does it
            log.write("step", step=step, loss=round(float(loss_sum) / world, 4), world=world)
        if step % args.ckpt_every == 0:
            ck.save(step, state)
    # Training is over: close the progress page first, so draining the last checkpoint (which may
    # hold the GIL for seconds) and the final barrier are not taken for a frozen rank.
    kh.shutdown()
    ck.close()
    dist.barrier()
    log.write("done", step=args.steps)
    log.close()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
