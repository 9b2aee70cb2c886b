"""Conversions between the generated protobuf messages and the coordinator's own dataclasses.

The one place (with server and admin_client) that knows the generated code; everything else in the
coordinator speaks `kedge.coordinator.model`.
"""

from __future__ import annotations

from kedge.coordinator.core import JobStatus
from kedge.coordinator.model import (
    ActionRecord,
    CollectiveSample,
    CommandData,
    CommandOutcome,
    GroupProgress,
    NodeRegistration,
    NodeReportData,
    ProbeData,
    RankSnapshot,
    RankState,
    RegisterAnswer,
    RunProbeBody,
    StartWorkersBody,
    StepSample,
    StopWorkersBody,
    Verdict,
    VerdictKind,
)
from kedge.proto import admin_pb2, common_pb2, coordinator_pb2


def verdict_from_pb(v: common_pb2.Verdict) -> Verdict:
    kind = v.kind if v.kind in VerdictKind._value2member_map_ else 0
    return Verdict(
        kind=VerdictKind(kind),
        node_id=v.node_id,
        rank=v.rank,
        gpu_index=v.gpu_index,
        reason=v.reason,
        evidence=dict(v.evidence),
        wall_time_ns=v.wall_time_ns,
        incarnation=v.incarnation,
    )


def verdict_to_pb(v: Verdict) -> common_pb2.Verdict:
    return common_pb2.Verdict(
        kind=int(v.kind),  # type: ignore[arg-type]
        node_id=v.node_id,
        rank=v.rank,
        gpu_index=v.gpu_index,
        reason=v.reason,
        evidence=v.evidence,
        wall_time_ns=v.wall_time_ns,
        incarnation=v.incarnation,
    )


def registration_from_pb(r: coordinator_pb2.RegisterNodeRequest) -> NodeRegistration:
    return NodeRegistration(
        job_id=r.job_id,
        node_id=r.node_id,
        hostname=r.hostname,
        address=r.address,
        nproc=r.nproc,
        gpus=r.gpus,
        spare=r.spare,
        known_incarnation=r.known_incarnation,
        command=list(r.command),
    )


def answer_to_pb(a: RegisterAnswer) -> coordinator_pb2.RegisterNodeResponse:
    return coordinator_pb2.RegisterNodeResponse(
        accepted=a.accepted,
        reason=a.reason,
        lease_ttl_s=a.lease_ttl_s,
        heartbeat_interval_s=a.heartbeat_interval_s,
        incarnation=a.incarnation,
    )


def rank_from_pb(s: common_pb2.RankStatus, node_id: str) -> RankSnapshot:
    state = s.state if s.state in RankState._value2member_map_ else 0
    return RankSnapshot(
        rank=s.rank,
        node_id=node_id,
        local_rank=s.local_rank,
        pid=s.pid,
        state=RankState(state),
        step=s.step,
        step_time_s=s.step_time_s,
        proc_status=s.proc_status,
        exit_code=s.exit_code,
        signal=s.signal,
        incarnation=s.incarnation,
        groups={
            g.group: GroupProgress(
                group=g.group,
                last_enqueued_seq=g.last_enqueued_seq,
                last_started_seq=g.last_started_seq,
                last_completed_seq=g.last_completed_seq,
            )
            for g in s.groups
        },
    )


def rank_to_pb(s: RankSnapshot) -> common_pb2.RankStatus:
    return common_pb2.RankStatus(
        rank=s.rank,
        local_rank=s.local_rank,
        pid=s.pid,
        state=int(s.state),  # type: ignore[arg-type]
        step=s.step,
        step_time_s=s.step_time_s,
        proc_status=s.proc_status,
        exit_code=s.exit_code,
        signal=s.signal,
        incarnation=s.incarnation,
        groups=[
            common_pb2.GroupProgress(
                group=g.group,
                last_enqueued_seq=g.last_enqueued_seq,
                last_started_seq=g.last_started_seq,
                last_completed_seq=g.last_completed_seq,
            )
            for g in s.groups.values()
        ],
    )


def collective_from_pb(c: common_pb2.CollectiveRecord, rank: int) -> CollectiveSample | None:
    """One rank's view of a collective: its duration (start, else enqueue, to completion) when it
    completed with timestamps (NCCL), else -1 with the enqueue time (gloo records no completion)."""
    begin = c.start_mono_ns or c.enqueue_mono_ns
    duration_s = (c.complete_mono_ns - begin) / 1e9 if c.complete_mono_ns >= begin > 0 else -1.0
    if duration_s < 0 and c.enqueue_mono_ns <= 0:
        return None
    return CollectiveSample(
        rank=rank,
        group=c.group,
        seq=c.seq,
        op=c.op,
        duration_s=duration_s,
        step=c.step,
        enqueue_ns=c.enqueue_mono_ns,
    )


def report_from_pb(r: coordinator_pb2.NodeReport) -> NodeReportData:
    samples = (collective_from_pb(c, c.rank) for c in r.collectives)
    probe = None
    if r.HasField("probe"):
        probe = ProbeData(
            command_id=r.probe.command_id, peers=list(r.probe.peers), delay_s=list(r.probe.delay_s)
        )
    return NodeReportData(
        job_id=r.job_id,
        node_id=r.node_id,
        incarnation=r.incarnation,
        wall_time_ns=r.wall_time_ns,
        verdicts=[verdict_from_pb(v) for v in r.verdicts],
        ranks=[rank_from_pb(s, r.node_id) for s in r.ranks],
        collectives=[c for c in samples if c is not None],
        steps=[StepSample(rank=s.rank, step=s.step, duration_s=s.duration_s) for s in r.steps],
        probe=probe,
    )


def command_to_pb(c: CommandData) -> coordinator_pb2.Command:
    msg = coordinator_pb2.Command(command_id=c.command_id, job_id=c.job_id, incarnation=c.incarnation)
    body = c.body
    if isinstance(body, StartWorkersBody):
        msg.start.CopyFrom(
            coordinator_pb2.StartWorkers(
                world_size=body.world_size,
                master_addr=body.master_addr,
                master_port=body.master_port,
                workers=[common_pb2.WorkerSpec(rank=r, local_rank=lr) for r, lr in body.workers],
                restore_step=body.restore_step,
                env=body.env,
            )
        )
    elif isinstance(body, StopWorkersBody):
        msg.stop.CopyFrom(
            coordinator_pb2.StopWorkers(
                grace_s=body.grace_s, reason=body.reason, final=body.final, exit_code=body.exit_code
            )
        )
    else:
        assert isinstance(body, RunProbeBody)
        msg.probe.CopyFrom(
            coordinator_pb2.RunProbe(
                peers=body.peers,
                size_bytes=body.size_bytes,
                repeats=body.repeats,
                master_addr=body.master_addr,
                master_port=body.master_port,
            )
        )
    return msg


def outcome_from_pb(r: coordinator_pb2.CommandResult) -> CommandOutcome:
    return CommandOutcome(
        command_id=r.command_id,
        job_id=r.job_id,
        node_id=r.node_id,
        incarnation=r.incarnation,
        ok=r.ok,
        reason=r.reason,
    )


def action_to_pb(a: ActionRecord) -> admin_pb2.Decision:
    return admin_pb2.Decision(
        wall_time_ns=a.wall_time_ns,
        action=a.kind.value,
        reason=a.reason,
        incarnation=a.incarnation,
        evidence=[verdict_to_pb(v) for v in a.evidence],
    )


def job_status_to_pb(s: JobStatus) -> admin_pb2.JobInfo:
    return admin_pb2.JobInfo(
        job_id=s.job.job_id,
        state=s.job.state.value,
        incarnation=s.job.incarnation,
        world_size=s.job.world_size,
        step=s.job.step,
        restarts=s.job.restarts,
        nodes=[
            admin_pb2.NodeInfo(
                node_id=n.record.node_id,
                hostname=n.record.hostname,
                state=n.record.state.value,
                lease_left_s=n.lease_left_s,
                nproc=n.record.nproc,
            )
            for n in s.nodes
        ],
        ranks=[admin_pb2.RankInfo(rank=r.rank, node_id=r.node_id, status=rank_to_pb(r)) for r in s.ranks],
        diagnoses=[verdict_to_pb(v) for v in s.diagnoses],
        actions=[action_to_pb(a) for a in s.actions],
    )
