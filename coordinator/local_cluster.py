"""A whole kedge job on one machine: an in-process coordinator, one `kedge agent run` per simulated
node (loopback, distinct node ids), their workers, and the means to break them.

Used by `kedge demo` and `tests/bench/fault_matrix.py`. It imports no torch: workers are the agent's
subprocesses running the demo workload (`python -m kedge.hooks.demo_train`).

Process hygiene: the process using this becomes a child subreaper (Linux), so workers orphaned by a
killed agent are reparented to it and `close()` finds, kills and reaps every one of them.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil
from kedge.coordinator.core import Config, JobStatus
from kedge.coordinator.server import RunningServer, serve
from kedge.coordinator.sqlite_store import SqliteStore

log = logging.getLogger(__name__)

T = TypeVar("T")
_PR_SET_CHILD_SUBREAPER = 36
KEDGE_CLI = [sys.executable, "-c", "from kedge.coordinator.cli import main; main()"]


def become_subreaper() -> bool:
    """Orphaned descendants are reparented to this process (so they can be found and reaped)."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


@dataclass(kw_only=True, slots=True)
class ClusterSpec:
    """What to run."""

    workdir: Path
    job_id: str = "demo"
    nodes: tuple[str, ...] = ("node-a", "node-b")
    nproc_per_node: int = 2
    train_args: list[str] = field(default_factory=list)
    workload: list[str] = field(default_factory=lambda: [sys.executable, "-m", "kedge.hooks.demo_train"])
    """The training command (it must accept --ckpt URL and --log PATH)."""
    env: dict[str, str] = field(default_factory=dict)
    node_env: dict[str, dict[str, str]] = field(default_factory=dict)
    config: Config = field(default_factory=Config)


class LocalCluster:
    """Start with `start()`, always `close()` (also a context manager)."""

    def __init__(self, spec: ClusterSpec) -> None:
        self.spec = spec
        self.server: RunningServer | None = None
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.agent_started_s: dict[str, float] = {}
        self.events_path = spec.workdir / "train-events.jsonl"
        self.ckpt_url = f"file://{spec.workdir / 'ckpt'}"
        self._logs: list[Any] = []
        # every agent descendant and worker we learned of, to clean up; psutil.Process objects check
        # the creation time before signalling, so a recycled pid is never hit
        self._seen: dict[int, psutil.Process] = {}

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- start and stop -----------------------------------------------------------------------
    def start(self) -> None:
        self.spec.workdir.mkdir(parents=True, exist_ok=True)
        become_subreaper()
        self.server = serve(
            "127.0.0.1:0", SqliteStore(self.spec.workdir / "coordinator.db"), self.spec.config
        )
        for node in self.spec.nodes:
            self.start_agent(node)

    def start_agent(self, node: str) -> None:
        """`kedge agent run` for one node, logging to <workdir>/agent-<node>.log."""
        assert self.server is not None
        cmd = [
            *KEDGE_CLI,
            "agent",
            "run",
            "--coordinator",
            self.server.address,
            "--node-id",
            node,
            "--job-id",
            self.spec.job_id,
            "--nproc-per-node",
            str(self.spec.nproc_per_node),
            "--run-dir",
            str(self.spec.workdir / f"run-{node}"),
            "--",
            *self.spec.workload,
            "--ckpt",
            self.ckpt_url,
            "--log",
            str(self.events_path),
            *self.spec.train_args,
        ]
        env = {
            **os.environ,
            "KEDGE_AGENT_ADDRESS": "127.0.0.1",
            **self.spec.env,
            **self.spec.node_env.get(node, {}),
        }
        logf = open(self.spec.workdir / f"agent-{node}.log", "ab")  # noqa: SIM115 - closed in close()
        self._logs.append(logf)
        self.agents[node] = subprocess.Popen(
            cmd, env=env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.agent_started_s[node] = time.time()

    def close(self, grace_s: float = 5.0) -> None:
        """Stops agents (SIGTERM, then SIGKILL), kills any worker left, reaps all, stops the server."""
        self._remember()
        for proc in self.agents.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in self.agents.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for proc in self.agents.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        _kill_all(list(self._seen.values()))
        for logf in self._logs:
            logf.close()
        if self.server is not None:
            self.server.stop()
            self.server = None

    # --- faults -------------------------------------------------------------------------------
    def kill_node(self, node: str) -> float:
        """Node loss: SIGKILL the agent and every worker of that node at once; returns the time."""
        proc = self.agents[node]
        self._remember()
        victims = [proc.pid, *self._worker_pids(node), *_descendants(proc.pid)]
        now = time.time()
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=10)
        return now

    def signal_rank(self, rank: int, sig: int) -> float:
        """Sends `sig` to the worker of `rank` (pid from the coordinator's view); returns the time."""
        pid = self.wait_for(lambda: self.rank_pid(rank), 30.0, f"pid of rank {rank}")
        now = time.time()
        os.kill(pid, sig)
        return now

    def _worker_pids(self, node: str) -> list[int]:
        status = self.status()
        return [r.pid for r in status.ranks if r.node_id == node and r.pid > 0] if status else []

    # --- observation --------------------------------------------------------------------------
    def status(self) -> JobStatus | None:
        assert self.server is not None
        jobs = self.server.core.status(self.spec.job_id, recent=50)
        return jobs[0] if jobs else None

    def rank_pid(self, rank: int) -> int | None:
        status = self.status()
        if status is None:
            return None
        pids = [
            r.pid for r in status.ranks if r.rank == rank and r.incarnation in (0, status.job.incarnation)
        ]
        return pids[0] if pids and pids[0] > 0 else None

    def train_events(self) -> list[dict[str, Any]]:
        """The workload's rank-0 event log (start/resume, steps with loss, done)."""
        if not self.events_path.exists():
            return []
        out = []
        for line in self.events_path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # a line being written
                out.append(json.loads(line))
        return out

    def last_step(self) -> int:
        steps = [e["step"] for e in self.train_events() if e["event"] == "step"]
        return max(steps) if steps else 0

    def wait_for(self, probe: Callable[[], T | None], timeout_s: float, what: str) -> T:
        """Polls `probe` until it returns something truthy; TimeoutError naming `what`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = probe()
            if value:
                return value
            self.check(what)
            time.sleep(0.1)
        raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")

    def check(self, what: str = "") -> None:
        """Raises RuntimeError if an agent we did not kill exited; remembers new worker pids."""
        self._remember()
        for node, proc in self.agents.items():
            if proc.poll() is not None and node not in self._expected_dead:
                raise RuntimeError(
                    f"agent of {node} exited {proc.returncode} while waiting for {what or 'the job'}"
                )

    @property
    def _expected_dead(self) -> set[str]:
        status = self.status()
        if status is None:
            return set()
        alive = {n.record.node_id for n in status.nodes if n.record.state.value == "alive"}
        return {n for n in self.agents if n not in alive} | {
            n for n, p in self.agents.items() if p.returncode == -9
        }

    def _remember(self) -> None:
        """Records the pids of every agent's descendants and every reported worker."""
        pids: list[int] = []
        for proc in self.agents.values():
            if proc.poll() is None:
                pids += _descendants(proc.pid)
        if self.server is not None:
            status = self.status()
            if status is not None:
                pids += [r.pid for r in status.ranks if r.pid > 0]
        for pid in pids:
            if pid not in self._seen:
                with contextlib.suppress(psutil.Error):
                    self._seen[pid] = psutil.Process(pid)


def _descendants(pid: int) -> list[int]:
    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def _kill_all(procs: list[psutil.Process]) -> None:
    """SIGKILLs the processes still alive and waits for them (reaping those that are our children)."""
    alive = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
            alive.append(proc)
    psutil.wait_procs(alive, timeout=10)
