"""The real gRPC coordinator with scripted agents (generated stubs): start, restart on a rank
death, shrink on node loss, `kedge status`, and `kedge coordinator serve` across a restart."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from kedge.coordinator.core import Config
from kedge.coordinator.server import RunningServer, serve
from kedge.coordinator.sqlite_store import SqliteStore
from kedge.proto import common_pb2
from kedge_fixtures.fake_agent import FakeAgent

pytestmark = pytest.mark.timeout(60)

KEDGE = [sys.executable, "-c", "from kedge.coordinator.cli import main; main()"]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    config = Config(lease_ttl_s=2.0, tick_interval_s=0.1, start_min_nodes=2, start_settle_s=0.2)
    config.executor.master_port = 29500
    running = serve("127.0.0.1:0", SqliteStore(tmp_path / "c.db"), config)
    yield running
    running.stop()


def test_restart_then_shrink_through_grpc(server: RunningServer) -> None:
    a, b = FakeAgent(server.address, "node-a"), FakeAgent(server.address, "node-b")
    try:
        assert a.register().accepted and b.register().accepted
        start = a.wait_for("start", 1)
        assert [(w.rank, w.local_rank) for w in start.start.workers] == [(0, 0), (1, 1)]
        assert start.start.world_size == 4 and start.start.restore_step == -1
        assert [w.rank for w in b.wait_for("start", 1).start.workers] == [2, 3]

        died = common_pb2.Verdict(
            kind=common_pb2.VERDICT_KIND_RANK_DIED, rank=3, reason="rank 3 killed by signal 9", incarnation=1
        )
        b.report(died)
        a.wait_for("stop", 1)
        b.wait_for("stop", 1)
        assert a.wait_for("start", 2).start.world_size == 4

        b.heartbeating.clear()  # node-b's agent goes silent: lease expires, the job shrinks
        shrunk = a.wait_for("start", 3)
        assert shrunk.start.world_size == 2 and [w.rank for w in shrunk.start.workers] == [0, 1]
        assert not any(c.incarnation == 3 for c in b.commands)

        out = subprocess.run(
            [*KEDGE, "status", "--coordinator", server.address, "--json"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        job = json.loads(out.stdout)["jobs"][0]
        assert (job["job_id"], job["incarnation"], job["world_size"], job["restarts"]) == ("job", 3, 2, 2)
        assert [x["action"] for x in job["actions"]][:2] == ["shrink", "restart"]
        assert {n["node_id"]: n["state"] for n in job["nodes"]} == {"node-a": "alive", "node-b": "isolated"}
        table = subprocess.run(
            [*KEDGE, "status", "--coordinator", server.address], capture_output=True, text=True, timeout=30
        )
        assert table.returncode == 0 and "isolate node-b and shrink 4 -> 2" in table.stdout
    finally:
        a.close()
        b.close()


def test_status_unreachable_is_one_line_exit_2(tmp_path: Path) -> None:
    from kedge_fixtures.processes import free_port

    out = subprocess.run(
        [*KEDGE, "status", "--coordinator", f"127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "unreachable" in out.stderr


def _serve(db: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            *KEDGE,
            "coordinator",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--store",
            f"sqlite://{db}",
            "--min-nodes",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"listening on (\S+)", line)
    assert match, (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc, match.group(1)


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err


def test_serve_command_survives_restart(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    proc, address = _serve(db)
    agent = FakeAgent(address, "n1")
    try:
        agent.register()
        agent.wait_for("start", 1)
    finally:
        agent.close()
        _stop(proc)
    proc, address = _serve(db)
    try:
        out = subprocess.run(
            [*KEDGE, "status", "--coordinator", address, "--json"], capture_output=True, text=True, timeout=30
        )
        job = json.loads(out.stdout)["jobs"][0]
        assert (job["job_id"], job["incarnation"], job["world_size"]) == ("job", 1, 2)
    finally:
        _stop(proc)


def test_bad_store_url_is_one_line_exit_2() -> None:
    out = subprocess.run(
        [*KEDGE, "coordinator", "serve", "--listen", "127.0.0.1:0", "--store", "mysql://x"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2 and "unknown store url" in out.stderr and out.stderr.count("\n") == 1
