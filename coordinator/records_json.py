"""JSON forms of verdicts and actions, shared by the store backends (SQLite rows, etcd values) so both
store the same bytes for the same record. Plain JSON: nothing here can run code when loaded."""

from __future__ import annotations

from kedge.coordinator.model import ActionKind, ActionRecord, Verdict, VerdictKind


def verdict_to_json(v: Verdict) -> dict[str, object]:
    return {
        "kind": int(v.kind),
        "node_id": v.node_id,
        "rank": v.rank,
        "gpu_index": v.gpu_index,
        "reason": v.reason,
        "evidence": dict(v.evidence),
        "wall_time_ns": v.wall_time_ns,
        "incarnation": v.incarnation,
    }


def verdict_from_json(d: dict[str, object]) -> Verdict:
    evidence = d.get("evidence", {})
    assert isinstance(evidence, dict)
    return Verdict(
        kind=VerdictKind(int(str(d["kind"]))),
        node_id=str(d["node_id"]),
        rank=int(str(d["rank"])),
        gpu_index=int(str(d["gpu_index"])),
        reason=str(d["reason"]),
        evidence={str(k): str(v) for k, v in evidence.items()},
        wall_time_ns=int(str(d["wall_time_ns"])),
        incarnation=int(str(d["incarnation"])),
    )


def action_to_json(a: ActionRecord) -> dict[str, object]:
    return {
        "kind": ActionKind(a.kind).value,
        "reason": a.reason,
        "wall_time_ns": a.wall_time_ns,
        "incarnation": a.incarnation,
        "evidence": [verdict_to_json(v) for v in a.evidence],
        "nodes": list(a.nodes),
    }


def action_from_json(d: dict[str, object]) -> ActionRecord:
    evidence = d.get("evidence", [])
    nodes = d.get("nodes", [])
    assert isinstance(evidence, list) and isinstance(nodes, list)
    return ActionRecord(
        kind=ActionKind(str(d["kind"])),
        reason=str(d["reason"]),
        wall_time_ns=int(str(d["wall_time_ns"])),
        incarnation=int(str(d["incarnation"])),
        evidence=[verdict_from_json(v) for v in evidence],
        nodes=[str(n) for n in nodes],
    )
