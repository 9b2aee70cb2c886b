"""Runs `kedge agent run` on the gloo workload (tests/workloads/train_gloo.py) and collects its verdicts.

Used by the multi-process and integration agent tests and by tests/bench/bench_agent.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

WORKLOAD = Path(__file__).resolve().parents[1] / "workloads" / "train_gloo.py"
KEDGE = str(Path(sys.executable).with_name("kedge"))


@dataclass
class AgentRun:
    """The outcome of one agent run."""

    returncode: int
    stderr: str
    verdicts: list[dict[str, object]] = field(default_factory=list)
    fault_wall_ns: dict[int, int] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        """The agent's final one-line reason."""
        lines = [line for line in self.stderr.splitlines() if line.startswith("kedge agent: ")]
        return lines[-1] if lines else ""

    def of_kind(self, kind: str) -> list[dict[str, object]]:
        return [v for v in self.verdicts if v["kind"] == kind]


def agent_command(tmp: Path, nproc: int, *extra: str) -> list[str]:
    return [
        KEDGE,
        "agent",
        "run",
        "--nproc-per-node",
        str(nproc),
        "--run-dir",
        str(tmp / "run"),
        "--verdict-log",
        str(tmp / "verdicts.jsonl"),
        "--metrics-addr",
        "",
        "--nvml",
        "off",
        *extra,
        "--",
        sys.executable,
        str(WORKLOAD),
    ]


def workload_env(fault: str = "", steps: int = 25, step_s: float = 0.05, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(KEDGE_TEST_FAULT=fault, KEDGE_TEST_STEPS=str(steps), KEDGE_TEST_STEP_S=str(step_s))
    env.update(extra)
    return env


def run_agent(
    tmp: Path,
    *,
    nproc: int = 2,
    fault: str = "",
    extra: tuple[str, ...] = (),
    steps: int = 25,
    step_s: float = 0.05,
    timeout_s: float = 90.0,
    env: dict[str, str] | None = None,
) -> AgentRun:
    """Runs the agent to its end (bounded by `timeout_s`) and returns its verdicts."""
    tmp.mkdir(parents=True, exist_ok=True)
    mark = tmp / "fault"
    full_env = workload_env(fault, steps, step_s, KEDGE_TEST_FAULT_MARK=str(mark))
    full_env.update(env or {})
    proc = subprocess.Popen(
        agent_command(tmp, nproc, *extra),
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.terminate()  # the agent stops its ranks on SIGTERM
        _out, err = proc.communicate(timeout=30)
        raise AssertionError(f"agent did not finish in {timeout_s}s:\n{err[-3000:]}") from None
    return AgentRun(proc.returncode, err, read_verdicts(tmp / "verdicts.jsonl"), read_marks(mark))


def read_verdicts(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_marks(mark: Path) -> dict[int, int]:
    out = {}
    for p in mark.parent.glob(mark.name + ".rank*"):
        out[int(p.name.rsplit("rank", 1)[1])] = int(p.read_text())
    return out
