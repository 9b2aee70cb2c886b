"""Config precedence, systemd notifications, fake NVML through the monitor, metrics, report outbox."""

from __future__ import annotations

import socket
import time
import urllib.request
from pathlib import Path

import pytest
from kedge.agent.config import Config
from kedge.agent.coordinator_client import CoordinatorClient
from kedge.agent.metrics import Metrics
from kedge.agent.model import NodeReport, Verdict, VerdictKind
from kedge.agent.nvml import FakeNvml, GpuMonitor
from kedge.agent.sdnotify import Notifier


@pytest.mark.timeout(10)
def test_config_precedence() -> None:
    env = {"KEDGE_AGENT_MAX_RESTARTS": "3", "KEDGE_AGENT_NODE_ID": "from-env", "KEDGE_AGENT_TICK_S": "0.5"}
    cfg = Config.from_env({"node_id": "from-arg", "coordinator": None}, env)
    assert (cfg.node_id, cfg.max_restarts, cfg.tick_s, cfg.coordinator) == ("from-arg", 3, 0.5, None)
    assert Config.from_env({}, {}).metrics_addr.startswith("127.0.0.1:")


@pytest.mark.timeout(10)
def test_sdnotify_datagrams(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(5)
        n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"})
        assert n.watchdog_interval_s == 1.0
        n.ready("up")
        assert sock.recv(256) == b"READY=1\nSTATUS=up"
        n.watchdog()
        n.watchdog()  # not due yet: nothing sent
        n.stopping()
        assert sock.recv(256) == b"WATCHDOG=1"
        assert sock.recv(256) == b"STOPPING=1"
    Notifier({}).ready()  # no systemd: a no-op


@pytest.mark.timeout(20)
def test_fake_nvml_monitor_sees_xid_and_survives_hung_probe() -> None:
    fake = FakeNvml(
        {"gpus": 2, "events": [{"at_s": 0.0, "gpu": 1, "xid": 79}, {"at_s": 0.0, "gpu": 0, "hang_s": 30}]}
    )
    monitor = GpuMonitor(fake, poll_s=0.1, probe_timeout_s=0.3)
    monitor.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            snaps = {g.index: g for g in monitor.snapshots()}
            if 1 in snaps and snaps[1].recent_xids == [79] and snaps[1].uuid:
                break
            time.sleep(0.05)
        assert snaps[1].recent_xids == [79] and snaps[1].uuid == "GPU-fake-1"
        assert 0 not in snaps or snaps[0].uuid == ""  # GPU 0's probe hangs: no snapshot, nothing blocks
    finally:
        t0 = time.monotonic()
        monitor.stop()
        assert time.monotonic() - t0 < 5


@pytest.mark.timeout(10)
def test_metrics_endpoint() -> None:
    m = Metrics()
    m.serve("127.0.0.1:0")
    try:
        m.observe_verdict(Verdict(kind=VerdictKind.RANK_DIED, node_id="n", rank=1, reason="x"))
        body = urllib.request.urlopen(f"http://127.0.0.1:{m.port}/metrics", timeout=5).read().decode()
        assert 'kedge_verdicts_total{kind="RANK_DIED"} 1.0' in body
    finally:
        m.stop()


@pytest.mark.timeout(10)
def test_outbox_is_bounded_and_keeps_verdicts() -> None:
    client = CoordinatorClient(
        "127.0.0.1:1",
        job_id="j",
        node_id="n",
        hostname="h",
        node_address="a",
        nproc=1,
        gpus=0,
        command=[],
        incarnation=lambda: 0,
        on_command=lambda c: None,
        outbox_size=4,
    )
    verdict = Verdict(kind=VerdictKind.RANK_DIED, node_id="n", rank=0, reason="x")
    client.report(NodeReport(job_id="j", node_id="n", incarnation=1, verdicts=[verdict]))
    for _ in range(10):
        client.report(NodeReport(job_id="j", node_id="n", incarnation=1))
    assert client.dropped_reports == 7
    assert client._outbox[0].verdicts == [verdict] and len(client._outbox) == 4
    client.stop()
