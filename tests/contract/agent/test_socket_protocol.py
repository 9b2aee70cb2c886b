"""The hooks' agent client against the agent's real Unix-socket server: register, telemetry, control."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from kedge.agent.socket_server import RankHello, SocketServer, Telemetry
from kedge.hooks.agent_client import AgentClient, Batch


@pytest.mark.timeout(30)
def test_register_telemetry_and_control(tmp_path: Path) -> None:
    hellos: list[RankHello] = []
    batches: list[Telemetry] = []
    got_batch = threading.Event()

    def on_register(h: RankHello) -> tuple[bool, str, int]:
        hellos.append(h)
        return (h.rank != 9, "unknown rank" if h.rank == 9 else "", 4)

    def on_telemetry(t: Telemetry) -> None:
        batches.append(t)
        got_batch.set()

    server = SocketServer(
        str(tmp_path / "a.sock"), node_id="n1", on_register=on_register, on_telemetry=on_telemetry
    )
    server.start()
    controls: list[tuple[str, str]] = []
    got_control = threading.Event()
    client = AgentClient(str(tmp_path / "a.sock"), rank=1, incarnation=4)
    try:
        reg = client.register(
            job_id="j", local_rank=1, world_size=2, pid=123, page="/dev/shm/x", hostname="h"
        )
        assert (reg.accepted, reg.node_id, reg.incarnation) == (True, "n1", 4)
        assert hellos[0].progress_page == "/dev/shm/x" and hellos[0].pid == 123
        client.start(lambda kind, reason: (controls.append((kind, reason)), got_control.set()))
        rec = {
            "group": "0",
            "seq": 3,
            "op": "gloo:all_reduce",
            "size_bytes": 64,
            "state": "scheduled",
            "enqueue_mono_ns": 1,
            "start_mono_ns": 0,
            "complete_mono_ns": 0,
            "step": 2,
        }
        assert client.send(Batch(steps=[(2, 0.5, 99)], collectives=[rec], dropped_records=1))
        assert got_batch.wait(10)
        t = batches[0]
        assert (t.rank, t.incarnation, t.dropped_records) == (1, 4, 1)
        assert (t.steps[0].step, t.steps[0].duration_s, t.collectives[0].seq, t.collectives[0].rank) == (
            2,
            0.5,
            3,
            1,
        )
        for _ in range(50):  # the subscription may not be open yet: resend until it is delivered
            server.send_control(1, 4, "CONTROL_KIND_DUMP_TRACE", "test")
            if got_control.wait(0.2):
                break
        assert controls[0] == ("CONTROL_KIND_DUMP_TRACE", "test")
        rejected = AgentClient(str(tmp_path / "a.sock"), rank=9, incarnation=4)
        reply = rejected.register(job_id="j", local_rank=0, world_size=2, pid=1, page="", hostname="h")
        assert not reply.accepted and reply.reason == "unknown rank"
        rejected.close()
    finally:
        client.close()
        server.stop()
