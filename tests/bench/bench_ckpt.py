"""Checkpoint stall benchmark: the same training loop with no checkpoint, torch.save, dcp.save,
dcp.async_save (default), dcp.async_save with the pinned DefaultStager, and kedge.

One run prints one table (and writes JSON with --json). Per method: stall per checkpoint p50/p99 (the
time the training thread is blocked by checkpointing: the save call plus any wait before the next
optimizer step), throughput overhead at each checkpoint interval, snapshot bandwidth, time to durable
next to the storage's measured sequential write bandwidth, peak host RAM above the start of the run,
and the compression ratio.

    .venv/bin/python tests/bench/bench_ckpt.py --device cpu --params 90M --steps 20 --intervals 10,2
    python tests/bench/bench_ckpt.py --device cuda --params 604M --steps 51 --intervals 10,2 \
        --local /tmp/kedge-bench --json /tmp/bench_ckpt.json

The model is a GPT-style stack of nn.TransformerEncoderLayer trained with AdamW (fp32 master weights,
so state bytes = 12 x params). Sizes take K/M/G suffixes (powers of 10 for --params, of 2 for bytes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil
import torch
from torch import nn

METHODS = ("none", "torch.save", "dcp.save", "dcp.async_save", "dcp.async_save+DefaultStager", "kedge")
VOCAB = 32000


def parse_count(text: str, base: int = 1000) -> int:
    units = {"K": base, "M": base**2, "G": base**3, "T": base**4}
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(float(text))


# ---- model ---------------------------------------------------------------------------------------


class TinyGPT(nn.Module):
    """Embedding, pre-norm transformer blocks with a causal mask, untied LM head."""

    def __init__(self, *, vocab: int, width: int, layers: int, heads: int, seq: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(torch.zeros(seq, width))
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True
            )
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(seq), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.pos[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x, src_mask=self.mask, is_causal=True)
        return self.head(self.norm(x))


def model_shape(params: int) -> tuple[int, int, int]:
    """(width, layers, heads) of a TinyGPT with about `params` parameters."""
    width, heads = (1536, 16) if params >= 300e6 else (768, 12) if params >= 50e6 else (256, 4)
    layers = max(1, round((params - 2 * VOCAB * width) / (12 * width * width)))
    return width, layers, heads


@dataclass
class Trainer:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    batch: int
    seq: int
    step: int = 0

    def train_step(self) -> None:
        tokens = torch.randint(0, VOCAB, (self.batch, self.seq), device=self.device)
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if self.device.type == "cuda"
            else contextlib.nullcontext()
        )
        with autocast:
            logits = self.model(tokens)
            loss = nn.functional.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten())
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1

    def state_bytes(self) -> int:
        tensors = list(self.model.state_dict().values())
        for per_param in self.optimizer.state.values():
            tensors += [v for v in per_param.values() if isinstance(v, torch.Tensor)]
        return sum(t.numel() * t.element_size() for t in tensors)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


# ---- measurement helpers -------------------------------------------------------------------------


class RssSampler:
    """Samples this process's RSS every interval_s in a thread; `peak_above(start)` per window."""

    def __init__(self, interval_s: float = 0.01) -> None:
        self._proc = psutil.Process()
        self._interval_s = interval_s
        self._peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._peak = max(self._peak, self._proc.memory_info().rss)

    def reset(self) -> int:
        rss = int(self._proc.memory_info().rss)
        self._peak = rss
        return rss

    def peak(self) -> int:
        return max(self._peak, int(self._proc.memory_info().rss))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)


def write_bandwidth(path: str, nbytes: int) -> float:
    """Bytes/s of a plain sequential write of nbytes (64 MiB blocks, fsync at the end)."""
    os.makedirs(path, exist_ok=True)
    target = os.path.join(path, "bandwidth-probe.bin")
    block = os.urandom(1 << 20) * 64
    started = time.perf_counter()
    with open(target, "wb") as out:
        written = 0
        while written < nbytes:
            n = min(len(block), nbytes - written)
            out.write(block[:n])
            written += n
        out.flush()
        os.fsync(out.fileno())
    elapsed_s = time.perf_counter() - started
    os.remove(target)
    return nbytes / elapsed_s


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


@dataclass
class RunResult:
    method: str
    interval: int
    loop_s: float
    steps: int
    stalls_s: list[float] = field(default_factory=list)
    snapshot_s: list[float] = field(default_factory=list)
    snapshot_device_s: list[float] = field(default_factory=list)
    durable_s: dict[str, list[float]] = field(default_factory=dict)
    peak_rss_above_bytes: int = 0
    stored_bytes: int = 0
    peak_pool_bytes: int = 0
    skipped: int = 0
    save_call_s: float = 0.0
    error: str = ""


# ---- methods: each returns (checkpoint(step) -> stall_s, before_step() -> stall_s, finish()) -------


@dataclass
class MethodHooks:
    checkpoint: Callable[[int], float]
    before_step: Callable[[], float] = lambda: 0.0
    finish: Callable[[], None] = lambda: None
    after_step: Callable[[], float] = lambda: 0.0


def torch_state(trainer: Trainer) -> dict[str, Any]:
    return {"model": trainer.model.state_dict(), "optim": trainer.optimizer.state_dict()}


def method_torch_save(trainer: Trainer, root: str, run: RunResult) -> MethodHooks:
    def checkpoint(step: int) -> float:
        started = time.perf_counter()
        torch.save(torch_state(trainer), os.path.join(root, f"ckpt-{step % 2}.pt"))
        elapsed_s = time.perf_counter() - started
        run.durable_s.setdefault("disk", []).append(elapsed_s)
        run.stored_bytes = os.path.getsize(os.path.join(root, f"ckpt-{step % 2}.pt"))
        return elapsed_s

    return MethodHooks(checkpoint)


def method_dcp_save(trainer: Trainer, root: str, run: RunResult) -> MethodHooks:
    import torch.distributed.checkpoint as dcp

    def checkpoint(step: int) -> float:
        started = time.perf_counter()
        dcp.save(torch_state(trainer), checkpoint_id=os.path.join(root, f"dcp-{step % 2}"), no_dist=True)
        elapsed_s = time.perf_counter() - started
        run.durable_s.setdefault("disk", []).append(elapsed_s)
        run.stored_bytes = dir_bytes(os.path.join(root, f"dcp-{step % 2}"))
        return elapsed_s

    return MethodHooks(checkpoint)


def method_dcp_async(trainer: Trainer, root: str, run: RunResult, *, stager: bool) -> MethodHooks:
    import torch.distributed.checkpoint as dcp

    pending: dict[str, Any] = {}
    stager_obj = None
    if stager:
        from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

        # Pinned, asynchronous, non-blocking: the configuration under test. Pinning and non-blocking
        # copies need CUDA, so on CPU it degrades to an asynchronous pageable copy.
        cuda = torch.cuda.is_available()
        stager_obj = DefaultStager(
            StagingOptions(
                use_pinned_memory=cuda,
                use_shared_memory=False,
                use_async_staging=True,
                use_non_blocking_copy=cuda,
            )
        )

    def wait_upload() -> float:
        started = time.perf_counter()
        future = pending.pop("upload", None)
        if future is not None:
            future.result()
        return time.perf_counter() - started

    def checkpoint(step: int) -> float:
        stall_s = wait_upload()  # DCP allows one async save at a time
        started = time.perf_counter()
        kwargs: dict[str, Any] = {"checkpoint_id": os.path.join(root, f"dcp-{step % 2}"), "no_dist": True}
        if stager_obj is not None:
            kwargs["async_stager"] = stager_obj
        response = dcp.async_save(torch_state(trainer), **kwargs)
        call_s = time.perf_counter() - started
        upload = getattr(response, "upload_completion", response)
        staging = getattr(response, "staging_completion", None)
        pending["upload"], pending["staging"] = upload, staging
        upload.add_done_callback(
            lambda _f: run.durable_s.setdefault("disk", []).append(time.perf_counter() - started)
        )
        if staging is None:
            run.snapshot_s.append(call_s)
        else:
            staging.add_done_callback(lambda _f: run.snapshot_s.append(time.perf_counter() - started))
        return stall_s + call_s

    def before_step() -> float:
        # The pinned stager copies in the background: the state must not change before it is done.
        staging = pending.pop("staging", None)
        if staging is None:
            return 0.0
        started = time.perf_counter()
        staging.result()
        return time.perf_counter() - started

    def finish() -> None:
        wait_upload()
        run.stored_bytes = max(dir_bytes(os.path.join(root, f"dcp-{i}")) for i in (0, 1))
        if stager_obj is not None:
            stager_obj.close()

    return MethodHooks(checkpoint, before_step, finish)


def method_kedge(trainer: Trainer, root: str, run: RunResult, args: argparse.Namespace) -> MethodHooks:
    import kedge.ckpt.engine.checkpointer as kc

    ck = kc.Checkpointer(
        root,
        remote=args.remote,
        host_cache_bytes=args.host_cache_bytes,
        compression=args.compression,
        keep_local=2,
        writer_threads=args.writer_threads,
        rank=0,
        world_size=1,
    )
    handles: list[Any] = []
    state = {"model": trainer.model, "optim": trainer.optimizer}
    ck.wait_pool_ready(600)  # the pool is allocated and pinned once, at start-up, outside the loop

    def prehook_wait_s() -> float:
        return ck.metrics.get("prehook_wait_s")

    last_wait = [prehook_wait_s()]

    def checkpoint(step: int) -> float:
        started = time.perf_counter()
        handles.append(ck.save(step, state))
        return time.perf_counter() - started

    def before_step() -> float:
        # The pre-hook runs inside optimizer.step(); its wait is read after the step from the metric.
        return 0.0

    def after_step() -> float:
        now = prehook_wait_s()
        waited_s, last_wait[0] = now - last_wait[0], now
        return waited_s

    def finish() -> None:
        ck.wait("remote" if args.remote else "local")
        for handle in handles:
            if handle.snapshot_device_s() is not None:
                run.snapshot_device_s.append(handle.snapshot_device_s())
            for level in ("host", "local", "remote"):
                seconds = handle.seconds_to(level)
                if seconds is not None:
                    (run.snapshot_s if level == "host" else run.durable_s.setdefault(level, [])).append(
                        seconds
                    )
        run.stored_bytes = int(ck.metrics.get("encoded_bytes") / max(1, ck.metrics.get("committed_local")))
        run.peak_pool_bytes = ck.pool_bytes() + ck.config.slab_bytes
        run.skipped = int(ck.metrics.get("skipped_host"))
        run.save_call_s = ck.metrics.get("save_call_s") / max(1, ck.metrics.get("saves") + run.skipped)
        ck.close()

    return MethodHooks(checkpoint, before_step, finish, after_step)


def dir_bytes(path: str) -> int:
    if not os.path.isdir(path):
        return 0
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


# ---- the loop ------------------------------------------------------------------------------------


def make_hooks(
    method: str, trainer: Trainer, root: str, run: RunResult, args: argparse.Namespace
) -> MethodHooks:
    if method == "none":
        return MethodHooks(lambda step: 0.0)
    if method == "torch.save":
        return method_torch_save(trainer, root, run)
    if method == "dcp.save":
        return method_dcp_save(trainer, root, run)
    if method == "dcp.async_save":
        return method_dcp_async(trainer, root, run, stager=False)
    if method == "dcp.async_save+DefaultStager":
        return method_dcp_async(trainer, root, run, stager=True)
    return method_kedge(trainer, root, run, args)


def steps_for(method: str, args: argparse.Namespace) -> int:
    """Slow baselines (seconds per checkpoint) run --baseline-steps; the rest run --steps."""
    return args.steps if method in ("none", "kedge") else args.baseline_steps


def run_method(
    method: str, interval: int, trainer: Trainer, args: argparse.Namespace, rss: RssSampler
) -> RunResult:
    root = os.path.join(args.local, method.replace("+", "_"))
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root, exist_ok=True)
    steps = steps_for(method, args)
    run = RunResult(method=method, interval=interval, loop_s=0.0, steps=steps)
    start_rss = rss.reset()
    try:
        hooks = make_hooks(method, trainer, root, run, args)
        trainer.sync()
        started = time.perf_counter()
        for i in range(steps):
            pre_stall_s = hooks.before_step()
            trainer.train_step()
            stall_s = pre_stall_s + hooks.after_step()
            if run.stalls_s and stall_s:
                run.stalls_s[-1] += stall_s  # waits before this step belong to the last checkpoint
            # A checkpoint is always followed by a step, so that the wait it causes there is counted.
            if method != "none" and (i + 1) % interval == 0 and i + 1 < steps:
                run.stalls_s.append(hooks.checkpoint(trainer.step))
        trainer.sync()
        run.loop_s = time.perf_counter() - started
        hooks.finish()
    except Exception as exc:  # a crashing baseline is a result, not the end of the benchmark
        run.error = f"crashed: {type(exc).__name__}: {exc}"[:300]
    run.peak_rss_above_bytes = rss.peak() - start_rss
    shutil.rmtree(root, ignore_errors=True)
    return run


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
    }
    info["ram_bytes"] = psutil.virtual_memory().total
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def summarize(
    runs: list[RunResult],
    baseline: dict[int, float],
    state_bytes: int,
    bandwidth: dict[str, float],
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    rows = []
    for method in args.methods:
        mine = [r for r in runs if r.method == method]
        stalls = [s for r in mine for s in r.stalls_s]
        row: dict[str, Any] = {"method": method, "error": next((r.error for r in mine if r.error), "")}
        row["stall_p50_s"] = percentile(stalls, 50)
        row["stall_p99_s"] = percentile(stalls, 99)
        for r in mine:
            base = baseline.get(r.interval, float("nan"))  # seconds per step without checkpoints
            row[f"overhead_every_{r.interval}"] = (
                (r.loop_s / r.steps / base - 1.0) if not r.error else float("nan")
            )
        snaps = [s for r in mine for s in r.snapshot_s]
        row["snapshot_GBps"] = state_bytes / statistics.median(snaps) / 1e9 if snaps else float("nan")
        device_snaps = [s for r in mine for s in r.snapshot_device_s]
        if device_snaps:  # CUDA: the copy alone, from the save point on the compute stream
            row["snapshot_device_GBps"] = state_bytes / statistics.median(device_snaps) / 1e9
        for level in ("disk", "local", "remote"):
            durs = [s for r in mine for s in r.durable_s.get(level, [])]
            if durs:
                row[f"durable_{level}_p50_s"] = statistics.median(durs)
                row[f"durable_{level}_GBps"] = state_bytes / statistics.median(durs) / 1e9
        row["peak_rss_above_GB"] = max((r.peak_rss_above_bytes for r in mine), default=0) / 1e9
        pool = [r.peak_pool_bytes for r in mine]
        if any(pool):
            row["pool_plus_slab_GB"] = max(pool) / 1e9
        row["skipped"] = sum(r.skipped for r in mine)
        row["snapshots"] = len(snaps)
        calls = [r.save_call_s for r in mine if r.save_call_s]
        if calls:
            row["save_call_mean_s"] = statistics.mean(calls)
        stored = max((r.stored_bytes for r in mine), default=0)
        row["compression_ratio"] = state_bytes / stored if stored else float("nan")
        rows.append(row)
    return rows


def print_table(rows: list[dict[str, Any]], intervals: list[int], bandwidth: dict[str, float]) -> None:
    def fmt(value: Any, spec: str) -> str:
        return "-" if value is None or (isinstance(value, float) and value != value) else format(value, spec)

    header = ["method", "stall p50 s", "stall p99 s"] + [f"ovh/{k}" for k in intervals]
    header += ["snap GB/s", "durable s (GB/s)", "peak RSS above start GB", "ratio", "note"]
    print(" | ".join(header))
    for row in rows:
        durable = [
            f"{lvl}:{fmt(row.get(f'durable_{lvl}_p50_s'), '.2f')}({fmt(row.get(f'durable_{lvl}_GBps'), '.2f')})"
            for lvl in ("disk", "local", "remote")
            if f"durable_{lvl}_p50_s" in row
        ]
        cells = [row["method"], fmt(row["stall_p50_s"], ".4f"), fmt(row["stall_p99_s"], ".4f")]
        cells += [fmt(row.get(f"overhead_every_{k}"), "+.1%") for k in intervals]
        snap = fmt(row["snapshot_GBps"], ".2f")
        if "snapshot_device_GBps" in row:
            snap += f" (device {row['snapshot_device_GBps']:.1f})"
        rss = fmt(row["peak_rss_above_GB"], ".2f")
        if "peak_rss_above_none_GB" in row:
            rss += f" ({row['peak_rss_above_none_GB']:+.2f} vs none)"
        cells += [snap, " ".join(durable) or "-", rss]
        note = row["error"]
        if "pool_plus_slab_GB" in row:
            note = (
                f"pool+slab {row['pool_plus_slab_GB']:.2f} GB, save() {row.get('save_call_mean_s', 0) * 1e3:.1f} ms,"
                f" snapshots {row['snapshots']}, skipped {row['skipped']}"
            )
        cells += [fmt(row["compression_ratio"], ".2f"), note]
        print(" | ".join(cells))
    print(
        "storage write bandwidth (plain sequential write, same size): "
        + ", ".join(f"{k}={v / 1e9:.2f} GB/s" for k, v in bandwidth.items())
    )


def build_trainer(args: argparse.Namespace) -> Trainer:
    torch.manual_seed(0)
    device = torch.device(args.device)
    width, layers, heads = model_shape(args.params)
    model = TinyGPT(vocab=VOCAB, width=width, layers=layers, heads=heads, seq=args.seq).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    trainer = Trainer(model, optimizer, device, args.batch, args.seq)
    for _ in range(2):  # creates the optimizer state and warms up kernels
        trainer.train_step()
    trainer.sync()
    return trainer


@contextlib.contextmanager
def sampling() -> Iterator[RssSampler]:
    sampler = RssSampler()
    try:
        yield sampler
    finally:
        sampler.close()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--params", default="90M", help="model parameters (K/M/G, powers of 10)")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per method and interval")
    parser.add_argument(
        "--baseline-steps",
        type=int,
        default=None,
        help="timed steps of the slow baselines (torch.save, dcp.*); default: --steps",
    )
    parser.add_argument("--intervals", default="10,2", help="checkpoint every N steps, comma separated")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--seq", type=int, default=None)
    parser.add_argument("--local", default="/tmp/kedge-bench", help="local storage path")
    parser.add_argument("--remote", default=None, help="kedge remote level URL (optional)")
    parser.add_argument(
        "--host-cache-bytes", default=None, help="kedge pool size (K/M/G, powers of 2); default: state + 10%%"
    )
    parser.add_argument("--writer-threads", type=int, default=None)
    parser.add_argument("--compression", default="zstd", help="kedge compression: zstd or none")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--json", default=None, help="write the results as JSON to this path")
    args = parser.parse_args(argv)
    args.params = parse_count(args.params)
    if args.baseline_steps is None:
        args.baseline_steps = args.steps
    args.intervals = [int(k) for k in args.intervals.split(",")]
    args.methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; known: {', '.join(METHODS)}")
    if args.batch is None:
        args.batch = 8 if args.device == "cuda" else 1
    if args.seq is None:
        args.seq = 512 if args.device == "cuda" else 64
    if args.writer_threads is None:
        args.writer_threads = 4 if args.device == "cuda" else 2
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # DCP warns on every call (single process, overwrite, pinning without CUDA); the table says enough.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.distributed\..*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    trainer = build_trainer(args)
    state_bytes = trainer.state_bytes()
    if args.host_cache_bytes is None:
        args.host_cache_bytes = int(state_bytes * 1.1) + (64 << 20)
    else:
        args.host_cache_bytes = parse_count(args.host_cache_bytes, base=1024)
    info = machine()
    print(f"machine: {info}")
    print(
        f"model: params={sum(p.numel() for p in trainer.model.parameters()) / 1e6:.1f}M state={state_bytes / 1e9:.2f} GB device={args.device} batch={args.batch} seq={args.seq}"
    )
    bandwidth = {"local": write_bandwidth(args.local, state_bytes)}
    runs: list[RunResult] = []
    with sampling() as rss:
        step_s = measure_step(trainer)
        copy_s = measure_copy(trainer)
        print(
            f"training step {step_s:.3f} s, one memory copy of the state {copy_s:.3f} s, kedge pool {args.host_cache_bytes / 1e9:.2f} GB"
        )
        baseline: dict[int, float] = {}
        if "none" in args.methods:
            base = run_method("none", args.steps, trainer, args, rss)
            runs.append(base)
            baseline = dict.fromkeys(args.intervals, base.loop_s / base.steps)
        for method in [m for m in args.methods if m != "none"]:
            for interval in args.intervals:
                run = run_method(method, interval, trainer, args, rss)
                runs.append(run)
                print(
                    f"  {method} every {interval}: loop {run.loop_s:.2f} s, stalls {[round(s, 4) for s in run.stalls_s]} {run.error}",
                    flush=True,
                )
        if "none" in args.methods and len(args.methods) > 1:
            # The no-checkpoint loop again, after the methods: the baseline is the mean of both runs,
            # so drift over the benchmark (clocks, allocator state) is not charged to one method.
            again = run_method("none", args.steps, trainer, args, rss)
            runs.append(again)
            per_step = [r.loop_s / r.steps for r in runs if r.method == "none"]
            print(f"  none: {', '.join(f'{x * 1e3:.1f}' for x in per_step)} ms per step", flush=True)
            baseline = dict.fromkeys(args.intervals, statistics.mean(per_step))
    rows = summarize(runs, baseline, state_bytes, bandwidth, args)
    none_peak = next((r["peak_rss_above_GB"] for r in rows if r["method"] == "none"), None)
    for row in rows:  # training alone moves RSS too (gradients, optimizer temporaries): subtract it
        if none_peak is not None and row["method"] != "none":
            row["peak_rss_above_none_GB"] = row["peak_rss_above_GB"] - none_peak
    print_table(rows, args.intervals, bandwidth)
    if args.json:
        payload = {
            "machine": info,
            "args": {k: v for k, v in vars(args).items()},
            "state_bytes": state_bytes,
            "step_s": step_s,
            "state_copy_s": copy_s,
            "storage_write_Bps": bandwidth,
            "rows": rows,
            "runs": [asdict(r) for r in runs],
        }
        with open(args.json, "w") as out:
            json.dump(payload, out, indent=2, default=str)
        print(f"json: {args.json}")
    return 0


def measure_step(trainer: Trainer, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        trainer.sync()
        started = time.perf_counter()
        trainer.train_step()
        trainer.sync()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure_copy(trainer: Trainer) -> float:
    """Seconds of one device -> host memory copy of the whole state (pinned on CUDA)."""
    tensors = list(trainer.model.state_dict().values())
    for per_param in trainer.optimizer.state.values():
        tensors += [v for v in per_param.values() if isinstance(v, torch.Tensor) and v.dim() > 0]
    pin = trainer.device.type == "cuda"
    dest = [torch.empty(t.shape, dtype=t.dtype, pin_memory=pin) for t in tensors]
    trainer.sync()
    started = time.perf_counter()
    for d, t in zip(dest, tensors, strict=True):
        d.copy_(t, non_blocking=pin)
    trainer.sync()
    elapsed_s = time.perf_counter() - started
    del dest
    empty_host_cache = getattr(torch._C, "_host_emptyCache", None)
    if pin and empty_host_cache is not None:
        empty_host_cache()  # give the probe's pinned memory back before the methods run
    return elapsed_s


if __name__ == "__main__":
    sys.exit(main())
