"""Run as a script by test_fault_recovery.py (in its own process, which becomes a child subreaper):
one coordinator, two real agents (`kedge agent run`, node-a and node-b, two gloo ranks each) running
the agent's test workload; SIGKILL rank 3 -> restart; kill node-b -> shrink to 2. Prints one JSON
object with what the coordinator recorded and how long each stage took."""

from __future__ import annotations

import json
import signal
import sys
import tempfile
import time
from pathlib import Path

from kedge.coordinator.core import Config
from kedge.coordinator.local_cluster import ClusterSpec, LocalCluster

WORKLOAD = Path(__file__).resolve().parents[2] / "workloads" / "train_gloo.py"


def stepping(cluster: LocalCluster, incarnation: int, world: int, min_step: int) -> bool:
    status = cluster.status()
    if status is None or status.job.incarnation != incarnation or status.job.world_size != world:
        return False
    ranks = [r for r in status.ranks if r.incarnation == incarnation and r.step >= min_step]
    return len(ranks) == world


def main() -> int:
    config = Config(lease_ttl_s=3.0, heartbeat_interval_s=0.5, tick_interval_s=0.1, start_min_nodes=2)
    config.start_settle_s = 0.5
    config.executor.master_port = 0
    config.executor.stop_grace_s = 2.0
    out: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="kedge-scenario-") as tmp:
        spec = ClusterSpec(
            workdir=Path(tmp),
            job_id="scenario",
            workload=[sys.executable, str(WORKLOAD)],
            env={"KEDGE_TEST_STEPS": "100000", "KEDGE_TEST_STEP_S": "0.05"},
            config=config,
        )
        with LocalCluster(spec) as cluster:
            cluster.start()
            cluster.wait_for(lambda: stepping(cluster, 1, 4, 3), 150, "four ranks stepping")
            t_kill = cluster.signal_rank(3, signal.SIGKILL)
            cluster.wait_for(lambda: stepping(cluster, 2, 4, 1), 150, "restarted world stepping")
            out["restart_s"] = time.time() - t_kill
            t_loss = cluster.kill_node("node-b")
            cluster.wait_for(lambda: stepping(cluster, 3, 2, 1), 150, "shrunk world stepping")
            out["shrink_s"] = time.time() - t_loss
            status = cluster.status()
            assert status is not None
            out["verdicts"] = [
                [v.kind.name, v.node_id, v.rank, (v.wall_time_ns / 1e9) - t_kill]
                for v in reversed(status.diagnoses)
            ]
            out["actions"] = [[a.kind.value, a.incarnation, a.nodes] for a in reversed(status.actions)]
            out["nodes"] = {n.record.node_id: n.record.state.value for n in status.nodes}
            out["world"] = status.job.world_size
            out["t_loss_after_kill_s"] = t_loss - t_kill
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
