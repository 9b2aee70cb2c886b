"""Coordinator replicas for the high-availability tests: `kedge coordinator serve --store etcd://...`
processes on loopback, and a `replicas` fixture that stops whatever a test started."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from kedge.coordinator.admin_client import get_status
from kedge.coordinator.errors import CoordinatorUnreachable

if TYPE_CHECKING:  # imported for types only: plugins must not import each other at load time
    from kedge_fixtures.etcd import EtcdHandle

KEDGE = [sys.executable, "-c", "from kedge.coordinator.cli import main; main()"]


class Replica:
    def __init__(self, etcd: EtcdHandle, name: str, master_port: int = 29500) -> None:
        env = dict(os.environ, KEDGE_COORDINATOR_ID=name)
        argv = [
            *KEDGE,
            "coordinator",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--store",
            etcd.store_url + etcd.prefix,
        ]
        argv += ["--lease-ttl-s", "3", "--master-port", str(master_port)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = re.search(r"listening on (\S+)", line)
        assert match, f"no address in {line!r}"
        self.address = match.group(1)

    def leads(self) -> bool:
        try:
            return bool(get_status(self.address, timeout_s=2.0)["leader"])
        except CoordinatorUnreachable:
            return False

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def replicas(etcd: EtcdHandle) -> Iterator[list[Replica]]:
    made: list[Replica] = []
    yield made
    for replica in made:
        replica.close()
