"""In-memory state of one job inside the coordinator core, and the clock and command-sink seams.

The store holds what must survive a restart; this holds what is rebuilt from reports (rank
snapshots, diagnosis windows, lease deadlines on the coordinator's monotonic clock).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from kedge.coordinator.diagnosis import Diagnoser
from kedge.coordinator.model import (
    ActionRecord,
    Assignment,
    CommandData,
    JobRecord,
    NodeRecord,
    RankSnapshot,
    Verdict,
)
from kedge.coordinator.policy import Action

TIMELINE_EVENTS = 500
"""Timeline events kept per job (bounded; the store keeps decisions durably)."""
HISTORY_ACTIONS = 200
"""Recent actions kept in memory for the policy's budget and repeat-culprit checks."""


class Clock(Protocol):
    """Time source; the simulator passes a virtual one."""

    def mono_s(self) -> float:
        """Monotonic seconds (leases, diagnosis)."""
        ...

    def wall_ns(self) -> int:
        """Wall-clock nanoseconds (records humans read)."""
        ...


class SystemClock:
    """The real clocks."""

    def mono_s(self) -> float:
        return time.monotonic()

    def wall_ns(self) -> int:
        return time.time_ns()


class CommandSink(Protocol):
    """Delivers commands to one node's agent (the server's Commands stream; a simulator's queue)."""

    def send(self, node_id: str, command: CommandData) -> None:
        """Queues `command` for `node_id`; never blocks."""
        ...


@dataclass(frozen=True, slots=True)
class TimelineEvent:
    """One step of a job's story: fault seen, diagnosis, action, resume."""

    wall_ns: int
    kind: str  # verdict | action | stop | start | running | resumed | node | finished
    detail: str


@dataclass(slots=True)
class Recovery:
    """An action being executed: stop everywhere, then start the new world."""

    action: Action
    reason: str
    phase: str  # "stopping" | "starting"
    deadline_s: float
    waiting: dict[str, str] = field(default_factory=dict)  # command_id -> node_id
    failures: list[str] = field(default_factory=list)
    initial: bool = False


@dataclass(slots=True)
class ProbeRun:
    """A pairwise probe in flight."""

    command_ids: dict[str, str]  # command_id -> node_id
    peers: list[str]
    cells: dict[tuple[int, int], float]
    deadline_s: float
    index: dict[str, int] = field(default_factory=dict)  # node id -> position in peers


@dataclass(slots=True)
class JobRuntime:
    """Everything the core tracks for one job."""

    job: JobRecord
    diagnoser: Diagnoser
    nodes: dict[str, NodeRecord] = field(default_factory=dict)
    lease_deadline_s: dict[str, float] = field(default_factory=dict)
    assignments: list[Assignment] = field(default_factory=list)
    ranks: dict[int, RankSnapshot] = field(default_factory=dict)
    verdicts: list[Verdict] = field(default_factory=list)
    history: deque[ActionRecord] = field(default_factory=lambda: deque(maxlen=HISTORY_ACTIONS))
    timeline: deque[TimelineEvent] = field(default_factory=lambda: deque(maxlen=TIMELINE_EVENTS))
    recovery: Recovery | None = None
    probe: ProbeRun | None = None
    last_registration_s: float = 0.0
    last_persist_s: float = 0.0
    last_tick_s: float = 0.0
    exited_ok: set[int] = field(default_factory=set)
    resume_pending: bool = False
    exit_code: int | None = None
    seen_verdicts: dict[tuple[str, int, int, int], None] = field(default_factory=dict)  # insertion-ordered

    def world_nodes(self) -> list[str]:
        """Nodes of the current world, in rank order."""
        seen: dict[str, None] = {}
        for a in self.assignments:
            seen.setdefault(a.node_id, None)
        return list(seen)
