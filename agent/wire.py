"""Conversions between the agent's dataclasses and the generated protobuf messages."""

from __future__ import annotations

from dataclasses import asdict

from kedge.agent import model
from kedge.proto import common_pb2, coordinator_pb2


def verdict_to_proto(v: model.Verdict) -> common_pb2.Verdict:
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


def rank_to_proto(r: model.RankStatus) -> common_pb2.RankStatus:
    msg = common_pb2.RankStatus(
        rank=r.rank,
        local_rank=r.local_rank,
        pid=r.pid,
        state=int(r.state),  # type: ignore[arg-type]
        step=r.step,
        step_time_s=r.step_time_s,
        heartbeat_mono_ns=r.heartbeat_mono_ns,
        rss_bytes=r.rss_bytes,
        proc_status=r.proc_status,
        exit_code=r.exit_code,
        signal=r.signal,
        incarnation=r.incarnation,
    )
    for g in r.groups:
        msg.groups.append(
            common_pb2.GroupProgress(
                group=g.group,
                last_enqueued_seq=g.enqueued_seq,
                last_started_seq=g.started_seq,
                last_completed_seq=g.completed_seq,
                enqueued_mono_ns=g.enqueued_mono_ns,
                started_mono_ns=g.started_mono_ns,
                completed_mono_ns=g.completed_mono_ns,
            )
        )
    return msg


def gpu_to_proto(g: model.GpuHealth) -> common_pb2.GpuHealth:
    return common_pb2.GpuHealth(**asdict(g))


def collective_to_proto(c: model.CollectiveRecord) -> common_pb2.CollectiveRecord:
    return common_pb2.CollectiveRecord(
        **asdict(c)
    )  # CollectiveRecord.rank (field 10) tells the coordinator whose


def collective_from_proto(c: common_pb2.CollectiveRecord, rank: int) -> model.CollectiveRecord:
    return model.CollectiveRecord(
        group=c.group,
        seq=c.seq,
        op=c.op,
        size_bytes=c.size_bytes,
        enqueue_mono_ns=c.enqueue_mono_ns,
        start_mono_ns=c.start_mono_ns,
        complete_mono_ns=c.complete_mono_ns,
        state=c.state,
        step=c.step,
        rank=rank,
    )


def report_to_proto(r: model.NodeReport) -> coordinator_pb2.NodeReport:
    msg = coordinator_pb2.NodeReport(
        job_id=r.job_id, node_id=r.node_id, incarnation=r.incarnation, wall_time_ns=r.wall_time_ns
    )
    msg.verdicts.extend(verdict_to_proto(v) for v in r.verdicts)
    msg.ranks.extend(rank_to_proto(x) for x in r.ranks)
    msg.gpus.extend(gpu_to_proto(g) for g in r.gpus)
    msg.collectives.extend(collective_to_proto(c) for c in r.collectives)
    msg.steps.extend(
        common_pb2.StepTiming(rank=s.rank, step=s.step, duration_s=s.duration_s, end_mono_ns=s.end_mono_ns)
        for s in r.steps
    )
    if r.probe is not None:
        msg.probe.CopyFrom(
            coordinator_pb2.ProbeResult(
                command_id=r.probe.command_id, peers=r.probe.peers, delay_s=r.probe.delay_s
            )
        )
    return msg


def command_from_proto(c: coordinator_pb2.Command) -> model.Command | None:
    """The command in the agent's terms; None for a body this agent does not know."""
    which = c.WhichOneof("body")
    body: model.StartWorkers | model.StopWorkers | model.RunProbe
    if which == "start":
        s = c.start
        body = model.StartWorkers(
            world_size=s.world_size,
            master_addr=s.master_addr,
            master_port=s.master_port,
            workers=[model.WorkerSpec(rank=w.rank, local_rank=w.local_rank) for w in s.workers],
            restore_step=s.restore_step,
            env=dict(s.env),
        )
    elif which == "stop":
        body = model.StopWorkers(grace_s=c.stop.grace_s, reason=c.stop.reason)
    elif which == "probe":
        p = c.probe
        body = model.RunProbe(
            peers=list(p.peers),
            size_bytes=p.size_bytes,
            repeats=p.repeats,
            master_addr=p.master_addr,
            master_port=p.master_port,
        )
    else:
        return None
    return model.Command(command_id=c.command_id, job_id=c.job_id, incarnation=c.incarnation, body=body)
