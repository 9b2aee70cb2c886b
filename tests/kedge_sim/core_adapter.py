"""Adapter over the coordinator's transport-free core (`kedge.coordinator.core.CoordinatorCore`):
the same calls the gRPC server makes (register_node, heartbeat, report, command_done, tick), with the
same dataclasses, by function call on the simulator's virtual clock; a real SQLite store in a
temporary directory; commands collected by a `CommandSink` and answered by the simulated agents.

Only the conversion of simulated samples into `NodeReportData` (what `kedge.coordinator.wire` does
with protobuf) lives here; every verdict, decision, lease and command comes from the core.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass

from kedge.coordinator import core
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
    RunProbeBody,
    StartWorkersBody,
    StepSample,
    Verdict,
    VerdictKind,
)
from kedge.coordinator.sqlite_store import SqliteStore

from kedge_sim.adapter import Decision, ProbeRequest
from kedge_sim.cluster import GROUP, NodeSample

JOB = "sim-job"
_AGENT_KINDS = {"rank_died": VerdictKind.RANK_DIED, "gpu_fault": VerdictKind.GPU_FAULT}
_WALL_BASE_NS = 1_790_000_000 * 10**9  # virtual wall clock: a fixed epoch plus virtual seconds


class VirtualClock:
    """The core's Clock, read from the simulator's 'coordinator now'."""

    def __init__(self) -> None:
        self.now_s = 0.0

    def mono_s(self) -> float:
        return self.now_s

    def wall_ns(self) -> int:
        return _WALL_BASE_NS + int(self.now_s * 1e9)


class Sink:
    """CommandSink collecting commands for the simulated agents."""

    def __init__(self) -> None:
        self.queue: list[tuple[str, CommandData]] = []

    def send(self, node_id: str, command: CommandData) -> None:
        self.queue.append((node_id, command))


@dataclass(slots=True)
class AgentCommand:
    """A command a simulated agent must answer (the driver schedules the answer)."""

    node_id: str
    command: CommandData


class CoreAdapter:
    """Drives CoordinatorCore; see the module docstring."""

    name = "CoordinatorCore"

    def __init__(self, config: core.Config | None = None) -> None:
        self._dir = tempfile.mkdtemp(prefix="kedge-sim-")
        self.store = SqliteStore(f"{self._dir}/coordinator.db")
        self.clock = VirtualClock()
        self.sink = Sink()
        self.core = core.CoordinatorCore(self.store, self.sink, config or core.Config(), self.clock)
        self.incarnation: dict[str, int] = {}
        self._last_action_ns = 0
        self.running_at_s: list[tuple[float, int]] = []  # (time, incarnation) the job (re)started

    def close(self) -> None:
        self.store.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    # --- calls the transport would make ---------------------------------------------------------
    def register(self, now_s: float, node_ids: list[str], nproc: int) -> None:
        self.clock.now_s = now_s
        for nid in node_ids:
            self.core.register_node(
                NodeRegistration(job_id=JOB, node_id=nid, hostname=nid, address=nid, nproc=nproc, gpus=nproc)
            )

    def heartbeat(self, now_s: float, node_id: str) -> None:
        self.clock.now_s = now_s
        self.core.heartbeat(JOB, node_id)

    def report(self, now_s: float, sample: NodeSample) -> None:
        self.clock.now_s = now_s
        self.core.report(self._report_data(sample))

    def command_done(self, now_s: float, node_id: str, command: CommandData, ok: bool = True) -> None:
        self.clock.now_s = now_s
        if isinstance(command.body, StartWorkersBody):
            self.incarnation[node_id] = command.incarnation
        self.core.command_done(
            CommandOutcome(
                command_id=command.command_id,
                job_id=JOB,
                node_id=node_id,
                incarnation=command.incarnation,
                ok=ok,
            )
        )

    def probe_answer(
        self, now_s: float, node_id: str, command: CommandData, peers: list[str], delay_s: list[float]
    ) -> None:
        self.clock.now_s = now_s
        probe = ProbeData(command_id=command.command_id, peers=peers, delay_s=delay_s)
        self.core.report(
            NodeReportData(
                job_id=JOB, node_id=node_id, incarnation=self.incarnation.get(node_id, 0), probe=probe
            )
        )

    def tick(self, now_s: float) -> list[Decision]:
        self.clock.now_s = now_s
        self.core.tick()
        job = self.store.get_job(JOB)
        if (
            job is not None
            and job.state.value == "running"
            and (not self.running_at_s or self.running_at_s[-1][1] != job.incarnation)
        ):
            self.running_at_s.append((now_s, job.incarnation))
        return self._new_decisions(now_s)

    def commands(self) -> list[AgentCommand]:
        out = [AgentCommand(n, c) for n, c in self.sink.queue]
        self.sink.queue.clear()
        return out

    # --- the driver's generic adapter interface (probes travel as commands here) ------------------
    def probe_requests(self) -> list[ProbeRequest]:
        return []

    def probe_result(self, now_s: float, node_id: str, request: ProbeRequest, delay_s: list[float]) -> None:
        return None

    # --- helpers ------------------------------------------------------------------------------------
    def _new_decisions(self, now_s: float) -> list[Decision]:
        """Actions recorded in the store since the last call (newest first in the store)."""
        fresh = [a for a in self.store.recent_actions(JOB, 20) if a.wall_time_ns > self._last_action_ns]
        if fresh:
            self._last_action_ns = max(a.wall_time_ns for a in fresh)
        return [_decision(now_s, a) for a in sorted(fresh, key=lambda a: a.wall_time_ns)]

    def _report_data(self, sample: NodeSample) -> NodeReportData:
        nid = sample.node_id
        inc = self.incarnation.get(nid, 0)
        ranks = [
            RankSnapshot(
                rank=r.rank,
                node_id=nid,
                local_rank=r.local_rank,
                state=RankState.EXITED if r.state == "exited" else RankState.RUNNING,
                step=r.step,
                step_time_s=r.step_time_s,
                proc_status=r.proc_status,
                exit_code=r.exit_code,
                signal=r.signal,
                incarnation=inc,
                groups={
                    GROUP: GroupProgress(
                        group=GROUP,
                        last_enqueued_seq=r.last_enqueued_seq,
                        last_started_seq=r.last_started_seq,
                        last_completed_seq=r.last_completed_seq,
                    )
                },
            )
            for r in sample.ranks
        ]
        return NodeReportData(
            job_id=JOB,
            node_id=nid,
            incarnation=inc,
            wall_time_ns=_WALL_BASE_NS + sample.wall_time_ns,
            ranks=ranks,
            steps=[StepSample(rank=r, step=s, duration_s=d) for r, s, d, _ in sample.step_timings],
            collectives=[
                CollectiveSample(
                    rank=c.rank,
                    group=GROUP,
                    seq=c.seq,
                    op="allreduce",
                    step=c.step,
                    duration_s=(c.complete_mono_ns - c.start_mono_ns) / 1e9,
                )
                for c in sample.collectives
                if c.complete_mono_ns
            ],
            verdicts=[
                Verdict(
                    kind=_AGENT_KINDS[v.kind],
                    node_id=nid,
                    rank=v.rank,
                    gpu_index=v.gpu_index,
                    reason=v.reason,
                    evidence=dict(v.evidence),
                    incarnation=inc,
                )
                for v in sample.verdicts
            ],
        )


def _decision(now_s: float, a: ActionRecord) -> Decision:
    ev = a.evidence
    return Decision(
        at_s=now_s,
        action=a.kind.value,
        reason=a.reason,
        nodes=list(a.nodes),
        culprit_nodes=sorted({v.node_id for v in ev if v.node_id}),
        culprit_ranks=sorted({v.rank for v in ev if v.rank >= 0}),
        verdict_kinds=sorted({v.kind.name for v in ev}),
    )


def is_probe(command: CommandData) -> bool:
    return isinstance(command.body, RunProbeBody)
