from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RankState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RANK_STATE_UNSPECIFIED: _ClassVar[RankState]
    RANK_STATE_STARTING: _ClassVar[RankState]
    RANK_STATE_RUNNING: _ClassVar[RankState]
    RANK_STATE_FROZEN: _ClassVar[RankState]
    RANK_STATE_EXITED: _ClassVar[RankState]
    RANK_STATE_STOPPED: _ClassVar[RankState]

class VerdictKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERDICT_KIND_UNSPECIFIED: _ClassVar[VerdictKind]
    VERDICT_KIND_RANK_DIED: _ClassVar[VerdictKind]
    VERDICT_KIND_RANK_FROZEN: _ClassVar[VerdictKind]
    VERDICT_KIND_GPU_FAULT: _ClassVar[VerdictKind]
    VERDICT_KIND_THROTTLING: _ClassVar[VerdictKind]
    VERDICT_KIND_RANK_EXITED_OK: _ClassVar[VerdictKind]
    VERDICT_KIND_NODE_LOST: _ClassVar[VerdictKind]
    VERDICT_KIND_HANG_NON_COMM: _ClassVar[VerdictKind]
    VERDICT_KIND_HANG_COMM: _ClassVar[VerdictKind]
    VERDICT_KIND_STRAGGLER: _ClassVar[VerdictKind]
    VERDICT_KIND_COMM_SLOW: _ClassVar[VerdictKind]
RANK_STATE_UNSPECIFIED: RankState
RANK_STATE_STARTING: RankState
RANK_STATE_RUNNING: RankState
RANK_STATE_FROZEN: RankState
RANK_STATE_EXITED: RankState
RANK_STATE_STOPPED: RankState
VERDICT_KIND_UNSPECIFIED: VerdictKind
VERDICT_KIND_RANK_DIED: VerdictKind
VERDICT_KIND_RANK_FROZEN: VerdictKind
VERDICT_KIND_GPU_FAULT: VerdictKind
VERDICT_KIND_THROTTLING: VerdictKind
VERDICT_KIND_RANK_EXITED_OK: VerdictKind
VERDICT_KIND_NODE_LOST: VerdictKind
VERDICT_KIND_HANG_NON_COMM: VerdictKind
VERDICT_KIND_HANG_COMM: VerdictKind
VERDICT_KIND_STRAGGLER: VerdictKind
VERDICT_KIND_COMM_SLOW: VerdictKind

class GroupProgress(_message.Message):
    __slots__ = ("group", "last_enqueued_seq", "last_started_seq", "last_completed_seq", "enqueued_mono_ns", "started_mono_ns", "completed_mono_ns")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    LAST_ENQUEUED_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_STARTED_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_COMPLETED_SEQ_FIELD_NUMBER: _ClassVar[int]
    ENQUEUED_MONO_NS_FIELD_NUMBER: _ClassVar[int]
    STARTED_MONO_NS_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_MONO_NS_FIELD_NUMBER: _ClassVar[int]
    group: str
    last_enqueued_seq: int
    last_started_seq: int
    last_completed_seq: int
    enqueued_mono_ns: int
    started_mono_ns: int
    completed_mono_ns: int
    def __init__(self, group: _Optional[str] = ..., last_enqueued_seq: _Optional[int] = ..., last_started_seq: _Optional[int] = ..., last_completed_seq: _Optional[int] = ..., enqueued_mono_ns: _Optional[int] = ..., started_mono_ns: _Optional[int] = ..., completed_mono_ns: _Optional[int] = ...) -> None: ...

class CollectiveRecord(_message.Message):
    __slots__ = ("group", "seq", "op", "size_bytes", "enqueue_mono_ns", "start_mono_ns", "complete_mono_ns", "state", "step", "rank")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ENQUEUE_MONO_NS_FIELD_NUMBER: _ClassVar[int]
    START_MONO_NS_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_MONO_NS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    group: str
    seq: int
    op: str
    size_bytes: int
    enqueue_mono_ns: int
    start_mono_ns: int
    complete_mono_ns: int
    state: str
    step: int
    rank: int
    def __init__(self, group: _Optional[str] = ..., seq: _Optional[int] = ..., op: _Optional[str] = ..., size_bytes: _Optional[int] = ..., enqueue_mono_ns: _Optional[int] = ..., start_mono_ns: _Optional[int] = ..., complete_mono_ns: _Optional[int] = ..., state: _Optional[str] = ..., step: _Optional[int] = ..., rank: _Optional[int] = ...) -> None: ...

class RankStatus(_message.Message):
    __slots__ = ("rank", "local_rank", "pid", "state", "step", "step_time_s", "heartbeat_mono_ns", "rss_bytes", "proc_status", "exit_code", "signal", "groups", "incarnation")
    RANK_FIELD_NUMBER: _ClassVar[int]
    LOCAL_RANK_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    STEP_TIME_S_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_MONO_NS_FIELD_NUMBER: _ClassVar[int]
    RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    PROC_STATUS_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    rank: int
    local_rank: int
    pid: int
    state: RankState
    step: int
    step_time_s: float
    heartbeat_mono_ns: int
    rss_bytes: int
    proc_status: str
    exit_code: int
    signal: int
    groups: _containers.RepeatedCompositeFieldContainer[GroupProgress]
    incarnation: int
    def __init__(self, rank: _Optional[int] = ..., local_rank: _Optional[int] = ..., pid: _Optional[int] = ..., state: _Optional[_Union[RankState, str]] = ..., step: _Optional[int] = ..., step_time_s: _Optional[float] = ..., heartbeat_mono_ns: _Optional[int] = ..., rss_bytes: _Optional[int] = ..., proc_status: _Optional[str] = ..., exit_code: _Optional[int] = ..., signal: _Optional[int] = ..., groups: _Optional[_Iterable[_Union[GroupProgress, _Mapping]]] = ..., incarnation: _Optional[int] = ...) -> None: ...

class Verdict(_message.Message):
    __slots__ = ("kind", "node_id", "rank", "gpu_index", "reason", "evidence", "wall_time_ns", "incarnation")
    class EvidenceEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KIND_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    GPU_INDEX_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    WALL_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    kind: VerdictKind
    node_id: str
    rank: int
    gpu_index: int
    reason: str
    evidence: _containers.ScalarMap[str, str]
    wall_time_ns: int
    incarnation: int
    def __init__(self, kind: _Optional[_Union[VerdictKind, str]] = ..., node_id: _Optional[str] = ..., rank: _Optional[int] = ..., gpu_index: _Optional[int] = ..., reason: _Optional[str] = ..., evidence: _Optional[_Mapping[str, str]] = ..., wall_time_ns: _Optional[int] = ..., incarnation: _Optional[int] = ...) -> None: ...

class GpuHealth(_message.Message):
    __slots__ = ("index", "uuid", "temperature_c", "power_w", "ecc_volatile_uncorrected", "ecc_aggregate_uncorrected", "retired_pages_pending", "row_remap_failures", "throttle_reasons", "pcie_gen", "pcie_gen_max", "pcie_width", "pcie_width_max", "nvlink_down", "nvlink_replay_errors", "nvlink_recovery_errors", "recovery_action", "recent_xids", "sm_clock_mhz")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_C_FIELD_NUMBER: _ClassVar[int]
    POWER_W_FIELD_NUMBER: _ClassVar[int]
    ECC_VOLATILE_UNCORRECTED_FIELD_NUMBER: _ClassVar[int]
    ECC_AGGREGATE_UNCORRECTED_FIELD_NUMBER: _ClassVar[int]
    RETIRED_PAGES_PENDING_FIELD_NUMBER: _ClassVar[int]
    ROW_REMAP_FAILURES_FIELD_NUMBER: _ClassVar[int]
    THROTTLE_REASONS_FIELD_NUMBER: _ClassVar[int]
    PCIE_GEN_FIELD_NUMBER: _ClassVar[int]
    PCIE_GEN_MAX_FIELD_NUMBER: _ClassVar[int]
    PCIE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    PCIE_WIDTH_MAX_FIELD_NUMBER: _ClassVar[int]
    NVLINK_DOWN_FIELD_NUMBER: _ClassVar[int]
    NVLINK_REPLAY_ERRORS_FIELD_NUMBER: _ClassVar[int]
    NVLINK_RECOVERY_ERRORS_FIELD_NUMBER: _ClassVar[int]
    RECOVERY_ACTION_FIELD_NUMBER: _ClassVar[int]
    RECENT_XIDS_FIELD_NUMBER: _ClassVar[int]
    SM_CLOCK_MHZ_FIELD_NUMBER: _ClassVar[int]
    index: int
    uuid: str
    temperature_c: float
    power_w: float
    ecc_volatile_uncorrected: int
    ecc_aggregate_uncorrected: int
    retired_pages_pending: int
    row_remap_failures: int
    throttle_reasons: int
    pcie_gen: int
    pcie_gen_max: int
    pcie_width: int
    pcie_width_max: int
    nvlink_down: int
    nvlink_replay_errors: int
    nvlink_recovery_errors: int
    recovery_action: int
    recent_xids: _containers.RepeatedScalarFieldContainer[int]
    sm_clock_mhz: int
    def __init__(self, index: _Optional[int] = ..., uuid: _Optional[str] = ..., temperature_c: _Optional[float] = ..., power_w: _Optional[float] = ..., ecc_volatile_uncorrected: _Optional[int] = ..., ecc_aggregate_uncorrected: _Optional[int] = ..., retired_pages_pending: _Optional[int] = ..., row_remap_failures: _Optional[int] = ..., throttle_reasons: _Optional[int] = ..., pcie_gen: _Optional[int] = ..., pcie_gen_max: _Optional[int] = ..., pcie_width: _Optional[int] = ..., pcie_width_max: _Optional[int] = ..., nvlink_down: _Optional[int] = ..., nvlink_replay_errors: _Optional[int] = ..., nvlink_recovery_errors: _Optional[int] = ..., recovery_action: _Optional[int] = ..., recent_xids: _Optional[_Iterable[int]] = ..., sm_clock_mhz: _Optional[int] = ...) -> None: ...

class WorkerSpec(_message.Message):
    __slots__ = ("rank", "local_rank")
    RANK_FIELD_NUMBER: _ClassVar[int]
    LOCAL_RANK_FIELD_NUMBER: _ClassVar[int]
    rank: int
    local_rank: int
    def __init__(self, rank: _Optional[int] = ..., local_rank: _Optional[int] = ...) -> None: ...

class StepTiming(_message.Message):
    __slots__ = ("rank", "step", "duration_s", "end_mono_ns")
    RANK_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    END_MONO_NS_FIELD_NUMBER: _ClassVar[int]
    rank: int
    step: int
    duration_s: float
    end_mono_ns: int
    def __init__(self, rank: _Optional[int] = ..., step: _Optional[int] = ..., duration_s: _Optional[float] = ..., end_mono_ns: _Optional[int] = ...) -> None: ...
