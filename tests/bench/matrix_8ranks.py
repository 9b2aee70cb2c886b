"""Eight ranks on two simulated nodes (four each), gloo on CPU: a culprit on each node in turn, then
the loss of a node and a shrink from 8 to 4 ranks that resumes from a checkpoint saved at world 8.

The CPU stand-in for the 8-GPU run of docs/GPU.md (a machine of 8 GPUs was not lent): the same
coordinator, agents and workload (`kedge.hooks.demo_train`, FSDP2 + kedge checkpoints), one job for
the whole sequence so that each recovery starts from the previous one's world.

    .venv/bin/python tests/bench/matrix_8ranks.py --json /tmp/matrix8.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fault_matrix import bench_config  # tests/bench, this script's folder
from kedge.coordinator.local_cluster import ClusterSpec, LocalCluster

NODES = ("node-a", "node-b")
NPROC = 4


@dataclass(kw_only=True, slots=True)
class Trial:
    """One injected fault in the running job and what kedge did about it."""

    fault: str
    culprit: str
    t_fault: float = 0.0
    detect_s: float | None = None
    culprit_ok: bool = False
    first_verdict: str = "-"
    action: str = "-"
    recover_s: float | None = None
    world_after: int | None = None
    resumed_from: int | None = None
    error: str = ""
    verdicts: list[str] = field(default_factory=list)


def inject(cluster: LocalCluster, trial: Trial) -> None:
    step = cluster.last_step()
    cluster.wait_for(lambda: cluster.last_step() >= step + 3, 120, "steps before the fault")
    if trial.fault == "node_loss":
        trial.t_fault = cluster.kill_node(trial.culprit)
    else:
        trial.t_fault = cluster.signal_rank(int(trial.culprit), signal.SIGKILL)


def observe(cluster: LocalCluster, trial: Trial, timeout_s: float) -> None:
    start = cluster.wait_for(lambda: _start_after(cluster, trial.t_fault), timeout_s, "the restart")
    first_step = cluster.wait_for(lambda: _step_after(cluster, start["t"]), timeout_s, "a step after it")
    trial.recover_s = first_step - trial.t_fault
    trial.world_after = int(start["world"])
    trial.resumed_from = int(start["step"])
    status = cluster.status()
    verdicts = sorted(
        (v.wall_time_ns / 1e9, v.kind.name, v.node_id, v.rank)
        for v in (status.diagnoses if status else [])
        if v.wall_time_ns / 1e9 >= trial.t_fault - 0.5
    )
    trial.verdicts = [f"{k}:{n}:{r}" for _, k, n, r in verdicts]
    if verdicts:
        t, kind, node, rank = verdicts[0]
        trial.detect_s = t - trial.t_fault
        trial.first_verdict = f"{kind}:{node}:{rank}"
        trial.culprit_ok = node == trial.culprit if trial.fault == "node_loss" else str(rank) == trial.culprit
    actions = [a for a in (status.actions if status else []) if a.wall_time_ns / 1e9 >= trial.t_fault]
    trial.action = actions[0].kind.value if actions else "none"


def _start_after(cluster: LocalCluster, t: float) -> dict[str, Any] | None:
    return next((e for e in cluster.train_events() if e["event"] == "start" and e["t"] > t), None)


def _step_after(cluster: LocalCluster, t: float) -> float | None:
    return next((e["t"] for e in cluster.train_events() if e["event"] == "step" and e["t"] > t), None)


def run(workdir: Path, timeout_s: float) -> list[Trial]:
    trials = [
        Trial(fault="sigkill", culprit="2"),  # a rank of node-a
        Trial(fault="sigkill", culprit="6"),  # a rank of node-b
        Trial(fault="node_loss", culprit="node-b"),  # 8 -> 4 ranks, resharded resume
    ]
    spec = ClusterSpec(
        workdir=workdir,
        job_id="eight",
        nodes=NODES,
        nproc_per_node=NPROC,
        train_args=["--steps", "100000", "--ckpt-every", "5", "--step-s", "0.05"],
        config=bench_config(),  # the 4-rank matrix's settings: short leases, unlimited restarts
    )
    with LocalCluster(spec) as cluster:
        cluster.start()
        cluster.wait_for(lambda: cluster.last_step() >= 8, 300, "8 ranks to train")
        for trial in trials:
            try:
                inject(cluster, trial)
                observe(cluster, trial, timeout_s)
            except (TimeoutError, RuntimeError) as exc:
                trial.error = str(exc)
                break
            print(json.dumps(asdict(trial)), flush=True)
    return trials


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--timeout-s", type=float, default=240.0, help="bound of each wait")
    p.add_argument("--workdir", default="", help="keep logs here (default: temporary)")
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kedge-matrix8-") as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        started = time.time()
        trials = run(workdir, args.timeout_s)
    print(
        f"machine: {_cpu()}; {os.cpu_count()} cores; python {platform.python_version()};"
        f" {time.time() - started:.0f} s"
    )
    header = [
        "fault",
        "culprit",
        "detect s",
        "culprit ok",
        "first verdict",
        "action",
        "recover s",
        "world after",
    ]
    print(" | ".join(header))
    for t in trials:
        cells = [t.fault, t.culprit, _f(t.detect_s), "yes" if t.culprit_ok else "NO", t.first_verdict]
        cells += [
            t.action,
            _f(t.recover_s),
            f"{t.world_after} (from step {t.resumed_from})" if t.world_after else "-",
        ]
        print(" | ".join(cells) + (f" | error: {t.error}" if t.error else ""))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(t) for t in trials], indent=2))
    return 0 if all(not t.error for t in trials) else 1


def _cpu() -> str:
    info = Path("/proc/cpuinfo")
    for line in info.read_text().splitlines() if info.exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


if __name__ == "__main__":
    sys.exit(main())
