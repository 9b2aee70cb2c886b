"""NCCL fault matrix: one in-process coordinator, two agents on loopback (node-a, node-b, one rank each),
a 2-rank job of `kedge.hooks.demo_train` (FSDP2; NCCL with one GPU per rank, gloo on `--device cpu`).

Each fault is injected into rank 1 (node-b) of a fresh job at step 25 (after the checkpoint at 20).
Per fault it reports time to detect (first verdict), whether that verdict named the culprit, time to
recover (fault -> first step after the resume) and steps lost (last step before the fault - step
resumed from). With `--baseline` it also runs tests/gpu/baseline_pg_timeout.py (plain PyTorch, SIGKILL
and SIGSTOP, both at once, alongside the matrix) and adds its rows: the survivor's exit time.

    python3 tests/gpu/nccl_fault_matrix.py --baseline --json matrix.json       # on a 2-GPU machine
    .venv/bin/python tests/gpu/nccl_fault_matrix.py --device cpu --faults sigkill,sigstop,desync

Faults: sigkill, sigstop, gpuhang (a ~1 h `torch.cuda._sleep` kernel), cudaerror (device-side assert
from an out-of-range index: a sticky error), straggler (per step `torch.cuda._sleep` of 1.5x the step
pace; on CPU the host sleeps instead), desync (rank 1 skips one all_reduce). gpuhang and cudaerror
need CUDA and are skipped on CPU. `--budget-s` bounds the whole run: every wait is cut to what is
left, and a fault that no longer fits is skipped with that reason.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpu_machine import machine_info, machine_line, print_table
from kedge.coordinator.local_cluster import ClusterSpec, LocalCluster

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from fault_matrix import _fault_time, _resumed_step, _verdicts_after, bench_config

FAULT_STEP = 25
CULPRIT_RANK = 1
CULPRIT_NODE = "node-b"
FAULTS = ["sigkill", "sigstop", "gpuhang", "cudaerror", "straggler", "desync"]
CUDA_ONLY = {"gpuhang", "cudaerror"}
MIN_TRIAL_S = 45.0
NEVER_STARTED = "training to reach the fault step"  # a fault is not started with less budget than this left
BASELINE = Path(__file__).with_name("baseline_pg_timeout.py")


@dataclass(kw_only=True, slots=True)
class Timeouts:
    """Per-trial waits (each also cut to the run's remaining budget)."""

    start_s: float = 120.0
    """Job start to the step before the fault (agents, imports, NCCL init)."""
    recover_s: float = 75.0
    """Fault to the first step after the resume."""
    straggler_s: float = 45.0
    """Fault to a straggler verdict."""


@dataclass(kw_only=True, slots=True)
class Trial:
    """One injected fault and what kedge did about it."""

    fault: str
    t_fault: float = 0.0
    detect_s: float | None = None
    culprit_ok: bool = False
    first_verdict: str = "-"
    action: str = "-"
    recover_s: float | None = None
    steps_lost: int | None = None
    verdicts: list[str] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)
    """Each worker's own line (rank, device, backend), from the agents' logs."""
    log_tail: list[str] = field(default_factory=list)
    """When the trial failed: the last error lines of the agents' logs."""
    skipped: str = ""
    error: str = ""
    wall_s: float = 0.0


def fault_env(fault: str, device: str) -> dict[str, str]:
    """KEDGE_DEMO_FAULT for faults the workload injects into itself (none for signals)."""
    kind = {"straggler": "gpustraggler1.5" if device == "cuda" else "straggler1.5"}.get(fault, fault)
    if fault in ("sigkill", "sigstop"):
        return {}
    return {"KEDGE_DEMO_FAULT": f"{kind}:{CULPRIT_RANK}:{FAULT_STEP}"}


def spec_for(fault: str, workdir: Path, device: str) -> ClusterSpec:
    env = {"KEDGE_DEMO_FAULT_INCARNATION": "1", **fault_env(fault, device)}
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # demo_train picks NCCL whenever it sees enough GPUs
    return ClusterSpec(
        workdir=workdir,
        job_id="gpu-matrix",
        nodes=("node-a", "node-b"),
        nproc_per_node=1,
        train_args=["--steps", "100000", "--ckpt-every", "10", "--step-s", "0.05"],
        env=env,
        config=bench_config(),
    )


class Budget:
    """The run's wall-clock budget; waits are cut to what is left."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + (seconds if seconds > 0 else 1e9)

    def left_s(self) -> float:
        return self.deadline - time.monotonic()

    def cut(self, timeout_s: float) -> float:
        return max(1.0, min(timeout_s, self.left_s()))


def run_trial(fault: str, workdir: Path, device: str, timeouts: Timeouts, budget: Budget) -> Trial:
    trial = Trial(fault=fault)
    t0 = time.monotonic()
    with LocalCluster(spec_for(fault, workdir, device)) as cluster:
        try:
            cluster.start()
            cluster.wait_for(
                lambda: cluster.last_step() >= FAULT_STEP - 3,
                budget.cut(timeouts.start_s),
                NEVER_STARTED,
            )
            trial.t_fault = inject(cluster, fault, budget)
            wait_outcome(cluster, trial, timeouts, budget)
        except (TimeoutError, RuntimeError) as exc:
            trial.error = str(exc)
        observe(cluster, trial)
    trial.wall_s = round(time.monotonic() - t0, 1)
    trial.devices = worker_devices(workdir)
    if trial.error:
        trial.log_tail = error_lines(workdir)
    return trial


def error_lines(workdir: Path, most: int = 4) -> list[str]:
    """The agents' and workers' last error lines (what to read first when a trial failed)."""
    out: list[str] = []
    for log in sorted(workdir.glob("agent-*.log")):
        lines = log.read_text(errors="replace").splitlines()
        out += [f"{log.stem}: {x.strip()[:200]}" for x in lines if "error" in x.lower()][-most:]
    return out


def worker_devices(workdir: Path) -> list[str]:
    """The distinct `demo_train rank=R device=D backend=B` lines the workers printed."""
    lines = set()
    for log in workdir.glob("agent-*.log"):
        for line in log.read_text(errors="replace").splitlines():
            if "demo_train rank=" in line:
                lines.add(line[line.index("demo_train rank=") :].strip())
    return sorted(lines)


def inject(cluster: LocalCluster, fault: str, budget: Budget) -> float:
    """Injects the fault (or waits for the workload to inject it) and returns its time."""
    if fault in ("sigkill", "sigstop"):
        cluster.wait_for(lambda: cluster.last_step() >= FAULT_STEP, budget.cut(60), "fault step")
        return cluster.signal_rank(CULPRIT_RANK, signal.SIGKILL if fault == "sigkill" else signal.SIGSTOP)
    faults_file = Path(str(cluster.events_path) + ".faults")
    return cluster.wait_for(lambda: _fault_time(faults_file), budget.cut(60), "the workload's own fault")


def wait_outcome(cluster: LocalCluster, trial: Trial, timeouts: Timeouts, budget: Budget) -> None:
    if trial.fault == "straggler":
        cluster.wait_for(
            lambda: _verdicts_after(cluster, trial.t_fault), budget.cut(timeouts.straggler_s), "a verdict"
        )
    else:
        cluster.wait_for(
            lambda: _resumed_step(cluster, trial.t_fault),
            budget.cut(timeouts.recover_s),
            "the first step after the resume",
        )


def observe(cluster: LocalCluster, trial: Trial) -> None:
    """Fills the trial in from the coordinator's verdicts and actions and the workload's log."""
    if not trial.t_fault or cluster.server is None:
        return
    verdicts = _verdicts_after(cluster, trial.t_fault)
    trial.verdicts = [f"{kind}:{node}:{rank}" for _, kind, node, rank in verdicts]
    if verdicts:
        trial.detect_s = round(verdicts[0][0] - trial.t_fault, 2)
        trial.first_verdict = trial.verdicts[0]
        trial.culprit_ok = _names_culprit(trial.fault, verdicts[0])
    status = cluster.status()
    actions = [a for a in (status.actions if status else []) if a.wall_time_ns / 1e9 >= trial.t_fault]
    trial.action = actions[-1].kind.value if actions else "none"
    resumed = _resumed_step(cluster, trial.t_fault)
    if resumed is not None:
        trial.recover_s = round(resumed[0] - trial.t_fault, 2)
        events = cluster.train_events()
        before = [e["step"] for e in events if e["event"] == "step" and e["t"] <= trial.t_fault]
        trial.steps_lost = (max(before) - resumed[1]) if before else None


def _names_culprit(fault: str, verdict: tuple[float, str, str, int]) -> bool:
    _, kind, node, rank = verdict
    if fault == "straggler":
        return kind == "STRAGGLER" and (rank == CULPRIT_RANK or node == CULPRIT_NODE)
    return rank == CULPRIT_RANK or (rank < 0 and node == CULPRIT_NODE)


# --- plain PyTorch baseline ----------------------------------------------------------------------
def start_baselines(pg_timeout_s: float, deadline_s: float, tmp: Path) -> list[tuple[str, Any, Path]]:
    """Both baseline faults at once, in the background (each on its own port)."""
    out = []
    for fault in ("sigkill", "sigstop"):
        path = tmp / f"baseline-{fault}.json"
        cmd = [sys.executable, str(BASELINE), "--fault", fault, "--timeout-s", str(pg_timeout_s)]
        cmd += ["--deadline-s", str(deadline_s), "--json", str(path)]
        log = open(tmp / f"baseline-{fault}.log", "w")  # noqa: SIM115 - closed in finish_baselines
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        out.append((fault, (proc, log), path))
    return out


def finish_baselines(started: list[tuple[str, Any, Path]], deadline: float) -> list[dict[str, Any]]:
    results = []
    for fault, (proc, log), path in started:
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        if path.exists():
            results.append(json.loads(path.read_text()))
        else:
            tail = Path(log.name).read_text().splitlines()[-3:]
            results.append({"fault": fault, "error": f"exit {proc.returncode}: {' | '.join(tail)}"})
    return results


# --- report --------------------------------------------------------------------------------------
HEADERS = ["fault", "detect s", "culprit ok", "first verdict", "action", "recover s", "steps lost", "note"]


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def rows_for(trials: list[Trial], baselines: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for t in trials:
        if t.skipped:
            rows.append([t.fault, "-", "-", "-", "-", "-", "-", f"skipped: {t.skipped}"])
            continue
        culprit = ("yes" if t.culprit_ok else "NO") if t.detect_s is not None else "-"
        note = f"error: {t.error[:70]}" if t.error else ""
        lost = "-" if t.steps_lost is None else str(t.steps_lost)
        rows.append(
            [t.fault, _s(t.detect_s), culprit, t.first_verdict, t.action, _s(t.recover_s), lost, note]
        )
    for b in baselines:
        name = f"plain PyTorch {b.get('fault')}"
        if "error" in b:
            rows.append([name, "-", "-", "-", "-", "-", "-", f"error: {str(b['error'])[:70]}"])
            continue
        names = "yes" if b.get("names_culprit") else "no"
        note = f"survivor exit (code {b.get('survivor_code')}) with PG timeout {b.get('pg_timeout_s')} s"
        rows.append([name, _s(b.get("survivor_exit_s")), names, "-", "exit", "never", "all", note])
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated subset of {FAULTS}")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--budget-s", type=float, default=0.0, help="wall budget of the whole run (0: none)")
    p.add_argument("--start-timeout-s", type=float, default=120.0)
    p.add_argument("--recover-timeout-s", type=float, default=75.0)
    p.add_argument("--baseline", action="store_true", help="also run plain PyTorch (needs CUDA)")
    p.add_argument("--baseline-pg-timeout-s", type=float, default=20.0)
    p.add_argument("--baseline-deadline-s", type=float, default=150.0)
    p.add_argument("--json", default="", help="write every trial and the machine here")
    p.add_argument("--workdir", default="", help="keep logs here (default: temporary)")
    return p.parse_args(argv)


def check_device(device: str) -> str | None:
    """Why this machine cannot run `device` (None: it can)."""
    if device == "cpu":
        return None
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        return f"needs 2 CUDA GPUs, found {torch.cuda.device_count() if torch.cuda.is_available() else 0}"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    faults = [f for f in args.faults.split(",") if f]
    unknown = set(faults) - set(FAULTS)
    if unknown:
        print(f"nccl_fault_matrix: unknown faults {sorted(unknown)}; known: {FAULTS}", file=sys.stderr)
        return 2
    problem = check_device(args.device)
    if problem:
        print(f"nccl_fault_matrix: --device {args.device} {problem}", file=sys.stderr)
        return 2
    info = machine_info()
    print(f"{machine_line(info)}; backend {'nccl' if args.device == 'cuda' else 'gloo'}", flush=True)
    budget = Budget(args.budget_s)
    t0 = time.monotonic()
    timeouts = Timeouts(start_s=args.start_timeout_s, recover_s=args.recover_timeout_s)
    trials: list[Trial] = []
    baselines: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="kedge-gpu-faults-") as tmp:
        root = Path(args.workdir or tmp)
        root.mkdir(parents=True, exist_ok=True)
        started = []
        if args.baseline and args.device == "cuda":
            started = start_baselines(args.baseline_pg_timeout_s, args.baseline_deadline_s, root)
        elif args.baseline:
            baselines.append({"fault": "sigkill/sigstop", "error": "skipped: needs CUDA"})
        broken = ""
        for fault in faults:
            for i in range(args.repeats):
                if broken:  # the workload never started: waiting for it again only spends the budget
                    trial = Trial(fault=fault, skipped=f"no trial runs: {broken}")
                else:
                    trial = _one(fault, root / f"{fault}-{i}", args.device, timeouts, budget)
                if NEVER_STARTED in trial.error:
                    broken = f"{fault} never reached step {FAULT_STEP}"
                trials.append(trial)
                print(json.dumps(_as_dict(trial)), flush=True)
        baselines += finish_baselines(started, min(t0 + args.baseline_deadline_s + 30, budget.deadline))
    print()
    devices = sorted({d for t in trials for d in t.devices})
    print(f"workers seen: {'; '.join(d.removeprefix('demo_train ') for d in devices) or 'none'}")
    print_table(HEADERS, rows_for(trials, baselines))
    if args.json:
        doc = {"machine": info, "device": args.device, "trials": [_as_dict(t) for t in trials]}
        doc["baseline"] = baselines
        Path(args.json).write_text(json.dumps(doc, indent=2))
    return 0


def _one(fault: str, workdir: Path, device: str, timeouts: Timeouts, budget: Budget) -> Trial:
    if fault in CUDA_ONLY and device != "cuda":
        return Trial(fault=fault, skipped="needs CUDA")
    if budget.left_s() < MIN_TRIAL_S:
        return Trial(fault=fault, skipped=f"out of time budget ({budget.left_s():.0f} s left)")
    return run_trial(fault, workdir, device, timeouts, budget)


def _as_dict(t: Trial) -> dict[str, Any]:
    return dataclasses.asdict(t)


if __name__ == "__main__":
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    # `timeout` sends SIGTERM: unwind so every LocalCluster closes and reaps its agents and workers
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
