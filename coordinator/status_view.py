"""Renders the Admin status (as the dict `admin_client.get_status` returns) as text tables."""

from __future__ import annotations

import time
from typing import Any

RANK_STATES = {
    "RANK_STATE_UNSPECIFIED": "?",
    "RANK_STATE_STARTING": "starting",
    "RANK_STATE_RUNNING": "running",
    "RANK_STATE_FROZEN": "frozen",
    "RANK_STATE_EXITED": "exited",
    "RANK_STATE_STOPPED": "stopped",
}


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A left-aligned plain-text table."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def _when(wall_ns: int) -> str:
    return time.strftime("%H:%M:%S", time.localtime(wall_ns / 1e9)) if wall_ns else "-"


def render(status: dict[str, Any]) -> str:
    """Every job: a summary line, then nodes, ranks, recent diagnoses and actions."""
    jobs = status.get("jobs", [])
    if not jobs:
        return f"coordinator {status.get('coordinator', '?')}: no jobs"
    return "\n\n".join(_render_job(j) for j in jobs)


def _render_job(job: dict[str, Any]) -> str:
    parts = [
        f"job {job['job_id']}: {job['state']}  incarnation {job['incarnation']}  world {job['world_size']}  "
        f"step {job['step']}  restarts {job['restarts']}",
        table(
            ["node", "host", "state", "ranks", "lease left"],
            [
                [n["node_id"], n["hostname"], n["state"], str(n["nproc"]), f"{n['lease_left_s']:.1f}s"]
                for n in job.get("nodes", [])
            ],
        ),
    ]
    ranks = job.get("ranks", [])
    if ranks:
        parts.append(
            table(
                ["rank", "node", "pid", "step", "step time", "state"],
                [
                    [
                        str(r["rank"]),
                        r["node_id"],
                        str(r["status"]["pid"]),
                        str(r["status"]["step"]),
                        f"{r['status']['step_time_s']:.3f}s",
                        RANK_STATES.get(r["status"]["state"], r["status"]["state"]),
                    ]
                    for r in ranks
                ],
            )
        )
    diagnoses = job.get("diagnoses", [])
    if diagnoses:
        rows = [
            [
                _when(d["wall_time_ns"]),
                d["kind"].removeprefix("VERDICT_KIND_").lower(),
                d["node_id"] or "-",
                str(d["rank"]),
                d["reason"],
            ]
            for d in diagnoses
        ]
        parts.append("recent diagnoses\n" + table(["time", "kind", "node", "rank", "reason"], rows))
    actions = job.get("actions", [])
    if actions:
        rows = [[_when(a["wall_time_ns"]), a["action"], str(a["incarnation"]), a["reason"]] for a in actions]
        parts.append("recent actions\n" + table(["time", "action", "incarnation", "reason"], rows))
    return "\n".join(parts)
