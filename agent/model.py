"""The agent's own types (nothing here touches protobuf; kedge.agent.wire converts)."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field


class VerdictKind(enum.IntEnum):
    """Mirrors kedge.common.v1.VerdictKind (same numbers)."""

    RANK_DIED = 1
    RANK_FROZEN = 2
    GPU_FAULT = 3
    THROTTLING = 4
    RANK_EXITED_OK = 5


class RankState(enum.IntEnum):
    """Mirrors kedge.common.v1.RankState."""

    STARTING = 1
    RUNNING = 2
    FROZEN = 3
    EXITED = 4
    STOPPED = 5


@dataclass(slots=True)
class Verdict:
    """A local finding with its evidence and a one-line reason."""

    kind: VerdictKind
    node_id: str
    rank: int
    reason: str
    gpu_index: int = -1
    evidence: dict[str, str] = field(default_factory=dict)
    incarnation: int = 0
    wall_time_ns: int = field(default_factory=time.time_ns)


@dataclass(slots=True)
class GroupProgress:
    """One process group's last collective sequence numbers (from the progress page)."""

    group: str
    enqueued_seq: int
    started_seq: int
    completed_seq: int
    enqueued_mono_ns: int
    started_mono_ns: int
    completed_mono_ns: int


@dataclass(slots=True)
class RankStatus:
    """What the agent knows of one rank right now."""

    rank: int
    local_rank: int
    pid: int
    state: RankState
    incarnation: int
    step: int = -1
    step_time_s: float = 0.0
    heartbeat_mono_ns: int = 0
    rss_bytes: int = 0
    proc_status: str = ""
    exit_code: int = 0
    signal: int = 0
    groups: list[GroupProgress] = field(default_factory=list)


@dataclass(slots=True)
class StepTiming:
    rank: int
    step: int
    duration_s: float
    end_mono_ns: int


@dataclass(slots=True)
class CollectiveRecord:
    group: str
    seq: int
    op: str
    size_bytes: int
    enqueue_mono_ns: int
    start_mono_ns: int
    complete_mono_ns: int
    state: str
    step: int
    rank: int = -1


@dataclass(slots=True)
class GpuHealth:
    """One GPU's health snapshot (fields as in kedge.common.v1.GpuHealth)."""

    index: int
    uuid: str = ""
    temperature_c: float = 0.0
    power_w: float = 0.0
    ecc_volatile_uncorrected: int = 0
    ecc_aggregate_uncorrected: int = 0
    retired_pages_pending: int = 0
    row_remap_failures: int = 0
    throttle_reasons: int = 0
    pcie_gen: int = 0
    pcie_gen_max: int = 0
    pcie_width: int = 0
    pcie_width_max: int = 0
    nvlink_down: int = 0
    nvlink_replay_errors: int = 0
    nvlink_recovery_errors: int = 0
    recovery_action: int = 0
    recent_xids: list[int] = field(default_factory=list)
    sm_clock_mhz: int = 0


@dataclass(slots=True)
class WorkerSpec:
    rank: int
    local_rank: int


@dataclass(slots=True)
class StartWorkers:
    world_size: int
    master_addr: str
    master_port: int
    workers: list[WorkerSpec]
    restore_step: int
    env: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class StopWorkers:
    grace_s: float
    reason: str


@dataclass(slots=True)
class RunProbe:
    peers: list[str]
    size_bytes: int
    repeats: int
    master_addr: str
    master_port: int


@dataclass(slots=True)
class Command:
    """A coordinator command; `incarnation` is the fencing token."""

    command_id: str
    job_id: str
    incarnation: int
    body: StartWorkers | StopWorkers | RunProbe


@dataclass(slots=True)
class ProbeResult:
    command_id: str
    peers: list[str]
    delay_s: list[float]


@dataclass(slots=True)
class NodeReport:
    """One report to the coordinator: verdicts at once, or the per-second summary."""

    job_id: str
    node_id: str
    incarnation: int
    verdicts: list[Verdict] = field(default_factory=list)
    ranks: list[RankStatus] = field(default_factory=list)
    gpus: list[GpuHealth] = field(default_factory=list)
    collectives: list[CollectiveRecord] = field(default_factory=list)
    steps: list[StepTiming] = field(default_factory=list)
    probe: ProbeResult | None = None
    wall_time_ns: int = field(default_factory=time.time_ns)
