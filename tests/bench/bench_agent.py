"""Agent benchmark: verdict latency per fault, telemetry overhead on step time, agent CPU and memory.

    .venv/bin/python tests/bench/bench_agent.py                      # CPU, gloo (what make test machines run)
    .venv/bin/python tests/bench/bench_agent.py --device cuda --backend nccl --nproc 8 --skip-latency
    (the CUDA run also measures with CUDA_DEVICE_MAX_CONNECTIONS=1, to check that overlap survives)

Latency: time from the fault's injection (the workload writes the wall clock just before) to the
agent's verdict (its wall clock), median and p99 over --repeats runs; for freezes also the rank's
normal step period, since the goal is "<= 5 s beyond the step period". Overhead: the same workload
under the same agent with the hooks on (progress page, side thread, Flight Recorder) and off
(no kh.init(), Flight Recorder off), interleaved --pairs times in this run; median step time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kedge_fixtures.agent_runs import KEDGE, run_agent

BENCH_WORKLOAD = Path(__file__).resolve().parents[1] / "workloads" / "bench_train.py"
FAULTS = [
    ("sigkill", "RANK_DIED"),
    ("segfault", "RANK_DIED"),
    ("exception", "RANK_DIED"),
    ("sigstop", "RANK_FROZEN"),
    ("gilc", "RANK_FROZEN"),
    ("sleep", "RANK_FROZEN"),
]
FAULT_STEP = 10
STEP_S = 0.05


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def latency(repeats: int, tmp: Path) -> list[tuple[str, str, float, float, int]]:
    rows = []
    for fault, kind in FAULTS:
        samples = []
        for i in range(repeats):
            run = run_agent(tmp / f"{fault}-{i}", fault=f"{fault}:1:{FAULT_STEP}", steps=400, step_s=STEP_S)
            verdict = next((v for v in run.verdicts if v["kind"] == kind and v["rank"] == 1), None)
            if verdict is None or 1 not in run.fault_wall_ns:
                print(f"  {fault} run {i}: no {kind} verdict for rank 1 ({run.reason})", file=sys.stderr)
                continue
            samples.append((int(verdict["wall_time_ns"]) - run.fault_wall_ns[1]) / 1e9)  # type: ignore[call-overload]
        if samples:
            rows.append((fault, kind, statistics.median(samples), p99(samples), len(samples)))
    return rows


def one_run(
    tmp: Path, args: argparse.Namespace, hooks: bool, extra_env: dict[str, str]
) -> tuple[float, float, int]:
    """(median step s, agent CPU %, agent peak RSS bytes) for one agent run of the bench workload."""
    out = tmp / f"steps-{time.monotonic_ns()}.json"
    env = dict(
        os.environ,
        BENCH_HOOKS="1" if hooks else "0",
        BENCH_DEVICE=args.device,
        BENCH_BACKEND=args.backend,
        BENCH_STEPS=str(args.steps),
        BENCH_WIDTH=str(args.width),
        BENCH_OUT=str(out),
        **extra_env,
    )
    if not hooks:
        env["TORCH_FR_BUFFER_SIZE"] = "0"
    cmd = [
        KEDGE,
        "agent",
        "run",
        "--nproc-per-node",
        str(args.nproc),
        "--run-dir",
        str(tmp / "run"),
        "--metrics-addr",
        "",
        "--",
        sys.executable,
        str(BENCH_WORKLOAD),
    ]
    agent = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc = psutil.Process(agent.pid)
    peak_rss, t0 = 0, time.monotonic()
    cpu = proc.cpu_times()
    while agent.poll() is None:
        try:
            peak_rss = max(peak_rss, proc.memory_info().rss)
            cpu = proc.cpu_times()
        except psutil.Error:
            break
        time.sleep(0.2)
    wall_s = time.monotonic() - t0
    if agent.wait() != 0:
        raise SystemExit(f"bench workload failed under the agent (exit {agent.returncode})")
    return statistics.median(json.loads(out.read_text())), 100 * (cpu.user + cpu.system) / wall_s, peak_rss


def overhead(args: argparse.Namespace, tmp: Path, extra_env: dict[str, str]) -> dict[str, float]:
    on, off, cpu, rss = [], [], [], []
    for _ in range(args.pairs):
        step_on, cpu_pct, peak = one_run(tmp, args, True, extra_env)
        step_off, _, _ = one_run(tmp, args, False, extra_env)
        on.append(step_on)
        off.append(step_off)
        cpu.append(cpu_pct)
        rss.append(peak)
    med_on, med_off = statistics.median(on), statistics.median(off)
    return {
        "on_ms": med_on * 1e3,
        "off_ms": med_off * 1e3,
        "overhead_pct": 100 * (med_on / med_off - 1),
        "agent_cpu_pct": statistics.median(cpu),
        "agent_rss_mib": max(rss) / 2**20,
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
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, torch {torch.__version__}, {gpu}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--backend", default="gloo", choices=["gloo", "nccl"])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="latency runs per fault")
    parser.add_argument("--pairs", type=int, default=3, help="hooks on/off run pairs")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--skip-latency", action="store_true")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if not args.skip_latency:
            print(
                f"\nverdict latency (2 gloo ranks, CPU, step period ~{STEP_S * 1e3:.0f} ms + all-reduce; "
                f"goals: death <= 1 s, frozen <= 5 s beyond the step period)"
            )
            print(f"{'fault':<10} {'verdict':<12} {'median s':>9} {'p99 s':>7} {'runs':>5}")
            for fault, kind, med, hi, n in latency(args.repeats, tmp):
                print(f"{fault:<10} {kind:<12} {med:>9.2f} {hi:>7.2f} {n:>5}")
        variants = [("default", {})]
        if args.device == "cuda":
            variants.append(("CUDA_DEVICE_MAX_CONNECTIONS=1", {"CUDA_DEVICE_MAX_CONNECTIONS": "1"}))
        print(
            f"\ntelemetry overhead ({args.nproc} ranks, {args.device}/{args.backend}, width {args.width}, "
            f"median of {args.pairs} interleaved pairs; baseline = hooks off under the same agent)"
        )
        print(
            f"{'variant':<32} {'hooks on ms':>11} {'off ms':>8} {'overhead':>9} {'agent CPU':>10} {'agent RSS':>10}"
        )
        for name, env in variants:
            r = overhead(args, tmp, env)
            print(
                f"{name:<32} {r['on_ms']:>11.2f} {r['off_ms']:>8.2f} {r['overhead_pct']:>8.1f}% "
                f"{r['agent_cpu_pct']:>9.1f}% {r['agent_rss_mib']:>7.0f} MiB"
            )


if __name__ == "__main__":
    main()
