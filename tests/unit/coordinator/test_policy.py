"""decide(now, state, config) table tests: no sockets, no clocks."""

from __future__ import annotations

import pytest
from kedge.coordinator.model import ActionKind, ActionRecord, JobState, NodeState, Verdict, VerdictKind
from kedge.coordinator.policy import Config, NodeView, State, decide

pytestmark = pytest.mark.timeout(10)

S = 1_000_000_000
NOW = 10_000 * S


def nodes(*spec: str) -> list[NodeView]:
    """'n1' alive, 'n1:lost', 'n3:spare'; two ranks each."""
    out = []
    for item in spec:
        name, _, state = item.partition(":")
        out.append(NodeView(node_id=name, state=NodeState(state or "alive"), nproc=2))
    return out


def v(kind: VerdictKind, node: str = "n1", rank: int = 0) -> Verdict:
    return Verdict(kind=kind, node_id=node, rank=rank, reason=f"{kind.name} on {node}")


def past(kind: ActionKind, age_s: float, node: str = "n1") -> ActionRecord:
    return ActionRecord(
        kind=kind,
        reason="x",
        wall_time_ns=NOW - int(age_s * S),
        incarnation=1,
        evidence=[v(VerdictKind.RANK_DIED, node)],
    )


CASES = [
    # (name, job_state, nodes, verdicts, history, config, expected kind, isolate, world, reason part)
    ("quiet", JobState.RUNNING, nodes("n1", "n2"), [], [], Config(), ActionKind.NONE, [], 0, "no verdicts"),
    (
        "not running",
        JobState.RECOVERING,
        nodes("n1", "n2"),
        [v(VerdictKind.RANK_DIED)],
        [],
        Config(),
        ActionKind.NONE,
        [],
        0,
        "recovering",
    ),
    (
        "straggler alerts",
        JobState.RUNNING,
        nodes("n1", "n2"),
        [v(VerdictKind.STRAGGLER)],
        [],
        Config(),
        ActionKind.ALERT,
        [],
        0,
        "STRAGGLER",
    ),
    (
        "straggler isolated when asked",
        JobState.RUNNING,
        nodes("n1", "n2"),
        [v(VerdictKind.STRAGGLER)],
        [],
        Config(isolate_slow_nodes=True),
        ActionKind.SHRINK,
        ["n1"],
        2,
        "shrink 4 -> 2",
    ),
    (
        "rank died restarts",
        JobState.RUNNING,
        nodes("n1", "n2"),
        [v(VerdictKind.RANK_DIED)],
        [],
        Config(),
        ActionKind.RESTART,
        [],
        4,
        "restart same world",
    ),
    (
        "hang restarts",
        JobState.RUNNING,
        nodes("n1", "n2"),
        [v(VerdictKind.HANG_NON_COMM, "n2", 3)],
        [],
        Config(),
        ActionKind.RESTART,
        [],
        4,
        "HANG_NON_COMM",
    ),
    (
        "node lost shrinks",
        JobState.RUNNING,
        nodes("n1", "n2:lost"),
        [v(VerdictKind.NODE_LOST, "n2")],
        [],
        Config(),
        ActionKind.SHRINK,
        ["n2"],
        2,
        "isolate n2 and shrink 4 -> 2",
    ),
    (
        "gpu fault replaced by spare",
        JobState.RUNNING,
        nodes("n1", "n2", "n3:spare"),
        [v(VerdictKind.GPU_FAULT, "n2")],
        [],
        Config(),
        ActionKind.REPLACE,
        ["n2"],
        4,
        "spare n3",
    ),
    (
        "spare not preferred",
        JobState.RUNNING,
        nodes("n1", "n2", "n3:spare"),
        [v(VerdictKind.GPU_FAULT, "n2")],
        [],
        Config(prefer_spare=False),
        ActionKind.SHRINK,
        ["n2"],
        2,
        "shrink",
    ),
    (
        "min world stops",
        JobState.RUNNING,
        nodes("n1", "n2"),
        [v(VerdictKind.NODE_LOST, "n2")],
        [],
        Config(min_world_size=4),
        ActionKind.STOP,
        ["n2"],
        0,
        "minimum 4",
    ),
    (
        "divisibility",
        JobState.RUNNING,
        nodes("n1", "n2", "n3"),
        [v(VerdictKind.NODE_LOST, "n3")],
        [],
        Config(world_multiple=3),
        ActionKind.SHRINK,
        ["n3"],
        3,
        "shrink 6 -> 3",
    ),
    (
        "budget spent stops",
        JobState.RUNNING,
        nodes("n1", "n2"),
        [v(VerdictKind.RANK_DIED)],
        [past(ActionKind.RESTART, 10, "n2"), past(ActionKind.RESTART, 20, "n2")],
        Config(restart_budget=2),
        ActionKind.STOP,
        [],
        0,
        "budget spent",
    ),
    (
        "budget window slides",
        JobState.RUNNING,
        nodes("n1", "n2"),
        [v(VerdictKind.RANK_DIED)],
        [past(ActionKind.RESTART, 7200, "n2"), past(ActionKind.RESTART, 7300, "n2")],
        Config(restart_budget=2),
        ActionKind.RESTART,
        [],
        4,
        "restart",
    ),
    (
        "alerts do not use budget",
        JobState.RUNNING,
        nodes("n1", "n2"),
        [v(VerdictKind.RANK_DIED)],
        [past(ActionKind.ALERT, 1), past(ActionKind.ALERT, 2)],
        Config(restart_budget=2),
        ActionKind.RESTART,
        [],
        4,
        "restart",
    ),
    (
        "repeat culprit isolated",
        JobState.RUNNING,
        nodes("n1", "n2"),
        [v(VerdictKind.RANK_DIED, "n1")],
        [past(ActionKind.RESTART, 10, "n1"), past(ActionKind.RESTART, 20, "n1")],
        Config(),
        ActionKind.SHRINK,
        ["n1"],
        2,
        "shrink 4 -> 2",
    ),
    (
        "other node's history does not count",
        JobState.RUNNING,
        nodes("n1", "n2"),
        [v(VerdictKind.RANK_DIED, "n1")],
        [past(ActionKind.RESTART, 10, "n2"), past(ActionKind.RESTART, 20, "n2")],
        Config(),
        ActionKind.RESTART,
        [],
        4,
        "restart",
    ),
]


@pytest.mark.parametrize(
    ("job_state", "node_views", "verdicts", "history", "config", "kind", "isolate", "world", "reason_part"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_decide(
    job_state: JobState,
    node_views: list[NodeView],
    verdicts: list[Verdict],
    history: list[ActionRecord],
    config: Config,
    kind: ActionKind,
    isolate: list[str],
    world: int,
    reason_part: str,
) -> None:
    state = State(
        job_state=job_state,
        world_size=4 if len(node_views) < 3 else 6,
        nodes=node_views,
        verdicts=verdicts,
        history=history,
    )
    if len(node_views) == 3 and node_views[2].state is NodeState.SPARE:
        state.world_size = 4
    action, reason = decide(NOW, state, config)
    assert action.kind is kind, reason
    assert action.isolate == isolate
    assert action.world_size == world
    assert reason_part in reason
    assert "\n" not in reason
    if kind is not ActionKind.NONE:
        assert action.evidence
