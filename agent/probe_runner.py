"""Runs the ring-shift send/recv probe as a subprocess (`python -m kedge.hooks.probe`): torch lives in
the hooks, the agent never imports it. The probe prints the row-major delay matrix as JSON."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

from kedge.agent.model import Command, ProbeResult, RunProbe

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 120.0


def probe_command(probe: RunProbe, node_id: str) -> list[str]:
    rank = probe.peers.index(node_id)
    return [
        os.environ.get("KEDGE_PROBE_PYTHON", sys.executable),
        "-m",
        "kedge.hooks.probe",
        "--rank",
        str(rank),
        "--world-size",
        str(len(probe.peers)),
        "--master-addr",
        probe.master_addr,
        "--master-port",
        str(probe.master_port),
        "--size-bytes",
        str(probe.size_bytes or 1 << 20),
        "--repeats",
        str(probe.repeats or 3),
    ]


def run_probe(command: Command, probe: RunProbe, node_id: str) -> tuple[bool, str, ProbeResult | None]:
    """(ok, reason, result); bounded by PROBE_TIMEOUT_S, the subprocess is always reaped."""
    if node_id not in probe.peers:
        return False, f"node {node_id} is not among the probe peers", None
    try:
        done = subprocess.run(
            probe_command(probe, node_id), capture_output=True, timeout=PROBE_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        return False, f"probe timed out after {PROBE_TIMEOUT_S:.0f}s", None
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        return False, f"probe exited {done.returncode}: {tail[0][:200]}", None
    matrix = json.loads(done.stdout.decode().strip().splitlines()[-1])
    result = ProbeResult(
        command_id=command.command_id, peers=list(probe.peers), delay_s=list(map(float, matrix))
    )
    return True, "probe done", result
