"""Fault matrix, end to end on this machine: one coordinator, two agents on loopback (node-a, node-b,
two ranks each), four ranks training a small transformer (FSDP2, gloo on CPU) with kedge checkpoints.

Each fault is injected into a fresh job `--repeats` times; per fault it prints time to detect (first
verdict), whether the culprit was right, time to localize (first verdict naming the culprit), the
action, time to recover (fault -> first step after the resume) and steps lost (last step before the
fault - step resumed from). Then a no-fault soak with benign pauses counts false alarms and actions.

    .venv/bin/python tests/bench/fault_matrix.py                       # every fault, 3 repeats, 120 s soak
    .venv/bin/python tests/bench/fault_matrix.py --faults sigkill,node_loss --repeats 1 --soak-s 0
    .venv/bin/python tests/bench/fault_matrix.py --soak-s 600          # the full 10-minute soak

Baseline for comparison (not re-measured here; see issue 7): plain PyTorch waits for the collective
timeout (10 min by default) and names no culprit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kedge.coordinator.core import Config
from kedge.coordinator.local_cluster import ClusterSpec, LocalCluster

FAULT_STEP = 25  # after the checkpoint at step 20
CULPRIT_RANK = 3
CULPRIT_NODE = "node-b"
FAULTS = ["sigkill", "sigstop", "gil", "nogil", "desync", "straggler", "xid", "node_loss"]
NODE_FAULTS = {"xid", "node_loss"}
XID_AT_S = 45.0  # fake NVML clock starts with the agent; training is past step 25 by then on 2 cores


@dataclass(kw_only=True, slots=True)
class Trial:
    """One injected fault and what kedge did about it."""

    fault: str
    t_fault: float = 0.0
    detect_s: float | None = None
    localize_s: float | None = None
    culprit_ok: bool = False
    action: str = "-"
    recover_s: float | None = None
    steps_lost: int | None = None
    steps_to_localize: int | None = None
    verdicts: list[str] = field(default_factory=list)
    error: str = ""


def bench_config() -> Config:
    config = Config(lease_ttl_s=3.0, heartbeat_interval_s=0.5, tick_interval_s=0.1, start_min_nodes=2)
    config.start_settle_s = 0.5
    config.executor.master_port = 0
    config.executor.stop_grace_s = 2.0
    config.policy.restart_budget = 100
    config.policy.isolate_after_repeats = 100
    return config


WORKLOAD: list[str] = []  # --workload: another training command (default kedge.hooks.demo_train)


def spec_for(fault: str, workdir: Path, extra_env: dict[str, str] | None = None) -> ClusterSpec:
    env = {"KEDGE_DEMO_FAULT_INCARNATION": "1", **(extra_env or {})}
    node_env: dict[str, dict[str, str]] = {}
    if fault in ("gil", "nogil", "desync"):
        env["KEDGE_DEMO_FAULT"] = f"{fault}:{CULPRIT_RANK}:{FAULT_STEP}"
    elif fault == "straggler":
        env["KEDGE_DEMO_FAULT"] = f"straggler1.5:{CULPRIT_RANK}:{FAULT_STEP}"
    elif fault == "xid":
        script = workdir / "nvml-node-b.json"
        script.write_text(json.dumps({"gpus": 2, "events": [{"at_s": XID_AT_S, "gpu": 1, "xid": 79}]}))
        node_env[CULPRIT_NODE] = {"KEDGE_AGENT_NVML": f"fake:{script}"}
        node_env["node-a"] = {"KEDGE_AGENT_NVML": f"fake:{_quiet_nvml(workdir)}"}
    spec = ClusterSpec(
        workdir=workdir,
        job_id="bench",
        train_args=["--steps", "100000", "--ckpt-every", "10", "--step-s", "0.05"],
        env=env,
        node_env=node_env,
        config=bench_config(),
    )
    if WORKLOAD:
        spec.workload = list(WORKLOAD)
    return spec


def _quiet_nvml(workdir: Path) -> Path:
    path = workdir / "nvml-quiet.json"
    path.write_text(json.dumps({"gpus": 2, "events": []}))
    return path


def run_trial(fault: str, workdir: Path) -> Trial:
    trial = Trial(fault=fault)
    with LocalCluster(spec_for(fault, workdir)) as cluster:
        try:
            cluster.start()
            cluster.wait_for(
                lambda: cluster.last_step() >= FAULT_STEP - 3, 180, "training to reach the fault step"
            )
            trial.t_fault = inject(cluster, fault, workdir)
            observe(cluster, trial)
        except (TimeoutError, RuntimeError) as exc:
            trial.error = str(exc)
            observe(cluster, trial, wait=False)
    return trial


def inject(cluster: LocalCluster, fault: str, workdir: Path) -> float:
    """Injects the fault (or waits for the workload to inject it) and returns its time."""
    if fault in ("sigkill", "sigstop"):
        cluster.wait_for(lambda: cluster.last_step() >= FAULT_STEP, 60, "fault step")
        return cluster.signal_rank(CULPRIT_RANK, signal.SIGKILL if fault == "sigkill" else signal.SIGSTOP)
    if fault == "node_loss":
        cluster.wait_for(lambda: cluster.last_step() >= FAULT_STEP, 60, "fault step")
        return cluster.kill_node(CULPRIT_NODE)
    if fault == "xid":
        return cluster.agent_started_s[CULPRIT_NODE] + XID_AT_S
    faults_file = Path(str(cluster.events_path) + ".faults")
    return cluster.wait_for(lambda: _fault_time(faults_file), 90, "the workload's own fault")


def _fault_time(path: Path) -> float | None:
    if not path.exists():
        return None
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return float(lines[0]["t"]) if lines else None


def observe(cluster: LocalCluster, trial: Trial, wait: bool = True) -> None:
    """Waits for detection and recovery (or the straggler verdict), then fills the trial in."""
    if wait:
        if trial.fault == "straggler":
            cluster.wait_for(lambda: _verdicts_after(cluster, trial.t_fault), 60, "a straggler verdict")
        else:
            cluster.wait_for(
                lambda: _resumed_step(cluster, trial.t_fault), 120, "the first step after the resume"
            )
    verdicts = _verdicts_after(cluster, trial.t_fault)
    trial.verdicts = [f"{kind}:{node}:{rank}" for _, kind, node, rank in verdicts]
    if verdicts:
        trial.detect_s = verdicts[0][0] - trial.t_fault
    right = [v for v in verdicts if _names_culprit(trial.fault, v)]
    if right:
        trial.localize_s = right[0][0] - trial.t_fault
        trial.culprit_ok = _names_culprit(trial.fault, verdicts[0])
    status = cluster.status()
    actions = [a for a in (status.actions if status else []) if a.wall_time_ns / 1e9 >= trial.t_fault]
    trial.action = actions[-1].kind.value if actions else "none"
    events = cluster.train_events()
    if trial.fault == "straggler" and right:
        steps = [e for e in events if e["event"] == "step" and e["t"] <= right[0][0]]
        trial.steps_to_localize = (steps[-1]["step"] - FAULT_STEP) if steps else None
    resumed = _resumed_step(cluster, trial.t_fault)
    if resumed is not None:
        trial.recover_s = resumed[0] - trial.t_fault
        before = [e["step"] for e in events if e["event"] == "step" and e["t"] <= trial.t_fault]
        trial.steps_lost = (max(before) - resumed[1]) if before else None


def _verdicts_after(cluster: LocalCluster, t: float) -> list[tuple[float, str, str, int]]:
    status = cluster.status()
    if status is None:
        return []
    out = [(v.wall_time_ns / 1e9, v.kind.name, v.node_id, v.rank) for v in status.diagnoses]
    return sorted(v for v in out if v[0] >= t - 0.5)


def _names_culprit(fault: str, verdict: tuple[float, str, str, int]) -> bool:
    _, kind, node, rank = verdict
    if fault in NODE_FAULTS:
        return node == CULPRIT_NODE
    if fault == "straggler":
        return kind == "STRAGGLER" and rank == CULPRIT_RANK
    return rank == CULPRIT_RANK


def _resumed_step(cluster: LocalCluster, t_fault: float) -> tuple[float, int] | None:
    """(time of the first step logged after the first restart, step the restart resumed from)."""
    events = cluster.train_events()
    starts = [e for e in events if e["event"] == "start" and e["t"] > t_fault]
    if not starts:
        return None
    steps = [e for e in events if e["event"] == "step" and e["t"] > starts[0]["t"]]
    return (steps[0]["t"], int(starts[0]["step"])) if steps else None


def run_soak(seconds: float, workdir: Path, seed: int) -> dict[str, Any]:
    """No faults, benign pauses (2 s on one rank) every ~20 steps: every verdict or action is false."""
    rng = random.Random(seed)
    last = 30 + int(seconds * 10)  # steps take >= 0.1 s here
    pauses = ",".join(f"pause:{rng.randrange(4)}:{step}" for step in range(30, last, rng.randrange(15, 30)))
    spec = spec_for("soak", workdir, {"KEDGE_DEMO_FAULT": pauses})
    with LocalCluster(spec) as cluster:
        cluster.start()
        cluster.wait_for(lambda: cluster.last_step() >= 5, 180, "training to start")
        t0 = time.time()
        deadline = t0 + seconds
        while time.time() < deadline:
            time.sleep(1.0)
            cluster.check()
        status = cluster.status()
        verdicts = [v for v in (status.diagnoses if status else []) if v.wall_time_ns / 1e9 >= t0]
        actions = [a for a in (status.actions if status else []) if a.wall_time_ns / 1e9 >= t0]
        steps = cluster.last_step()
    return {
        "seconds": seconds,
        "seed": seed,
        "steps": steps,
        "pauses": sum(1 for e in pauses.split(",") if int(e.rsplit(":", 1)[1]) <= steps),
        "false_alarms": len(verdicts),
        "false_actions": len(actions),
        "details": [f"{v.kind.name}:{v.rank}:{v.reason}" for v in verdicts][:10],
    }


def _pct(values: list[float], q: float) -> str:
    if not values:
        return "-"
    values = sorted(values)
    return f"{values[min(len(values) - 1, round(q * (len(values) - 1)))]:.1f}"


def summarize(trials: list[Trial]) -> list[list[str]]:
    rows = []
    for fault in dict.fromkeys(t.fault for t in trials):
        ts = [t for t in trials if t.fault == fault]
        detect = [t.detect_s for t in ts if t.detect_s is not None]
        local = [t.localize_s for t in ts if t.localize_s is not None]
        recover = [t.recover_s for t in ts if t.recover_s is not None]
        lost = [t.steps_lost for t in ts if t.steps_lost is not None]
        extra = [t.steps_to_localize for t in ts if t.steps_to_localize is not None]
        rows.append(
            [
                fault,
                str(len(ts)),
                f"{_pct(detect, 0.5)}/{_pct(detect, 0.99)}",
                f"{sum(t.culprit_ok for t in ts)}/{len(ts)}",
                _pct(local, 0.5) + (f" ({int(statistics.median(extra))} steps)" if extra else ""),
                ",".join(sorted({t.action for t in ts})),
                f"{_pct(recover, 0.5)}/{_pct(recover, 0.99)}",
                str(int(statistics.median(lost))) if lost else "-",
                str(sum(1 for t in ts if t.error)),
            ]
        )
    return rows


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = "not installed"
    return f"{cpu}; {os.cpu_count()} cores; python {platform.python_version()}; torch {torch_version}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated subset of {','.join(FAULTS)}")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--soak-s", type=float, default=120.0, help="no-fault soak length (0: none; 600 = 10 min)")
    p.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    p.add_argument("--json", default="", help="also write every trial here")
    p.add_argument("--workdir", default="", help="keep logs here (default: temporary)")
    p.add_argument(
        "--workload", default="", help="training command (default: python -m kedge.hooks.demo_train)"
    )
    args = p.parse_args(argv)
    WORKLOAD[:] = args.workload.split()
    faults = [f for f in args.faults.split(",") if f]
    unknown = set(faults) - set(FAULTS)
    if unknown:
        print(f"fault_matrix: unknown faults {sorted(unknown)}; known: {FAULTS}", file=sys.stderr)
        return 2
    print(f"machine: {machine()}; seed {args.seed}", flush=True)
    trials: list[Trial] = []
    with tempfile.TemporaryDirectory(prefix="kedge-faults-") as tmp:
        root = Path(args.workdir or tmp)
        for fault in faults:
            for i in range(args.repeats):
                trial = run_trial(fault, root / f"{fault}-{i}")
                trials.append(trial)
                print(json.dumps(_as_dict(trial)), flush=True)
        soak = run_soak(args.soak_s, root / "soak", args.seed) if args.soak_s > 0 else None
    headers = [
        "fault",
        "n",
        "detect p50/p99 s",
        "culprit ok",
        "localize p50 s",
        "action",
        "recover p50/p99 s",
        "steps lost",
        "errors",
    ]
    print()
    _print_table(headers, summarize(trials))
    if soak is not None:
        print(
            f"\nsoak {soak['seconds']:.0f}s ({soak['steps']} steps, {soak['pauses']} benign 2 s pauses): "
            f"false alarms {soak['false_alarms']}, false actions {soak['false_actions']} {soak['details']}"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"trials": [_as_dict(t) for t in trials], "soak": soak}, indent=2)
        )
    return 0


def _as_dict(t: Trial) -> dict[str, Any]:
    return {f: getattr(t, f) for f in t.__slots__}  # type: ignore[attr-defined]


def _print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


if __name__ == "__main__":
    sys.exit(main())
