"""The agent under an (in-test, fake) coordinator: registration after the coordinator comes up late,
StartWorkers with the restore step, verdicts at once (rank death, fake-NVML XID 79), no restart by the
agent itself, fencing of a stale command, StopWorkers, a new incarnation that runs to the end."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from kedge.proto import common_pb2
from kedge.proto import coordinator_pb2 as pb
from kedge_fixtures.agent_runs import agent_command, workload_env
from kedge_fixtures.fake_coordinator import FakeCoordinator
from kedge_fixtures.processes import free_port


def start(incarnation: int, port: int, restore_step: int) -> pb.Command:
    workers = [common_pb2.WorkerSpec(rank=r, local_rank=r) for r in range(2)]
    body = pb.StartWorkers(
        world_size=2, master_addr="127.0.0.1", master_port=port, workers=workers, restore_step=restore_step
    )
    return pb.Command(
        command_id=f"start-{incarnation}", job_id="default", incarnation=incarnation, start=body
    )


def stop(command_id: str, incarnation: int) -> pb.Command:
    body = pb.StopWorkers(grace_s=2.0, reason="test")
    return pb.Command(command_id=command_id, job_id="default", incarnation=incarnation, stop=body)


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_agent_obeys_coordinator(tmp_path: Path) -> None:
    port = free_port()
    script = tmp_path / "nvml.json"
    script.write_text(
        json.dumps({"gpus": 2, "events": [{"gpu": 1, "xid": 79, "when_file": str(tmp_path / "xid")}]})
    )
    cmd = agent_command(tmp_path, 2, "--coordinator", f"127.0.0.1:{port}", "--node-id", "n0")
    cmd[cmd.index("--nvml") + 1] = f"fake:{script}"
    env = workload_env("sigkill:1:30", steps=40)
    agent = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    coord = FakeCoordinator()
    try:
        time.sleep(1.0)  # the coordinator comes up after the agent: it must retry with backoff
        coord.serve(port)
        coord.wait_for(lambda: coord.registrations, 15)
        assert coord.registrations[0].node_id == "n0" and coord.registrations[0].nproc == 2

        coord.commands.put(start(1, free_port(), restore_step=-2))
        assert coord.wait_for(lambda: coord.result("start-1"), 30).ok  # type: ignore[attr-defined]
        (tmp_path / "xid").touch()  # fake NVML: XID 79 on GPU 1 now that rank 1 runs there

        def died() -> list[object]:
            return [v for v in coord.verdicts() if v.kind == common_pb2.VERDICT_KIND_RANK_DIED]

        first = coord.wait_for(died, 60)[0]  # type: ignore[index]
        assert (first.rank, first.node_id, first.evidence["signal"]) == (1, "n0", "9")
        gpu = coord.wait_for(
            lambda: [v for v in coord.verdicts() if v.kind == common_pb2.VERDICT_KIND_GPU_FAULT], 15
        )[0]  # type: ignore[index]
        assert (gpu.gpu_index, gpu.rank) == (1, 1) and "79" in gpu.reason

        coord.commands.put(stop("stale", 0))  # an older incarnation: fenced
        stale = coord.wait_for(lambda: coord.result("stale"), 15)
        assert not stale.ok and "stale incarnation" in stale.reason  # type: ignore[attr-defined]
        coord.commands.put(stop("stop-1", 1))
        assert coord.wait_for(lambda: coord.result("stop-1"), 15).ok  # type: ignore[attr-defined]
        summaries = [r for r in coord.reports if r.ranks]
        assert summaries and any(
            g.last_completed_seq > 0 for r in summaries for s in r.ranks for g in s.groups
        )
        assert any(r.steps for r in coord.reports) and any(r.gpus for r in coord.reports)

        coord.commands.put(start(2, free_port(), restore_step=-1))  # fault only fires in incarnation 1
        _out, err = agent.communicate(timeout=90)
    finally:
        if agent.poll() is None:
            agent.terminate()
            agent.communicate(timeout=30)
        coord.stop()
    assert agent.returncode == 0, err[-3000:]
    assert "rank 0 restore_step=-1" in err and "rank 1 restore_step=-2" in err
    ok = [
        (v.rank, v.incarnation) for v in coord.verdicts() if v.kind == common_pb2.VERDICT_KIND_RANK_EXITED_OK
    ]
    assert sorted(ok) == [(0, 2), (1, 2)]
    assert "restarting_ranks" not in err  # with a coordinator the agent never restarts on its own
    assert coord.heartbeats > 0
