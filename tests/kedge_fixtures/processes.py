"""Process hygiene: free ports, and a check that no test leaves a child process behind.

Session-scoped services (SeaweedFS, etcd) register their pids with `keep_alive_pid` so the check
ignores them.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import psutil
import pytest

_SERVICE_PIDS: set[int] = set()
_LEFTOVER_WAIT_S = 5.0


def keep_alive_pid(pid: int) -> None:
    """Marks a long-lived service process (and its children) as expected to outlive a test."""
    _SERVICE_PIDS.add(pid)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _unexpected_children() -> list[psutil.Process]:
    services: set[int] = set()
    for pid in _SERVICE_PIDS:
        try:
            proc = psutil.Process(pid)
            services.add(pid)
            services.update(c.pid for c in proc.children(recursive=True))
        except psutil.NoSuchProcess:
            continue
    alive = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.pid not in services and child.status() != psutil.STATUS_ZOMBIE:
                alive.append(child)
        except psutil.NoSuchProcess:
            continue
    return alive


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    """Fails the test if it leaves child processes running (after a short grace to exit)."""
    yield
    deadline = time.monotonic() + _LEFTOVER_WAIT_S
    leftovers = _unexpected_children()
    while leftovers and time.monotonic() < deadline:
        time.sleep(0.1)
        leftovers = _unexpected_children()
    if leftovers:
        described = []
        for proc in leftovers:
            try:
                described.append(f"{proc.pid}:{' '.join(proc.cmdline())[:120]}")
            except psutil.Error:
                described.append(str(proc.pid))
            proc.kill()
        psutil.wait_procs(leftovers, timeout=5)
        pytest.fail(f"test left processes behind (killed now): {described}")
