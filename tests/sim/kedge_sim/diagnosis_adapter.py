"""Adapter over the coordinator's diagnosis core and policy (`kedge.coordinator.diagnosis.Diagnoser`,
`kedge.coordinator.policy.decide`), with the transport swapped for function calls.

What is real: every verdict (hang alignment, straggler, comm slow), the adaptive thresholds, the
persistence rule and every decision come from the coordinator's modules, unchanged. What this module
does, and the coordinator's server/core would do on the same inputs: convert agent reports into the
coordinator's record types (the job of `kedge.coordinator.wire`), keep each node's lease deadline and
turn an expired one into a NODE_LOST verdict, pass agent verdicts on, and call `evaluate` and
`decide` once per tick. When the coordinator's core module lands, `CoreAdapter` replaces this glue.
"""

from __future__ import annotations

from kedge.coordinator import diagnosis, policy
from kedge.coordinator.model import (
    ActionKind,
    ActionRecord,
    CollectiveSample,
    GroupProgress,
    JobState,
    NodeState,
    RankSnapshot,
    RankState,
    StepSample,
    Verdict,
    VerdictKind,
)

from kedge_sim.adapter import Decision, ProbeRequest
from kedge_sim.cluster import GROUP, NodeSample

_AGENT_KINDS = {"rank_died": VerdictKind.RANK_DIED, "gpu_fault": VerdictKind.GPU_FAULT}


class DiagnosisPolicyAdapter:
    """Drives `Diagnoser` and `decide` with simulated agent reports."""

    name = "diagnosis+policy"

    def __init__(
        self,
        *,
        lease_ttl_s: float = 10.0,
        diagnosis_config: diagnosis.Config | None = None,
        policy_config: policy.Config | None = None,
    ) -> None:
        self.lease_ttl_s = lease_ttl_s
        self.diagnoser = diagnosis.Diagnoser(diagnosis_config)
        self.policy_config = policy_config or policy.Config()
        self.lease_deadline_s: dict[str, float] = {}
        self.node_state: dict[str, NodeState] = {}
        self.nproc: dict[str, int] = {}
        self.pending: list[Verdict] = []
        self.history: list[ActionRecord] = []
        self.job_state = JobState.PENDING
        self.world_size = 0
        self.incarnation = 1

    def register(self, now_s: float, node_ids: list[str], nproc: int) -> None:
        rank_nodes = {}
        for i, nid in enumerate(node_ids):
            self.lease_deadline_s[nid] = now_s + self.lease_ttl_s
            self.node_state[nid] = NodeState.ALIVE
            self.nproc[nid] = nproc
            rank_nodes.update({i * nproc + local: nid for local in range(nproc)})
        self.world_size = len(rank_nodes)
        self.diagnoser.reset(incarnation=self.incarnation, rank_nodes=rank_nodes)
        self.job_state = JobState.RUNNING

    def heartbeat(self, now_s: float, node_id: str) -> None:
        if self.node_state.get(node_id) is NodeState.ALIVE:
            self.lease_deadline_s[node_id] = now_s + self.lease_ttl_s

    def report(self, now_s: float, sample: NodeSample) -> None:
        nid = sample.node_id
        snaps = [
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
                incarnation=self.incarnation,
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
        self.diagnoser.observe_ranks(now_s, snaps)
        self.diagnoser.observe_steps(
            StepSample(rank=r, step=s, duration_s=d) for r, s, d, _ in sample.step_timings
        )
        self.diagnoser.observe_collectives(
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
        )
        for v in sample.verdicts:
            self.pending.append(
                Verdict(
                    kind=_AGENT_KINDS[v.kind],
                    node_id=nid,
                    rank=v.rank,
                    gpu_index=v.gpu_index,
                    reason=v.reason,
                    evidence=dict(v.evidence),
                    wall_time_ns=int(now_s * 1e9),
                    incarnation=self.incarnation,
                )
            )

    def tick(self, now_s: float) -> list[Decision]:
        now_ns = int(now_s * 1e9)
        verdicts = self.pending + self._expired_leases(now_s) + self.diagnoser.evaluate(now_s, now_ns)
        self.pending = []
        if not verdicts:
            return []
        nodes = [policy.NodeView(node_id=n, state=s, nproc=self.nproc[n]) for n, s in self.node_state.items()]
        state = policy.State(
            job_state=self.job_state,
            world_size=self.world_size,
            nodes=nodes,
            verdicts=verdicts,
            history=self.history,
        )
        action, reason = policy.decide(now_ns, state, self.policy_config)
        if action.kind is ActionKind.NONE:
            return []
        self.history.append(
            ActionRecord(
                kind=action.kind,
                reason=reason,
                wall_time_ns=now_ns,
                incarnation=self.incarnation,
                evidence=action.evidence,
                nodes=action.isolate,
            )
        )
        if action.kind is not ActionKind.ALERT:
            self.job_state = JobState.RECOVERING  # the executor would now run the action
        return [_decision(now_s, action, reason)]

    def _expired_leases(self, now_s: float) -> list[Verdict]:
        out = []
        for nid, deadline in self.lease_deadline_s.items():
            if deadline < now_s and self.node_state[nid] is NodeState.ALIVE:
                self.node_state[nid] = NodeState.LOST
                out.append(
                    Verdict(
                        kind=VerdictKind.NODE_LOST,
                        node_id=nid,
                        reason=f"lease of {nid} expired",
                        wall_time_ns=int(now_s * 1e9),
                        incarnation=self.incarnation,
                    )
                )
        return out

    def probe_requests(self) -> list[ProbeRequest]:
        return []

    def probe_result(self, now_s: float, node_id: str, request: ProbeRequest, delay_s: list[float]) -> None:
        return None


def _decision(now_s: float, action: policy.Action, reason: str) -> Decision:
    ev = action.evidence
    return Decision(
        at_s=now_s,
        action=action.kind.value,
        reason=reason,
        nodes=list(action.isolate),
        culprit_nodes=sorted({v.node_id for v in ev if v.node_id}),
        culprit_ranks=sorted({v.rank for v in ev if v.rank >= 0}),
        verdict_kinds=sorted({v.kind.name for v in ev}),
    )
