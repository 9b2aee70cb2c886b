"""Benchmark `ckpt convert`: throughput next to `cp` of the same bytes on the same disk, and peak RSS.

Run:  .venv/bin/python tests/bench/bench_convert.py [--total-mb 1024] [--runs 3] [--dir DIR]

Each conversion runs as its own `ckpt convert` process (what a user runs), median of --runs.
"wall s" is start to exit (includes the interpreter and torch import, seconds on a loaded
machine); "convert s" is the time the command itself reports for moving, verifying and committing
the data; "ratio" is convert s / cp s. The baseline is `cp -r` of the input in the same run; convert
fsyncs its output before renaming it into place (durability), so "cp+fsync" (cp, then fsync of every
copied file) is shown too, for a like-for-like comparison. Peak RSS
is the child's ru_maxrss from wait4; the table also shows it minus the RSS of a process that only
imports torch and kedge.ckpt.convert (the interpreter's own floor), next to the largest tensor.
Goals (issue 5): within 2x of cp; peak RSS under 2x the largest tensor.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

CKPT = [sys.executable, "-c", "from kedge.ckpt.cli import main; main()"]


def run_child(cmd: list[str]) -> tuple[float, int, str]:
    """(wall seconds, peak RSS bytes, stdout) of one child process; raises if it fails.

    The parent never imports torch or holds tensors: a child's ru_maxrss starts from its parent's
    RSS at fork, so a large parent would hide the child's own peak.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall_s = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise RuntimeError(f"{cmd} failed: {err.read().decode().strip()}")
        return wall_s, usage.ru_maxrss * 1024, out.read().decode()


def make_state(total_bytes: int, largest_bytes: int) -> dict[str, object]:
    import torch

    state: dict[str, object] = {}
    left, i = total_bytes, 0
    gen = torch.Generator().manual_seed(0)
    while left > 0:
        nbytes = min(largest_bytes if i == 0 else largest_bytes // 4, left)
        state[f"layers.{i}.weight"] = torch.randn(nbytes // 2, generator=gen).to(torch.bfloat16)
        left -= nbytes
        i += 1
    return state


def write_inputs(root: Path, state: dict[str, object]) -> dict[str, Path]:
    import torch
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import save_file
    from torch.distributed.checkpoint._extension import ZStandard

    paths = input_paths(root)
    save_file(state, paths["safetensors"])  # type: ignore[arg-type]
    torch.save(state, paths["torch"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.save(state, storage_writer=dcp.FileSystemWriter(paths["dcp"]), no_dist=True)
        writer = dcp.FileSystemWriter(paths["dcp-zstd"], _extensions=[ZStandard()])
        dcp.save(state, storage_writer=writer, no_dist=True)
    return paths


def input_paths(root: Path) -> dict[str, Path]:
    return {
        "safetensors": root / "in.safetensors",
        "torch": root / "in.pt",
        "dcp": root / "in_dcp",
        "dcp-zstd": root / "in_dcp_zstd",
    }


def floor_rss() -> int:
    code = "import torch, kedge.ckpt.convert.pipeline, kedge.ckpt.convert.formats"
    return run_child([sys.executable, "-c", code])[1]


def fsync_tree(path: Path) -> None:
    """What convert does before its rename: every output file flushed to disk."""
    for file in [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def bench(name: str, src: Path, dst: Path, args: list[str], runs: int) -> dict[str, float]:
    wall, inner, cp, cp_sync, rss = [], [], [], [], []
    for _ in range(runs):
        remove(dst)
        wall_s, peak, out = run_child([*CKPT, "convert", "-q", str(src), str(dst), *args])
        wall.append(wall_s)
        inner.append(float(re.search(r" in ([0-9.]+) s", out).group(1)))  # type: ignore[union-attr]
        rss.append(peak)
        remove(dst)
        cp_s = run_child(["cp", "-r", str(src), str(dst)])[0]
        cp.append(cp_s)
        started = time.perf_counter()
        fsync_tree(dst)
        cp_sync.append(cp_s + time.perf_counter() - started)
        remove(dst)
    return {
        "wall_s": statistics.median(wall),
        "convert_s": statistics.median(inner),
        "cp_s": statistics.median(cp),
        "cp_sync_s": statistics.median(cp_sync),
        "rss": max(rss),
    }


def machine() -> str:
    import torch

    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, python {platform.python_version()}"


CASES = [
    ("safetensors -> safetensors", "safetensors", "out.safetensors", []),
    ("safetensors -> torch", "safetensors", "out.pt", []),
    ("safetensors -> dcp", "safetensors", "out_dcp", ["--to", "dcp"]),
    ("safetensors -> kedge (raw)", "safetensors", "out_kedge", ["--to", "kedge", "--codec", "raw"]),
    ("torch -> safetensors", "torch", "out.safetensors", []),
    ("dcp -> safetensors", "dcp", "out.safetensors", []),
    ("dcp (zstd) -> safetensors", "dcp-zstd", "out.safetensors", []),
    ("safetensors -> safetensors (no verify)", "safetensors", "out.safetensors", ["--no-verify"]),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total-mb", type=int, default=1024, help="checkpoint size")
    parser.add_argument("--largest-mb", type=int, default=256, help="largest tensor")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    parser.add_argument("--only", default=None, help="substring of the cases to run")
    parser.add_argument("--skip-kedge", action="store_true", help="leave out the kedge output case")
    parser.add_argument("--make-inputs", default=None, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.make_inputs:
        write_inputs(Path(opts.make_inputs), make_state(opts.total_mb << 20, opts.largest_mb << 20))
        return
    with tempfile.TemporaryDirectory(dir=opts.dir, prefix="bench-convert-") as tmp:
        root = Path(tmp)
        make = [sys.executable, __file__, "--make-inputs", str(root), "--total-mb", str(opts.total_mb),
                "--largest-mb", str(opts.largest_mb)]  # fmt: skip
        run_child(make)
        paths = input_paths(root)
        floor = floor_rss()
        print(f"machine: {machine()}")
        print(f"checkpoint: {opts.total_mb} MiB bf16, largest tensor {opts.largest_mb} MiB; "
              f"median of {opts.runs} runs; import-only RSS floor {floor / 2**20:.0f} MiB")  # fmt: skip
        header = f"{'conversion':40} {'wall s':>7} {'convert s':>9} {'cp s':>6} {'ratio':>6} {'cp+fsync s':>10} {'ratio':>6} {'MB/s':>6} {'peak RSS MiB':>12} {'RSS-floor':>9} {'/largest':>8}"  # fmt: skip
        print(header)
        for name, src, dst, args in CASES:
            if (opts.only and opts.only not in name) or (opts.skip_kedge and "kedge" in name):
                continue
            r = bench(name, paths[src], root / dst, args, opts.runs)
            over = max(r["rss"] - floor, 0)
            print(f"{name:40} {r['wall_s']:7.2f} {r['convert_s']:9.2f} {r['cp_s']:6.2f} {r['convert_s'] / r['cp_s']:6.2f} "
                  f"{r['cp_sync_s']:10.2f} {r['convert_s'] / r['cp_sync_s']:6.2f} "
                  f"{(opts.total_mb << 20) / r['convert_s'] / 1e6:6.0f} {r['rss'] / 2**20:12.0f} "
                  f"{over / 2**20:9.0f} {over / (opts.largest_mb << 20):8.2f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
