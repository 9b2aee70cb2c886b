"""RunProbe: two agents' probe subprocesses (`python -m kedge.hooks.probe`, gloo) measure the ring-shift
send/recv delay matrix; each returns the whole source x destination matrix."""

from __future__ import annotations

import threading

import pytest
from kedge.agent.model import Command, ProbeResult, RunProbe
from kedge.agent.probe_runner import run_probe
from kedge_fixtures.processes import free_port


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_probe_matrix_between_two_nodes() -> None:
    probe = RunProbe(
        peers=["a", "b"], size_bytes=1 << 16, repeats=2, master_addr="127.0.0.1", master_port=free_port()
    )
    command = Command(command_id="p1", job_id="j", incarnation=1, body=probe)
    results: dict[str, tuple[bool, str, ProbeResult | None]] = {}
    threads = [
        threading.Thread(target=lambda n=node: results.__setitem__(n, run_probe(command, probe, n)))
        for node in "ab"
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(140)
    for node in "ab":
        ok, reason, result = results[node]
        assert ok, reason
        assert result is not None and result.command_id == "p1" and result.peers == ["a", "b"]
        a_a, a_b, b_a, b_b = result.delay_s
        assert a_a == 0.0 and b_b == 0.0 and a_b > 0 and b_a > 0
    assert run_probe(command, probe, "zzz")[0] is False  # not a peer
