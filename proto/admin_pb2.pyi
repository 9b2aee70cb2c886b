from kedge.proto import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StatusRequest(_message.Message):
    __slots__ = ("job_id", "recent")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    RECENT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    recent: int
    def __init__(self, job_id: _Optional[str] = ..., recent: _Optional[int] = ...) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("node_id", "hostname", "state", "lease_left_s", "nproc")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LEASE_LEFT_S_FIELD_NUMBER: _ClassVar[int]
    NPROC_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    hostname: str
    state: str
    lease_left_s: float
    nproc: int
    def __init__(self, node_id: _Optional[str] = ..., hostname: _Optional[str] = ..., state: _Optional[str] = ..., lease_left_s: _Optional[float] = ..., nproc: _Optional[int] = ...) -> None: ...

class RankInfo(_message.Message):
    __slots__ = ("rank", "node_id", "status")
    RANK_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    rank: int
    node_id: str
    status: _common_pb2.RankStatus
    def __init__(self, rank: _Optional[int] = ..., node_id: _Optional[str] = ..., status: _Optional[_Union[_common_pb2.RankStatus, _Mapping]] = ...) -> None: ...

class Decision(_message.Message):
    __slots__ = ("wall_time_ns", "action", "reason", "incarnation", "evidence")
    WALL_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    wall_time_ns: int
    action: str
    reason: str
    incarnation: int
    evidence: _containers.RepeatedCompositeFieldContainer[_common_pb2.Verdict]
    def __init__(self, wall_time_ns: _Optional[int] = ..., action: _Optional[str] = ..., reason: _Optional[str] = ..., incarnation: _Optional[int] = ..., evidence: _Optional[_Iterable[_Union[_common_pb2.Verdict, _Mapping]]] = ...) -> None: ...

class JobInfo(_message.Message):
    __slots__ = ("job_id", "state", "incarnation", "world_size", "step", "nodes", "ranks", "diagnoses", "actions", "restarts")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    RANKS_FIELD_NUMBER: _ClassVar[int]
    DIAGNOSES_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: str
    incarnation: int
    world_size: int
    step: int
    nodes: _containers.RepeatedCompositeFieldContainer[NodeInfo]
    ranks: _containers.RepeatedCompositeFieldContainer[RankInfo]
    diagnoses: _containers.RepeatedCompositeFieldContainer[_common_pb2.Verdict]
    actions: _containers.RepeatedCompositeFieldContainer[Decision]
    restarts: int
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[str] = ..., incarnation: _Optional[int] = ..., world_size: _Optional[int] = ..., step: _Optional[int] = ..., nodes: _Optional[_Iterable[_Union[NodeInfo, _Mapping]]] = ..., ranks: _Optional[_Iterable[_Union[RankInfo, _Mapping]]] = ..., diagnoses: _Optional[_Iterable[_Union[_common_pb2.Verdict, _Mapping]]] = ..., actions: _Optional[_Iterable[_Union[Decision, _Mapping]]] = ..., restarts: _Optional[int] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("jobs", "coordinator", "leader")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    COORDINATOR_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobInfo]
    coordinator: str
    leader: bool
    def __init__(self, jobs: _Optional[_Iterable[_Union[JobInfo, _Mapping]]] = ..., coordinator: _Optional[str] = ..., leader: bool = ...) -> None: ...
