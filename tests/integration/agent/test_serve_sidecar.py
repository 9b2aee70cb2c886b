"""`kedge agent serve` (sidecar mode) under a systemd-style NOTIFY_SOCKET: READY on start, ranks started
by someone else register through the socket, a killed one gets a RANK_DIED verdict, SIGTERM stops the
agent with STOPPING."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kedge_fixtures.agent_runs import KEDGE, WORKLOAD, read_verdicts, workload_env
from kedge_fixtures.processes import free_port


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_sidecar_adopts_ranks_and_reports_death(tmp_path: Path) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(30)
    sock, run_dir, verdict_log = tmp_path / "agent.sock", tmp_path / "pages", tmp_path / "verdicts.jsonl"
    env = dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "notify"), WATCHDOG_USEC="1000000")
    agent = subprocess.Popen(
        [
            KEDGE,
            "agent",
            "serve",
            "--socket",
            str(sock),
            "--run-dir",
            str(run_dir),
            "--verdict-log",
            str(verdict_log),
            "--metrics-addr",
            "",
            "--nvml",
            "off",
            "--node-id",
            "side0",
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    ranks: list[subprocess.Popen[bytes]] = []
    try:
        assert notify.recv(256).startswith(b"READY=1")
        assert notify.recv(256) == b"WATCHDOG=1"
        port = free_port()
        for rank in range(2):
            rank_env = workload_env("sigkill:1:5", steps=400)
            rank_env.update(
                RANK=str(rank),
                LOCAL_RANK=str(rank),
                WORLD_SIZE="2",
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port),
                KEDGE_AGENT_SOCKET=str(sock),
                KEDGE_PROGRESS_DIR=str(run_dir),
                KEDGE_INCARNATION="1",
            )
            ranks.append(
                subprocess.Popen([sys.executable, str(WORKLOAD)], env=rank_env, stderr=subprocess.DEVNULL)
            )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not any(
            v["kind"] == "RANK_DIED" for v in read_verdicts(verdict_log)
        ):
            time.sleep(0.2)
        died = [v for v in read_verdicts(verdict_log) if v["kind"] == "RANK_DIED"]
        assert died and died[0]["rank"] == 1 and died[0]["node_id"] == "side0", died
        assert "not the agent's child" in str(died[0]["reason"])
        agent.send_signal(signal.SIGTERM)
        _out, err = agent.communicate(timeout=30)
        messages = []
        while b"STOPPING=1" not in messages:
            messages.append(notify.recv(256))
        assert agent.returncode == 128 + signal.SIGTERM, err[-2000:]
        assert "rank_adopted rank=0" in err and "rank_adopted rank=1" in err
    finally:
        for p in [*ranks]:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)
        if agent.poll() is None:
            agent.kill()
            agent.communicate(timeout=30)
        notify.close()
