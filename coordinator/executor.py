"""Executes the policy's actions through the agents, as a small state machine driven by the core.

    begin(action) ─▶ stopping: StopWorkers to every node with workers (bounded by stop_timeout_s)
                 ─▶ starting: isolate/replace nodes, begin_incarnation (fencing token k → k+1),
                              StartWorkers with the new rank assignment and the restore step
                              (bounded by start_timeout_s)
                 ─▶ running:  job RUNNING; the first step reported in k+1 is the resume

Nothing here blocks or sleeps: `on_done` and `poll` advance the machine, so the same code runs under
the gRPC server's tick thread and under a simulator's virtual clock. A StaleIncarnation from the
store means another coordinator moved the job on: this one drops the recovery and reloads.
"""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from kedge.coordinator.errors import StaleIncarnation
from kedge.coordinator.model import (
    ActionKind,
    ActionRecord,
    Assignment,
    CommandData,
    CommandOutcome,
    JobState,
    NodeState,
    StartWorkersBody,
    StopWorkersBody,
    Verdict,
    VerdictKind,
)
from kedge.coordinator.policy import EXIT_STOP_NO_REQUEUE, Action
from kedge.coordinator.runtime import Clock, CommandSink, JobRuntime, Recovery
from kedge.coordinator.store import Store

log = logging.getLogger(__name__)


@dataclass(kw_only=True, slots=True)
class Config:
    """How actions are carried out."""

    stop_grace_s: float = 3.0
    """Agents abort, SIGTERM, then SIGKILL workers after this grace."""
    stop_timeout_s: float = 10.0
    """The executor moves on after this long even if some node did not confirm the stop."""
    start_timeout_s: float = 30.0
    """A node that did not confirm its start within this long is reported as failed."""
    master_port: int = 29500
    """Rendezvous port on rank 0's node; 0 picks a free port on the coordinator's host
    (only valid when every node shares that host: tests and the demo)."""
    restore_step: int = -1
    """Step workers restore: -1 latest committed, -2 none."""


class Executor:
    """Carries out actions for the core (which holds the lock around every call)."""

    def __init__(
        self,
        store: Store,
        sink: CommandSink,
        clock: Clock,
        config: Config,
        event: Callable[[JobRuntime, str, str], None],
    ) -> None:
        self.store = store
        self.sink = sink
        self.clock = clock
        self.config = config
        self._event = event

    # --- entry points -------------------------------------------------------------------------
    def begin(self, rt: JobRuntime, action: Action, reason: str) -> None:
        """Records the decision and starts carrying it out."""
        k = rt.job.incarnation
        record = ActionRecord(
            kind=action.kind,
            reason=reason,
            wall_time_ns=self.clock.wall_ns(),
            incarnation=k,
            evidence=list(action.evidence),
            nodes=[*action.isolate, *action.spares],
        )
        try:
            self.store.append_action(rt.job.job_id, record, incarnation=k)
        except StaleIncarnation:
            self._abandon(rt, "decision")
            return
        rt.history.append(record)
        self._event(rt, "action", f"{action.kind.value}: {reason}")
        log.warning(
            "action job=%s kind=%s incarnation=%d reason=%s", rt.job.job_id, action.kind.value, k, reason
        )
        if action.kind is ActionKind.STOP:
            self._stop_job(rt, reason)
        elif action.kind in (ActionKind.RESTART, ActionKind.SHRINK, ActionKind.REPLACE):
            self._set_state(rt, JobState.RECOVERING)
            rt.recovery = Recovery(action=action, reason=reason, phase="stopping", deadline_s=0.0)
            self._send_stops(rt)

    def begin_initial(self, rt: JobRuntime, world_size: int) -> None:
        """First start of a job once enough nodes registered (no stop phase, no restart counted)."""
        action = Action(kind=ActionKind.RESTART, world_size=world_size)
        rt.recovery = Recovery(
            action=action, reason="initial start", phase="starting", deadline_s=0.0, initial=True
        )
        self._start_world(rt)

    def on_done(self, rt: JobRuntime, outcome: CommandOutcome) -> None:
        """An agent finished a command of this recovery."""
        rec = rt.recovery
        if rec is None or outcome.command_id not in rec.waiting:
            return
        node = rec.waiting.pop(outcome.command_id)
        if not outcome.ok:
            rec.failures.append(f"{node}: {outcome.reason}")
        if not rec.waiting:
            self._advance(rt)

    def poll(self, rt: JobRuntime) -> None:
        """Moves on when a phase's deadline passed."""
        rec = rt.recovery
        if rec is not None and self.clock.mono_s() >= rec.deadline_s:
            rec.failures += [f"{node}: no answer to {rec.phase}" for node in rec.waiting.values()]
            rec.waiting.clear()
            self._advance(rt)

    # --- phases -------------------------------------------------------------------------------
    def _advance(self, rt: JobRuntime) -> None:
        rec = rt.recovery
        assert rec is not None
        if rec.phase == "stopping":
            self._start_world(rt)
        else:
            self._finish(rt)

    def _send_stops(self, rt: JobRuntime) -> None:
        rec = rt.recovery
        assert rec is not None
        targets = [
            n
            for n in rt.world_nodes()
            if n in rt.nodes and rt.nodes[n].state in (NodeState.ALIVE, NodeState.ISOLATED)
        ]
        body = StopWorkersBody(grace_s=self.config.stop_grace_s, reason=rec.reason)
        for node in targets:
            rec.waiting[self._send(rt, node, body)] = node
        rec.deadline_s = self.clock.mono_s() + self.config.stop_timeout_s
        self._event(rt, "stop", f"stopping workers on {','.join(targets) or 'no node'}")
        if not targets:
            self._advance(rt)

    def _start_world(self, rt: JobRuntime) -> None:
        rec = rt.recovery
        assert rec is not None
        k = rt.job.incarnation
        try:
            self._apply_membership(rt, rec.action, k)
            assignments = plan_assignments(rt, rec.action.world_size)
            used = {a.node_id for a in assignments}
            for node_id, node in list(rt.nodes.items()):
                if node.state is NodeState.ALIVE and node_id not in used:
                    self._set_node(rt, node_id, NodeState.SPARE, k)
            new_k = self.store.begin_incarnation(
                rt.job.job_id,
                expected_incarnation=k,
                assignments=assignments,
                state=JobState.RECOVERING,
                count_restart=not rec.initial,
            )
        except StaleIncarnation:
            self._abandon(rt, "new incarnation")
            return
        except ValueError as exc:
            rt.recovery = None
            self._stop_job(rt, f"cannot form a new world: {exc}")
            return
        job = self.store.get_job(rt.job.job_id)
        assert job is not None and job.incarnation == new_k
        rt.job, rt.assignments = job, assignments
        rt.ranks.clear()
        rt.exited_ok.clear()
        rt.verdicts.clear()
        rt.diagnoser.reset(incarnation=new_k, rank_nodes={a.rank: a.node_id for a in assignments})
        rec.phase, rec.failures = "starting", []
        self._send_starts(rt, assignments)

    def _send_starts(self, rt: JobRuntime, assignments: list[Assignment]) -> None:
        rec = rt.recovery
        assert rec is not None
        rank0 = rt.nodes[assignments[0].node_id]
        master_addr = rank0.address or rank0.hostname or "127.0.0.1"
        port = self.config.master_port or free_port()
        # Group once: filtering the whole assignment per node was O(nodes x ranks), minutes at 100K GPUs.
        by_node: dict[str, list[tuple[int, int]]] = {}
        for a in assignments:
            by_node.setdefault(a.node_id, []).append((a.rank, a.local_rank))
        for node, workers in by_node.items():
            body = StartWorkersBody(
                world_size=len(assignments),
                master_addr=master_addr,
                master_port=port,
                workers=workers,
                restore_step=self.config.restore_step,
            )
            rec.waiting[self._send(rt, node, body)] = node
        rec.deadline_s = self.clock.mono_s() + self.config.start_timeout_s
        self._event(
            rt,
            "start",
            f"incarnation {rt.job.incarnation}: world {len(assignments)} on {','.join(rt.world_nodes())}",
        )

    def _finish(self, rt: JobRuntime) -> None:
        rec = rt.recovery
        assert rec is not None
        rt.recovery = None
        self._set_state(rt, JobState.RUNNING)
        rt.resume_pending = True
        self._event(rt, "running", f"incarnation {rt.job.incarnation} started")
        for failure in rec.failures:
            node = failure.split(":", 1)[0]
            rt.verdicts.append(
                Verdict(
                    kind=VerdictKind.RANK_DIED,
                    node_id=node,
                    reason=f"workers failed to start: {failure}",
                    wall_time_ns=self.clock.wall_ns(),
                    incarnation=rt.job.incarnation,
                )
            )

    def _stop_job(self, rt: JobRuntime, reason: str) -> None:
        body = StopWorkersBody(
            grace_s=self.config.stop_grace_s, reason=reason, final=True, exit_code=EXIT_STOP_NO_REQUEUE
        )
        for node in rt.nodes.values():
            if node.state in (NodeState.ALIVE, NodeState.SPARE):
                self._send(rt, node.node_id, body)
        self._set_state(rt, JobState.STOPPED)
        rt.exit_code = EXIT_STOP_NO_REQUEUE
        self._event(rt, "stop", f"job stopped (exit {EXIT_STOP_NO_REQUEUE}, do not requeue): {reason}")

    # --- helpers ------------------------------------------------------------------------------
    def _apply_membership(self, rt: JobRuntime, action: Action, k: int) -> None:
        for node_id in action.isolate:
            self._set_node(rt, node_id, NodeState.ISOLATED, k)
        for node_id in action.spares:
            self._set_node(rt, node_id, NodeState.ALIVE, k)

    def _set_node(self, rt: JobRuntime, node_id: str, state: NodeState, k: int) -> None:
        if node_id in rt.nodes and rt.nodes[node_id].state is not state:
            self.store.set_node_state(rt.job.job_id, node_id, state, incarnation=k)
            rt.nodes[node_id].state = state
            self._event(rt, "node", f"{node_id} -> {state.value}")

    def _set_state(self, rt: JobRuntime, state: JobState) -> None:
        try:
            self.store.set_job_state(rt.job.job_id, state, incarnation=rt.job.incarnation)
        except StaleIncarnation:
            self._abandon(rt, f"state {state.value}")
            return
        rt.job.state = state

    def _send(self, rt: JobRuntime, node_id: str, body: StartWorkersBody | StopWorkersBody) -> str:
        command_id = uuid.uuid4().hex[:16]
        cmd = CommandData(
            command_id=command_id, job_id=rt.job.job_id, incarnation=rt.job.incarnation, body=body
        )
        self.sink.send(node_id, cmd)
        return command_id

    def _abandon(self, rt: JobRuntime, what: str) -> None:
        """Another coordinator moved the job on (fencing): drop our plan and take the stored state."""
        log.error("fenced job=%s step=%s: store has a newer incarnation; reloading", rt.job.job_id, what)
        rt.recovery = None
        job = self.store.get_job(rt.job.job_id)
        if job is not None:
            rt.job = job
            rt.assignments = self.store.assignments(job.job_id, job.incarnation)


def plan_assignments(rt: JobRuntime, world_size: int) -> list[Assignment]:
    """Ranks 0..world_size-1 over ALIVE nodes: nodes of the previous world first (rank 0 stays put
    when it can), then the others by node id; each node gives up to `nproc` ranks. ALIVE nodes left
    without a rank become spares."""
    previous = [n for n in rt.world_nodes() if n in rt.nodes and rt.nodes[n].state is NodeState.ALIVE]
    in_previous = set(previous)  # a list here made this O(nodes^2): seconds at 12,500 nodes
    others = sorted(n for n, rec in rt.nodes.items() if rec.state is NodeState.ALIVE and n not in in_previous)
    out: list[Assignment] = []
    for node_id in [*previous, *others]:
        for local in range(rt.nodes[node_id].nproc):
            if len(out) < world_size:
                out.append(Assignment(rank=len(out), node_id=node_id, local_rank=local))
    if len(out) < world_size:
        raise ValueError(f"world of {world_size} ranks needs more nodes than the {len(out)} ranks alive")
    return out


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
