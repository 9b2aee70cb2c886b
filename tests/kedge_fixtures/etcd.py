"""A real etcd (Debian `etcd-server`, v3.4) on loopback, one per test session.

`etcd_server` (session) starts it on free client and peer ports with a data directory on tmpfs when
there is one (fsync there is cheap; the test data is throwaway). `etcd` (per test) hands the test the
endpoint and a key prefix of its own, and makes sure the server is up again afterwards when the test
stopped or paused it. Helpers stop, restart and pause (SIGSTOP/SIGCONT) processes mid-test.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import types
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# kedge_fixtures.processes is imported inside functions: importing it here, before pytest registers
# it as a plugin (plugins load in name order), would stop pytest from rewriting its asserts.

ETCD_BINARY = shutil.which("etcd") or "/usr/bin/etcd"
_HEALTH_TIMEOUT_S = 20.0
_STOP_GRACE_S = 10.0


def _processes() -> types.ModuleType:
    return importlib.import_module("kedge_fixtures.processes")


def _tmp_root() -> str | None:
    """tmpfs when available: etcd fsyncs every commit, which is slow on a shared disk."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


@dataclass(slots=True)
class EtcdServer:
    """One etcd member on loopback; stop/start keep its data directory and ports."""

    data_dir: Path
    client_port: int = field(default_factory=lambda: _processes().free_port())
    peer_port: int = field(default_factory=lambda: _processes().free_port())
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def endpoint(self) -> str:
        """host:port of the client URL (what `--store etcd://` takes)."""
        return f"127.0.0.1:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"http://{self.endpoint}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "etcd is not running"
        return self.proc.pid

    def _argv(self) -> list[str]:
        peer_url = f"http://127.0.0.1:{self.peer_port}"
        return [
            ETCD_BINARY,
            "--name=kedge-test",
            f"--data-dir={self.data_dir / 'member-data'}",
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=kedge-test={peer_url}",
            "--initial-cluster-state=new",
            "--initial-cluster-token=kedge-test",
            "--logger=zap",
            "--log-level=warn",
            # A single member: shorter raft timings make a restart ready sooner.
            "--heartbeat-interval=50",
            "--election-timeout=500",
        ]

    def start(self) -> None:
        """Starts etcd (again) and waits until it answers /health."""
        assert self.proc is None or self.proc.poll() is not None, "etcd already running"
        self.log_path = self.data_dir / "etcd.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self._argv(), stdout=log, stderr=subprocess.STDOUT)
        _processes().keep_alive_pid(self.proc.pid)
        self.wait_healthy()

    def wait_healthy(self, timeout_s: float = _HEALTH_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}: {self._log_tail()}")
            if self.healthy():
                return
            time.sleep(0.05)
        raise TimeoutError(f"etcd not healthy after {timeout_s}s: {self._log_tail()}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.client_url}/health", timeout=1.0) as resp:
                return bool(json.loads(resp.read()).get("health") == "true")
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stops etcd (SIGKILL after a bounded grace) and reaps it; a paused one is resumed first."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGCONT)
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=_STOP_GRACE_S)

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        pause_process(self.pid)

    def resume(self) -> None:
        resume_process(self.pid)

    def _log_tail(self, size_bytes: int = 2000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return self.log_path.read_bytes()[-size_bytes:].decode(errors="replace")


def pause_process(pid: int) -> None:
    """SIGSTOP: the process stays alive but does nothing (a frozen leader, a hung etcd)."""
    os.kill(pid, signal.SIGSTOP)


def resume_process(pid: int) -> None:
    os.kill(pid, signal.SIGCONT)


@dataclass(frozen=True, slots=True)
class EtcdHandle:
    """What a test gets: the server (to stop/restart/pause it) and a key prefix of its own."""

    server: EtcdServer
    prefix: str

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    @property
    def store_url(self) -> str:
        return f"etcd://{self.server.endpoint}"


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdServer]:
    """One etcd for the whole session; skipped with the reason when the binary is missing."""
    if not os.access(ETCD_BINARY, os.X_OK):
        pytest.skip("etcd binary not found: install Debian etcd-server (.ci/run does)")
    data_dir = Path(tempfile.mkdtemp(prefix="kedge-etcd-", dir=_tmp_root()))
    server = EtcdServer(data_dir=data_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def etcd(etcd_server: EtcdServer) -> Iterator[EtcdHandle]:
    """The session etcd with a fresh key prefix; brought back up if the test stopped or paused it."""
    if not etcd_server.running() or not etcd_server.healthy():
        _revive(etcd_server)
    yield EtcdHandle(server=etcd_server, prefix=f"/kedge-test/{uuid.uuid4().hex[:12]}/")
    _revive(etcd_server)


def _revive(server: EtcdServer) -> None:
    if server.running():
        with contextlib.suppress(ProcessLookupError):
            resume_process(server.pid)
        if server.healthy():
            return
        with contextlib.suppress(TimeoutError):
            server.wait_healthy(timeout_s=5.0)
            return
        server.stop()
    server.start()
