"""Recovery policy as a pure function: `decide(now_wall_ns, state, config) -> (Action, reason)`.

Graded, cheapest first: none → alert (slow but moving: straggler, throttling, unlocalized slow
communication) → restart the same world (a rank died, froze or hung) → isolate a bad node and shrink
the world, or replace it with a registered spare (node lost, GPU fault, probe-localized node, or the
same node at fault again and again) → stop (budget spent, or no valid smaller world). A stopped job
ends with `EXIT_STOP_NO_REQUEUE` so the scheduler does not requeue it into the same failure.

Every decision says why in one line; the caller records it with its evidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from kedge.coordinator.model import ActionKind, ActionRecord, JobState, NodeState, Verdict, VerdictKind

EXIT_STOP_NO_REQUEUE = 76
"""Exit code of a job kedge gave up on: the scheduler must not requeue it (sysexits' EX_PROTOCOL)."""

NODE_FAULTS = frozenset({VerdictKind.NODE_LOST, VerdictKind.GPU_FAULT})
RANK_FAULTS = frozenset(
    {VerdictKind.RANK_DIED, VerdictKind.RANK_FROZEN, VerdictKind.HANG_NON_COMM, VerdictKind.HANG_COMM}
)
SLOW_KINDS = frozenset({VerdictKind.STRAGGLER, VerdictKind.THROTTLING, VerdictKind.COMM_SLOW})
RECOVERIES = frozenset({ActionKind.RESTART, ActionKind.SHRINK, ActionKind.REPLACE})


@dataclass(kw_only=True, slots=True)
class Config:
    """Policy knobs; defaults suit a job that checkpoints every few minutes."""

    restart_budget: int = 5
    """Recoveries (restart, shrink, replace) allowed per budget window before the job is stopped."""
    budget_window_s: float = 3600.0
    """Sliding window of the restart budget."""
    min_world_size: int = 1
    """A shrink never goes below this many ranks."""
    world_multiple: int = 1
    """World sizes must be a multiple of this (tensor x pipeline parallel size)."""
    isolate_after_repeats: int = 3
    """A node at fault in this many recoveries within the window is isolated, not restarted again."""
    isolate_slow_nodes: bool = False
    """Isolate a straggler's or probe-localized slow node (else only alert)."""
    prefer_spare: bool = True
    """Replace an isolated node with a registered spare when one fits, rather than shrink."""


@dataclass(kw_only=True, slots=True)
class NodeView:
    """What the policy needs of a node."""

    node_id: str
    state: NodeState
    nproc: int


@dataclass(kw_only=True, slots=True)
class State:
    """The job as the policy sees it: current world, membership, fresh verdicts, history."""

    job_state: JobState
    world_size: int
    nodes: list[NodeView]
    verdicts: list[Verdict]
    history: list[ActionRecord] = field(default_factory=list)


@dataclass(kw_only=True, slots=True)
class Action:
    """What to do. `isolate` leave the job; `spares` join it; `world_size` is the new world."""

    kind: ActionKind
    isolate: list[str] = field(default_factory=list)
    spares: list[str] = field(default_factory=list)
    world_size: int = 0
    evidence: list[Verdict] = field(default_factory=list)


def decide(now_wall_ns: int, state: State, config: Config) -> tuple[Action, str]:
    """The next action for one job and the one-line reason for it."""
    if state.job_state is not JobState.RUNNING:
        return Action(kind=ActionKind.NONE), f"job is {state.job_state.value}"
    faults = [v for v in state.verdicts if v.kind in NODE_FAULTS | RANK_FAULTS]
    slow = [v for v in state.verdicts if v.kind in SLOW_KINDS]
    bad_nodes = _nodes_to_isolate(now_wall_ns, state, config, faults, slow)
    if not faults and not bad_nodes:
        if slow:
            return Action(kind=ActionKind.ALERT, evidence=slow), slow[0].reason
        return Action(kind=ActionKind.NONE), "no verdicts"
    evidence = faults or slow
    used = _recoveries_in_window(now_wall_ns, state.history, config)
    if used >= config.restart_budget:
        reason = (
            f"restart budget spent: {used} recoveries in {config.budget_window_s:.0f}s; {evidence[0].reason}"
        )
        return Action(kind=ActionKind.STOP, evidence=evidence), reason
    if not bad_nodes:
        action = Action(kind=ActionKind.RESTART, world_size=state.world_size, evidence=evidence)
        return action, f"restart same world: {evidence[0].reason}"
    return _isolate(state, config, bad_nodes, evidence)


def _nodes_to_isolate(
    now_wall_ns: int, state: State, config: Config, faults: list[Verdict], slow: list[Verdict]
) -> list[str]:
    bad = {v.node_id for v in faults if v.kind in NODE_FAULTS and v.node_id}
    if config.isolate_slow_nodes:
        bad |= {v.node_id for v in slow if v.node_id and v.kind is not VerdictKind.THROTTLING}
    for v in faults:
        if v.kind in RANK_FAULTS and v.node_id:
            past = _times_at_fault(now_wall_ns, state.history, config, v.node_id)
            if past + 1 >= config.isolate_after_repeats:
                bad.add(v.node_id)
    return sorted(bad)


def _isolate(
    state: State, config: Config, bad_nodes: list[str], evidence: list[Verdict]
) -> tuple[Action, str]:
    why = evidence[0].reason
    keep = [n for n in state.nodes if n.state is NodeState.ALIVE and n.node_id not in bad_nodes]
    lost_procs = sum(n.nproc for n in state.nodes if n.node_id in bad_nodes)
    spares = [n for n in state.nodes if n.state is NodeState.SPARE]
    if config.prefer_spare and spares:
        chosen, procs = [], 0
        for spare in spares:
            if procs >= lost_procs:
                break
            chosen.append(spare.node_id)
            procs += spare.nproc
        if procs >= lost_procs:
            action = Action(kind=ActionKind.REPLACE, isolate=bad_nodes, spares=chosen, evidence=evidence)
            action.world_size = state.world_size
            return action, f"replace {','.join(bad_nodes)} with spare {','.join(chosen)}: {why}"
    world = _valid_world(sum(n.nproc for n in keep), config)
    if world < max(config.min_world_size, 1):
        reason = (
            f"cannot shrink without {','.join(bad_nodes)}: {world} ranks < minimum {config.min_world_size}"
        )
        return Action(kind=ActionKind.STOP, isolate=bad_nodes, evidence=evidence), f"{reason}; {why}"
    action = Action(kind=ActionKind.SHRINK, isolate=bad_nodes, world_size=world, evidence=evidence)
    return action, f"isolate {','.join(bad_nodes)} and shrink {state.world_size} -> {world}: {why}"


def _valid_world(procs: int, config: Config) -> int:
    multiple = max(config.world_multiple, 1)
    return procs - procs % multiple


def _recoveries_in_window(now_wall_ns: int, history: Sequence[ActionRecord], config: Config) -> int:
    since = now_wall_ns - int(config.budget_window_s * 1e9)
    return sum(1 for a in history if a.kind in RECOVERIES and a.wall_time_ns >= since)


def _times_at_fault(now_wall_ns: int, history: Sequence[ActionRecord], config: Config, node_id: str) -> int:
    since = now_wall_ns - int(config.budget_window_s * 1e9)
    return sum(
        1
        for a in history
        if a.kind in RECOVERIES and a.wall_time_ns >= since and any(v.node_id == node_id for v in a.evidence)
    )
