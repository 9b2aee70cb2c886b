"""The coordinator's own record types: what the store holds and what diagnosis and policy exchange.

Plain dataclasses, no protobuf: only `kedge.coordinator.wire` converts between these and the
generated messages. Enum values mirror the proto enums' numbers where a proto enum exists, so the
conversion is a lookup, never a table that can drift.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class JobState(str, enum.Enum):
    """Life of a job as the coordinator drives it."""

    PENDING = "pending"  # waiting for enough nodes to register
    RUNNING = "running"
    RECOVERING = "recovering"  # an action is being executed
    STOPPED = "stopped"  # given up: the scheduler must not requeue
    FINISHED = "finished"  # every rank exited 0


class NodeState(str, enum.Enum):
    """Membership state of one node in one job."""

    ALIVE = "alive"
    LOST = "lost"  # lease expired
    ISOLATED = "isolated"  # removed by a decision (bad GPU, culprit of repeated faults)
    SPARE = "spare"  # registered, runs nothing until it replaces a node


class ActionKind(str, enum.Enum):
    """What the policy may decide (DESIGN.md, Recovery)."""

    NONE = "none"
    ALERT = "alert"
    RESTART = "restart"
    SHRINK = "shrink"
    REPLACE = "replace"
    STOP = "stop"


class VerdictKind(enum.IntEnum):
    """Kinds of findings; numbers equal kedge.common.v1.VerdictKind."""

    UNSPECIFIED = 0
    RANK_DIED = 1
    RANK_FROZEN = 2
    GPU_FAULT = 3
    THROTTLING = 4
    RANK_EXITED_OK = 5
    NODE_LOST = 6
    HANG_NON_COMM = 7
    HANG_COMM = 8
    STRAGGLER = 9
    COMM_SLOW = 10


class RankState(enum.IntEnum):
    """State of one rank process; numbers equal kedge.common.v1.RankState."""

    UNSPECIFIED = 0
    STARTING = 1
    RUNNING = 2
    FROZEN = 3
    EXITED = 4
    STOPPED = 5


@dataclass(kw_only=True, slots=True)
class Verdict:
    """A finding with its evidence and a one-line reason, attributed to a rank and/or node."""

    kind: VerdictKind
    node_id: str = ""
    rank: int = -1
    gpu_index: int = -1
    reason: str = ""
    evidence: dict[str, str] = field(default_factory=dict)
    wall_time_ns: int = 0
    incarnation: int = 0


@dataclass(kw_only=True, slots=True)
class JobRecord:
    """One job as stored. `incarnation` is the fencing token: it grows by one per new world."""

    job_id: str
    state: JobState = JobState.PENDING
    incarnation: int = 0
    world_size: int = 0
    step: int = -1
    restarts: int = 0
    command: list[str] = field(default_factory=list)
    created_wall_ns: int = 0


@dataclass(kw_only=True, slots=True)
class NodeRecord:
    """One node of one job as stored; `lease_expires_wall_ns` is renewed in batches (see Store)."""

    job_id: str
    node_id: str
    hostname: str = ""
    address: str = ""
    nproc: int = 0
    gpus: int = 0
    state: NodeState = NodeState.ALIVE
    lease_expires_wall_ns: int = 0
    registered_wall_ns: int = 0


@dataclass(frozen=True, slots=True)
class Assignment:
    """Rank `rank` of incarnation `incarnation` runs on `node_id` as local rank `local_rank`."""

    rank: int
    node_id: str
    local_rank: int


@dataclass(kw_only=True, slots=True)
class ActionRecord:
    """A decision the coordinator took (or is taking), with its reason and evidence."""

    kind: ActionKind
    reason: str
    wall_time_ns: int
    incarnation: int
    evidence: list[Verdict] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)  # nodes isolated or brought in


@dataclass(kw_only=True, slots=True)
class GroupProgress:
    """Where one rank stands in one process group (mirrors the progress page)."""

    group: str
    last_enqueued_seq: int = 0
    last_started_seq: int = 0
    last_completed_seq: int = 0


@dataclass(kw_only=True, slots=True)
class RankSnapshot:
    """The last known state of one rank, as its agent reported it."""

    rank: int
    node_id: str = ""
    local_rank: int = -1
    pid: int = 0
    state: RankState = RankState.UNSPECIFIED
    step: int = -1
    step_time_s: float = 0.0
    proc_status: str = ""
    exit_code: int = 0
    signal: int = 0
    incarnation: int = 0
    groups: dict[str, GroupProgress] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CollectiveSample:
    """One completed collective as seen by one rank; durations only (clocks differ across nodes)."""

    rank: int
    group: str
    seq: int
    op: str
    duration_s: float  # start (or enqueue) to completion on this rank; negative when unknown
    step: int = -1
    enqueue_ns: int = 0  # the node's monotonic clock: comparable only between ranks sharing a clock


@dataclass(frozen=True, slots=True)
class StepSample:
    """One finished training step of one rank."""

    rank: int
    step: int
    duration_s: float


# --- messages between the core and its transport (the server converts these to and from protobuf) ---


@dataclass(kw_only=True, slots=True)
class NodeRegistration:
    """An agent's registration of its node for a job."""

    job_id: str
    node_id: str
    hostname: str = ""
    address: str = ""
    nproc: int = 0
    gpus: int = 0
    spare: bool = False
    known_incarnation: int = 0
    command: list[str] = field(default_factory=list)


@dataclass(kw_only=True, slots=True)
class RegisterAnswer:
    """The coordinator's answer to a registration."""

    accepted: bool
    reason: str = ""
    lease_ttl_s: float = 0.0
    heartbeat_interval_s: float = 0.0
    incarnation: int = 0


@dataclass(kw_only=True, slots=True)
class ProbeData:
    """(Part of) a probe's source x destination delay matrix; negative cells were not measured."""

    command_id: str
    peers: list[str]
    delay_s: list[float]


@dataclass(kw_only=True, slots=True)
class NodeReportData:
    """One report from an agent: verdicts at once, summaries periodically."""

    job_id: str
    node_id: str
    incarnation: int = 0
    wall_time_ns: int = 0
    verdicts: list[Verdict] = field(default_factory=list)
    ranks: list[RankSnapshot] = field(default_factory=list)
    collectives: list[CollectiveSample] = field(default_factory=list)
    steps: list[StepSample] = field(default_factory=list)
    probe: ProbeData | None = None


@dataclass(kw_only=True, slots=True)
class StartWorkersBody:
    """Start this node's workers of a new incarnation."""

    world_size: int
    master_addr: str
    master_port: int
    workers: list[tuple[int, int]]  # (rank, local_rank)
    restore_step: int = -1  # -1: latest committed; -2: none
    env: dict[str, str] = field(default_factory=dict)


@dataclass(kw_only=True, slots=True)
class StopWorkersBody:
    """Stop this node's workers: abort, SIGTERM, SIGKILL after grace. `final`: the job is over."""

    grace_s: float
    reason: str = ""
    final: bool = False
    exit_code: int = 0


@dataclass(kw_only=True, slots=True)
class RunProbeBody:
    """Run the pairwise ring-shift probe with these peers (node ids in ring order)."""

    peers: list[str]
    size_bytes: int = 1 << 20
    repeats: int = 3
    master_addr: str = ""
    master_port: int = 0


@dataclass(kw_only=True, slots=True)
class CommandData:
    """A command for one node; `incarnation` is the fencing token the agent checks."""

    command_id: str
    job_id: str
    incarnation: int
    body: StartWorkersBody | StopWorkersBody | RunProbeBody


@dataclass(kw_only=True, slots=True)
class CommandOutcome:
    """An agent's report that a command finished."""

    command_id: str
    job_id: str
    node_id: str
    incarnation: int
    ok: bool
    reason: str = ""
