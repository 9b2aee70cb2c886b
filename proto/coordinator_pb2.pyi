from kedge.proto import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterNodeRequest(_message.Message):
    __slots__ = ("job_id", "node_id", "hostname", "address", "nproc", "gpus", "spare", "known_incarnation", "command")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    NPROC_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    SPARE_FIELD_NUMBER: _ClassVar[int]
    KNOWN_INCARNATION_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    node_id: str
    hostname: str
    address: str
    nproc: int
    gpus: int
    spare: bool
    known_incarnation: int
    command: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, job_id: _Optional[str] = ..., node_id: _Optional[str] = ..., hostname: _Optional[str] = ..., address: _Optional[str] = ..., nproc: _Optional[int] = ..., gpus: _Optional[int] = ..., spare: bool = ..., known_incarnation: _Optional[int] = ..., command: _Optional[_Iterable[str]] = ...) -> None: ...

class RegisterNodeResponse(_message.Message):
    __slots__ = ("accepted", "reason", "lease_ttl_s", "heartbeat_interval_s", "incarnation")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    LEASE_TTL_S_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    reason: str
    lease_ttl_s: float
    heartbeat_interval_s: float
    incarnation: int
    def __init__(self, accepted: bool = ..., reason: _Optional[str] = ..., lease_ttl_s: _Optional[float] = ..., heartbeat_interval_s: _Optional[float] = ..., incarnation: _Optional[int] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("job_id", "node_id", "incarnation")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    node_id: str
    incarnation: int
    def __init__(self, job_id: _Optional[str] = ..., node_id: _Optional[str] = ..., incarnation: _Optional[int] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("ok", "reason", "lease_ttl_s")
    OK_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    LEASE_TTL_S_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    reason: str
    lease_ttl_s: float
    def __init__(self, ok: bool = ..., reason: _Optional[str] = ..., lease_ttl_s: _Optional[float] = ...) -> None: ...

class NodeReport(_message.Message):
    __slots__ = ("job_id", "node_id", "incarnation", "wall_time_ns", "verdicts", "ranks", "gpus", "collectives", "steps", "probe")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    WALL_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    VERDICTS_FIELD_NUMBER: _ClassVar[int]
    RANKS_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    COLLECTIVES_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    PROBE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    node_id: str
    incarnation: int
    wall_time_ns: int
    verdicts: _containers.RepeatedCompositeFieldContainer[_common_pb2.Verdict]
    ranks: _containers.RepeatedCompositeFieldContainer[_common_pb2.RankStatus]
    gpus: _containers.RepeatedCompositeFieldContainer[_common_pb2.GpuHealth]
    collectives: _containers.RepeatedCompositeFieldContainer[_common_pb2.CollectiveRecord]
    steps: _containers.RepeatedCompositeFieldContainer[_common_pb2.StepTiming]
    probe: ProbeResult
    def __init__(self, job_id: _Optional[str] = ..., node_id: _Optional[str] = ..., incarnation: _Optional[int] = ..., wall_time_ns: _Optional[int] = ..., verdicts: _Optional[_Iterable[_Union[_common_pb2.Verdict, _Mapping]]] = ..., ranks: _Optional[_Iterable[_Union[_common_pb2.RankStatus, _Mapping]]] = ..., gpus: _Optional[_Iterable[_Union[_common_pb2.GpuHealth, _Mapping]]] = ..., collectives: _Optional[_Iterable[_Union[_common_pb2.CollectiveRecord, _Mapping]]] = ..., steps: _Optional[_Iterable[_Union[_common_pb2.StepTiming, _Mapping]]] = ..., probe: _Optional[_Union[ProbeResult, _Mapping]] = ...) -> None: ...

class ReportAck(_message.Message):
    __slots__ = ("reports",)
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    reports: int
    def __init__(self, reports: _Optional[int] = ...) -> None: ...

class CommandSubscribe(_message.Message):
    __slots__ = ("job_id", "node_id")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    node_id: str
    def __init__(self, job_id: _Optional[str] = ..., node_id: _Optional[str] = ...) -> None: ...

class StartWorkers(_message.Message):
    __slots__ = ("world_size", "master_addr", "master_port", "workers", "restore_step", "env")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    MASTER_ADDR_FIELD_NUMBER: _ClassVar[int]
    MASTER_PORT_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    RESTORE_STEP_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    world_size: int
    master_addr: str
    master_port: int
    workers: _containers.RepeatedCompositeFieldContainer[_common_pb2.WorkerSpec]
    restore_step: int
    env: _containers.ScalarMap[str, str]
    def __init__(self, world_size: _Optional[int] = ..., master_addr: _Optional[str] = ..., master_port: _Optional[int] = ..., workers: _Optional[_Iterable[_Union[_common_pb2.WorkerSpec, _Mapping]]] = ..., restore_step: _Optional[int] = ..., env: _Optional[_Mapping[str, str]] = ...) -> None: ...

class StopWorkers(_message.Message):
    __slots__ = ("grace_s", "reason", "final", "exit_code")
    GRACE_S_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    grace_s: float
    reason: str
    final: bool
    exit_code: int
    def __init__(self, grace_s: _Optional[float] = ..., reason: _Optional[str] = ..., final: bool = ..., exit_code: _Optional[int] = ...) -> None: ...

class RunProbe(_message.Message):
    __slots__ = ("peers", "size_bytes", "repeats", "master_addr", "master_port")
    PEERS_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    REPEATS_FIELD_NUMBER: _ClassVar[int]
    MASTER_ADDR_FIELD_NUMBER: _ClassVar[int]
    MASTER_PORT_FIELD_NUMBER: _ClassVar[int]
    peers: _containers.RepeatedScalarFieldContainer[str]
    size_bytes: int
    repeats: int
    master_addr: str
    master_port: int
    def __init__(self, peers: _Optional[_Iterable[str]] = ..., size_bytes: _Optional[int] = ..., repeats: _Optional[int] = ..., master_addr: _Optional[str] = ..., master_port: _Optional[int] = ...) -> None: ...

class ProbeResult(_message.Message):
    __slots__ = ("command_id", "peers", "delay_s")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    DELAY_S_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    peers: _containers.RepeatedScalarFieldContainer[str]
    delay_s: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, command_id: _Optional[str] = ..., peers: _Optional[_Iterable[str]] = ..., delay_s: _Optional[_Iterable[float]] = ...) -> None: ...

class Command(_message.Message):
    __slots__ = ("command_id", "job_id", "incarnation", "start", "stop", "probe")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    PROBE_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    job_id: str
    incarnation: int
    start: StartWorkers
    stop: StopWorkers
    probe: RunProbe
    def __init__(self, command_id: _Optional[str] = ..., job_id: _Optional[str] = ..., incarnation: _Optional[int] = ..., start: _Optional[_Union[StartWorkers, _Mapping]] = ..., stop: _Optional[_Union[StopWorkers, _Mapping]] = ..., probe: _Optional[_Union[RunProbe, _Mapping]] = ...) -> None: ...

class CommandResult(_message.Message):
    __slots__ = ("command_id", "job_id", "node_id", "incarnation", "ok", "reason")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    job_id: str
    node_id: str
    incarnation: int
    ok: bool
    reason: str
    def __init__(self, command_id: _Optional[str] = ..., job_id: _Optional[str] = ..., node_id: _Optional[str] = ..., incarnation: _Optional[int] = ..., ok: bool = ..., reason: _Optional[str] = ...) -> None: ...

class CommandAck(_message.Message):
    __slots__ = ("ok",)
    OK_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    def __init__(self, ok: bool = ...) -> None: ...
