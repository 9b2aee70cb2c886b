"""Launching, watching and stopping a node's ranks.

Each launched rank runs in its own session (process group), so a stop reaches the processes it
spawned (data loader workers) too. Stopping is bounded: abort request (the caller's), SIGTERM (and
SIGCONT, so a stopped rank can act on it), SIGKILL after the grace, then every child is reaped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import psutil

log = logging.getLogger(__name__)

_REAP_TIMEOUT_S = 5.0
# Return code given to an adopted (sidecar-mode) rank that vanished: not our child, status unknown.
ADOPTED_GONE = -1000


@dataclass(slots=True)
class Worker:
    """One rank process: launched here (`popen` set) or adopted in sidecar mode (pid only)."""

    rank: int
    local_rank: int
    pid: int
    incarnation: int
    page_path: str
    popen: subprocess.Popen[bytes] | None = None
    started_mono_s: float = field(default_factory=time.monotonic)
    returncode: int | None = None
    stopping: bool = False
    reported_exit: bool = False

    @property
    def exited(self) -> bool:
        return self.returncode is not None

    def poll(self) -> int | None:
        """Exit status once the process is gone (negative: killed by that signal); reaps our children.
        An adopted process that vanished gets ADOPTED_GONE: not our child, its status is unknown."""
        if self.returncode is not None:
            return self.returncode
        if self.popen is not None:
            self.returncode = self.popen.poll()
        elif not _pid_alive(self.pid):
            self.returncode = ADOPTED_GONE
        return self.returncode


def _pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def launch(
    command: Sequence[str],
    *,
    rank: int,
    local_rank: int,
    incarnation: int,
    page_path: str,
    env: dict[str, str],
) -> Worker:
    """Starts one rank with `env` (the full environment) in its own session."""
    popen = subprocess.Popen(list(command), env=env, start_new_session=True)
    log.info(
        "rank_started rank=%d local_rank=%d pid=%d incarnation=%d", rank, local_rank, popen.pid, incarnation
    )
    return Worker(
        rank=rank,
        local_rank=local_rank,
        pid=popen.pid,
        incarnation=incarnation,
        page_path=page_path,
        popen=popen,
    )


def _signal_group(worker: Worker, sig: int) -> None:
    if worker.exited:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if worker.popen is not None:
            os.killpg(worker.pid, sig)
        else:
            os.kill(worker.pid, sig)


def stop(workers: Sequence[Worker], *, grace_s: float) -> None:
    """SIGTERM every live worker, SIGKILL those still alive after `grace_s`, then reap them all."""
    live = [w for w in workers if w.poll() is None]
    for w in live:
        w.stopping = True
        _signal_group(w, signal.SIGTERM)
        _signal_group(w, signal.SIGCONT)
    deadline = time.monotonic() + grace_s
    while live and time.monotonic() < deadline:
        time.sleep(0.05)
        live = [w for w in live if w.poll() is None]
    for w in live:
        log.warning("rank_kill rank=%d pid=%d reason=grace %.1fs expired", w.rank, w.pid, grace_s)
        _signal_group(w, signal.SIGKILL)
    _reap(workers)


def _reap(workers: Sequence[Worker]) -> None:
    for w in workers:
        if w.popen is not None and w.returncode is None:
            try:
                w.returncode = w.popen.wait(timeout=_REAP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.error("rank_unreapable rank=%d pid=%d", w.rank, w.pid)
        if w.popen is not None:
            # Grandchildren left in the rank's session (e.g. loader workers) go with it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(w.pid, signal.SIGKILL)


def describe_exit(returncode: int) -> tuple[int, int, str]:
    """(exit_code, signal, words) for a Popen return code."""
    if returncode == ADOPTED_GONE:
        return -1, 0, "vanished (exit status unknown: not the agent's child)"
    if returncode < 0:
        sig = -returncode
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return 0, sig, f"killed by {name}"
    return returncode, 0, f"exited with code {returncode}"
