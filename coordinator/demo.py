"""`kedge demo`: the README's main job, on one machine.

A coordinator (SQLite in a temporary directory) and two agents (`node-a`, `node-b`, two ranks each)
train a small transformer with FSDP2 and kedge checkpoints. Then:

1. a rank is SIGKILLed → the agent reports it → restart in the same world from the last checkpoint;
2. node-b (agent and workers) is killed → its lease expires → node-b is isolated and the job
   shrinks 4 → 2, resuming from the last checkpoint resharded to two ranks.

It prints the timeline (fault, detection, diagnosis, action, resume, loss before/after) and the final
`kedge status`, and leaves no process behind.
"""

from __future__ import annotations

import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kedge.coordinator.core import Config
from kedge.coordinator.local_cluster import ClusterSpec, LocalCluster

DEMO_STEPS = 90


@dataclass(frozen=True, slots=True)
class Mark:
    """One line of the demo's timeline."""

    wall_s: float
    what: str
    detail: str


def demo_config() -> Config:
    """Quick leases and ticks for a one-machine demo; master port picked per incarnation."""
    config = Config(lease_ttl_s=3.0, heartbeat_interval_s=0.5, tick_interval_s=0.1, start_min_nodes=2)
    config.start_settle_s = 0.5
    config.executor.master_port = 0
    config.executor.stop_grace_s = 2.0
    return config


def run_demo(workdir: Path | None = None, echo: Any = print) -> int:
    """Runs the story; 0 when every stage happened, 1 with a one-line reason otherwise."""
    with tempfile.TemporaryDirectory(prefix="kedge-demo-") as tmp:
        root = workdir or Path(tmp)
        spec = ClusterSpec(
            workdir=root,
            train_args=["--steps", str(DEMO_STEPS), "--ckpt-every", "10", "--step-s", "0.05"],
            config=demo_config(),
        )
        marks: list[Mark] = []
        with LocalCluster(spec) as cluster:
            try:
                _story(cluster, marks, echo)
            except (TimeoutError, RuntimeError) as exc:
                echo(f"kedge demo: failed: {exc} (logs in {root})")
                return 1
            finally:
                _print_timeline(cluster, marks, echo)
                if cluster.server is not None:
                    _print_status(cluster.server.address, echo)
    return 0


def _story(cluster: LocalCluster, marks: list[Mark], echo: Any) -> None:
    t0 = time.time()
    cluster.start()
    assert cluster.server is not None
    echo(f"coordinator on {cluster.server.address}; agents node-a, node-b (2 ranks each); training ...")
    cluster.wait_for(lambda: cluster.last_step() >= 15, 150, "training to reach step 15")
    marks.append(Mark(t0, "begin", "coordinator and agents started"))
    before = _last_loss(cluster)
    marks.append(
        Mark(cluster.signal_rank(3, signal.SIGKILL), "FAULT", f"SIGKILL rank 3 (node-b); loss {before}")
    )
    start1 = cluster.wait_for(
        lambda: _start_after(cluster, marks[-1].wall_s, world=4), 90, "restart with world 4"
    )
    cluster.wait_for(lambda: cluster.last_step() >= start1["step"] + 15, 90, "training after the restart")
    before = _last_loss(cluster)
    marks.append(
        Mark(cluster.kill_node("node-b"), "FAULT", f"node-b lost (agent and workers killed); loss {before}")
    )
    cluster.wait_for(lambda: _start_after(cluster, marks[-1].wall_s, world=2), 120, "shrunk world of 2")
    cluster.wait_for(lambda: cluster.last_step() >= DEMO_STEPS, 120, f"training to step {DEMO_STEPS}")
    marks.append(Mark(time.time(), "done", f"step {DEMO_STEPS} reached on world 2"))
    cluster.wait_for(lambda: _finished(cluster), 30, "every rank to exit 0")


def _finished(cluster: LocalCluster) -> bool:
    status = cluster.status()
    return status is not None and status.job.state.value == "finished"


def _start_after(cluster: LocalCluster, since_s: float, world: int) -> dict[str, Any] | None:
    starts = [
        e
        for e in cluster.train_events()
        if e["event"] == "start" and e["t"] > since_s and e["world"] == world
    ]
    if not starts:
        return None
    steps = [e for e in cluster.train_events() if e["event"] == "step" and e["t"] > starts[0]["t"]]
    return starts[0] if steps else None


def _last_loss(cluster: LocalCluster) -> str:
    steps = [e for e in cluster.train_events() if e["event"] == "step"]
    return f"{steps[-1]['loss']:.3f} at step {steps[-1]['step']}" if steps else "-"


def _print_timeline(cluster: LocalCluster, marks: list[Mark], echo: Any) -> None:
    lines = [(m.wall_s, m.what, m.detail) for m in marks]
    status = cluster.status() if cluster.server is not None else None
    for ev in status.timeline if status else []:
        if ev.kind in ("verdict", "action", "stop", "start", "running", "resumed", "node", "finished"):
            lines.append((ev.wall_ns / 1e9, ev.kind, ev.detail))
    events = cluster.train_events()
    for i, e in enumerate(events):
        if e["event"] == "start":
            first = next((x for x in events[i + 1 :] if x["event"] == "step"), None)
            loss = f", first loss {first['loss']:.3f} at step {first['step']}" if first else ""
            what = "resume" if e.get("resumed") else "train"
            lines.append(
                (
                    e["t"],
                    what,
                    f"world {e['world']} incarnation {e['incarnation']} from step {e['step']}{loss}",
                )
            )
    if not lines:
        return
    t0 = min(t for t, _, _ in lines)
    echo("\ntimeline (seconds from start)")
    for t, what, detail in sorted(lines):
        echo(f"  {t - t0:7.2f}s  {what:<9} {detail}")
    _print_durations(sorted(lines), echo)


def _print_durations(lines: list[tuple[float, str, str]], echo: Any) -> None:
    faults = [t for t, what, _ in lines if what == "FAULT"]
    for n, fault in enumerate(faults, 1):
        detect = next((t for t, what, _ in lines if what == "verdict" and t >= fault), None)
        act = next((t for t, what, _ in lines if what == "action" and t >= fault), None)
        resume = next((t for t, what, _ in lines if what == "resume" and t >= fault), None)

        def fmt(t: float | None, fault: float = fault) -> str:
            return f"{t - fault:.1f}s" if t is not None else "-"

        echo(
            f"fault {n}: detected {fmt(detect)}, action {fmt(act)}, training resumed {fmt(resume)} after the fault"
        )


def _print_status(address: str, echo: Any) -> None:
    from kedge.coordinator.admin_client import get_status
    from kedge.coordinator.errors import CoordinatorUnreachable
    from kedge.coordinator.status_view import render

    try:
        echo(f"\n$ kedge status --coordinator {address}\n" + render(get_status(address)))
    except CoordinatorUnreachable as exc:
        echo(f"kedge status: {exc}")
