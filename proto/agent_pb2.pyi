from kedge.proto import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ControlKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONTROL_KIND_UNSPECIFIED: _ClassVar[ControlKind]
    CONTROL_KIND_DUMP_TRACE: _ClassVar[ControlKind]
    CONTROL_KIND_ABORT: _ClassVar[ControlKind]
    CONTROL_KIND_CHECKPOINT: _ClassVar[ControlKind]
CONTROL_KIND_UNSPECIFIED: ControlKind
CONTROL_KIND_DUMP_TRACE: ControlKind
CONTROL_KIND_ABORT: ControlKind
CONTROL_KIND_CHECKPOINT: ControlKind

class RegisterRankRequest(_message.Message):
    __slots__ = ("job_id", "rank", "local_rank", "world_size", "pid", "progress_page", "incarnation", "hostname", "cuda_device")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    LOCAL_RANK_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_PAGE_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    CUDA_DEVICE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    rank: int
    local_rank: int
    world_size: int
    pid: int
    progress_page: str
    incarnation: int
    hostname: str
    cuda_device: int
    def __init__(self, job_id: _Optional[str] = ..., rank: _Optional[int] = ..., local_rank: _Optional[int] = ..., world_size: _Optional[int] = ..., pid: _Optional[int] = ..., progress_page: _Optional[str] = ..., incarnation: _Optional[int] = ..., hostname: _Optional[str] = ..., cuda_device: _Optional[int] = ...) -> None: ...

class RegisterRankResponse(_message.Message):
    __slots__ = ("accepted", "reason", "node_id", "incarnation", "telemetry_interval_s")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    reason: str
    node_id: str
    incarnation: int
    telemetry_interval_s: float
    def __init__(self, accepted: bool = ..., reason: _Optional[str] = ..., node_id: _Optional[str] = ..., incarnation: _Optional[int] = ..., telemetry_interval_s: _Optional[float] = ...) -> None: ...

class TelemetryBatch(_message.Message):
    __slots__ = ("rank", "incarnation", "steps", "collectives", "dropped_records", "gauges")
    class GaugesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    RANK_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    COLLECTIVES_FIELD_NUMBER: _ClassVar[int]
    DROPPED_RECORDS_FIELD_NUMBER: _ClassVar[int]
    GAUGES_FIELD_NUMBER: _ClassVar[int]
    rank: int
    incarnation: int
    steps: _containers.RepeatedCompositeFieldContainer[_common_pb2.StepTiming]
    collectives: _containers.RepeatedCompositeFieldContainer[_common_pb2.CollectiveRecord]
    dropped_records: int
    gauges: _containers.ScalarMap[str, float]
    def __init__(self, rank: _Optional[int] = ..., incarnation: _Optional[int] = ..., steps: _Optional[_Iterable[_Union[_common_pb2.StepTiming, _Mapping]]] = ..., collectives: _Optional[_Iterable[_Union[_common_pb2.CollectiveRecord, _Mapping]]] = ..., dropped_records: _Optional[int] = ..., gauges: _Optional[_Mapping[str, float]] = ...) -> None: ...

class TelemetryAck(_message.Message):
    __slots__ = ("batches",)
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    batches: int
    def __init__(self, batches: _Optional[int] = ...) -> None: ...

class ControlSubscribe(_message.Message):
    __slots__ = ("rank", "incarnation")
    RANK_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    rank: int
    incarnation: int
    def __init__(self, rank: _Optional[int] = ..., incarnation: _Optional[int] = ...) -> None: ...

class ControlMessage(_message.Message):
    __slots__ = ("kind", "incarnation", "reason")
    KIND_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    kind: ControlKind
    incarnation: int
    reason: str
    def __init__(self, kind: _Optional[_Union[ControlKind, str]] = ..., incarnation: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...
