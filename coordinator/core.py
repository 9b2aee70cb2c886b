"""The coordinator core: membership, leases, reports → diagnosis → policy → executor.

Transport-free: the gRPC server (`kedge.coordinator.server`) and the simulator (issue 11) call the
same methods with the project's dataclasses, and pass a `CommandSink` and a `Clock`. One lock
guards all state; every method is short and never blocks on the network (commands are queued).

Who calls what:
    agents (through the server)  register_node, heartbeat, report, command_done
    the server's tick thread     tick() every `tick_interval_s`
    admin (kedge status)         status()
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from kedge.coordinator import diagnosis, executor, policy
from kedge.coordinator.diagnosis import Diagnoser, localize_probe_cells
from kedge.coordinator.errors import StaleIncarnation
from kedge.coordinator.model import (
    ActionKind,
    ActionRecord,
    CommandData,
    CommandOutcome,
    JobRecord,
    JobState,
    NodeRecord,
    NodeRegistration,
    NodeReportData,
    NodeState,
    RankSnapshot,
    RegisterAnswer,
    RunProbeBody,
    Verdict,
    VerdictKind,
)
from kedge.coordinator.runtime import Clock, CommandSink, JobRuntime, ProbeRun, SystemClock, TimelineEvent
from kedge.coordinator.store import Store

log = logging.getLogger(__name__)

RANK_VERDICTS = frozenset({VerdictKind.RANK_DIED, VerdictKind.RANK_FROZEN, VerdictKind.RANK_EXITED_OK})
STOPPED_STATES = ("stopped", "tracing-stop")
"""Process states that make an agent's frozen verdict certain on its own (SIGSTOP, ptrace)."""
SEEN_VERDICTS = 4096
"""Agent verdict identities remembered for de-duplication (agents resend after a broken stream)."""


@dataclass(kw_only=True, slots=True)
class Config:
    """Coordinator core settings (CLI flags and KEDGE_COORDINATOR_* override these defaults)."""

    lease_ttl_s: float = 5.0
    """A node whose agent has not heartbeated for this long is lost."""
    heartbeat_interval_s: float = 1.0
    """How often agents are told to heartbeat."""
    tick_interval_s: float = 0.25
    """How often the server runs diagnosis, policy and the executor."""
    start_min_nodes: int = 1
    """A pending job starts once this many nodes registered..."""
    start_settle_s: float = 1.0
    """...and no node registered for this long."""
    probe_timeout_s: float = 15.0
    """A pairwise probe that has not answered by then is read as it stands."""
    collateral_grace_s: float = 5.5
    """Rank exits with an error code alone wait this long for a cause (a signal death, a lost node)."""
    probe_group_nodes: int = 16
    """The pairwise probe runs in rings of this many nodes (each its own rendezvous), so its cost
    is O(nodes x group), not O(nodes^2): one ring over 2,048 nodes is 4M cells per answer."""
    persist_interval_s: float = 2.0
    """Lease expiries and the job's step are written to the store at most this often."""
    diagnosis: diagnosis.Config = field(default_factory=diagnosis.Config)
    """Diagnosis thresholds."""
    policy: policy.Config = field(default_factory=policy.Config)
    """Recovery policy."""
    executor: executor.Config = field(default_factory=executor.Config)
    """How actions are carried out."""


@dataclass(kw_only=True, slots=True)
class NodeStatus:
    """A node as `kedge status` shows it."""

    record: NodeRecord
    lease_left_s: float


@dataclass(kw_only=True, slots=True)
class JobStatus:
    """A job as `kedge status` shows it."""

    job: JobRecord
    nodes: list[NodeStatus]
    ranks: list[RankSnapshot]
    diagnoses: list[Verdict]
    actions: list[ActionRecord]
    timeline: list[TimelineEvent]


class CoordinatorCore:
    """All jobs this coordinator serves (see the module docstring)."""

    def __init__(
        self, store: Store, sink: CommandSink, config: Config | None = None, clock: Clock | None = None
    ) -> None:
        self.store = store
        self.config = config or Config()
        self.clock: Clock = clock or SystemClock()
        self.executor = executor.Executor(store, sink, self.clock, self.config.executor, self._event)
        self._sink = sink
        self._lock = threading.RLock()
        self._jobs: dict[str, JobRuntime] = {}
        for job in store.list_jobs():
            self._load(job)

    # --- agents -------------------------------------------------------------------------------
    def register_node(self, reg: NodeRegistration) -> RegisterAnswer:
        """An agent (re)registers its node; answers with the lease and the current incarnation."""
        with self._lock:
            now = self.clock.mono_s()
            job = self.store.ensure_job(reg.job_id, command=reg.command, now_wall_ns=self.clock.wall_ns())
            rt = self._jobs.get(reg.job_id) or self._load(job)
            old = rt.nodes.get(reg.node_id)
            state, reason = self._admit(rt, reg, old)
            record = NodeRecord(
                job_id=reg.job_id,
                node_id=reg.node_id,
                hostname=reg.hostname,
                address=reg.address,
                nproc=reg.nproc,
                gpus=reg.gpus,
                state=state,
                lease_expires_wall_ns=self.clock.wall_ns() + int(self.config.lease_ttl_s * 1e9),
                registered_wall_ns=self.clock.wall_ns(),
            )
            try:
                self.store.upsert_node(record, incarnation=rt.job.incarnation)
            except StaleIncarnation as exc:
                return RegisterAnswer(accepted=False, reason=str(exc))
            rt.nodes[reg.node_id] = record
            rt.lease_deadline_s[reg.node_id] = now + self.config.lease_ttl_s
            rt.last_registration_s = now
            self._event(rt, "node", f"{reg.node_id} registered ({state.value}, {reg.nproc} ranks){reason}")
            return RegisterAnswer(
                accepted=state is not NodeState.ISOLATED,
                reason=reason.strip("; ") or "ok",
                lease_ttl_s=self.config.lease_ttl_s,
                heartbeat_interval_s=self.config.heartbeat_interval_s,
                incarnation=rt.job.incarnation,
            )

    def _admit(self, rt: JobRuntime, reg: NodeRegistration, old: NodeRecord | None) -> tuple[NodeState, str]:
        if old is not None and old.state is NodeState.ISOLATED:
            return NodeState.ISOLATED, "; isolated from this job by an earlier decision"
        if reg.spare:
            return NodeState.SPARE, ""
        in_world = reg.node_id in rt.world_nodes()
        if rt.job.state in (JobState.RUNNING, JobState.RECOVERING) and not in_world:
            return NodeState.SPARE, "; job running without this node: kept as a spare"
        if old is not None and old.state is NodeState.LOST and in_world:
            return NodeState.SPARE, "; lost earlier: kept as a spare"
        if in_world and rt.job.state is JobState.RUNNING and reg.known_incarnation != rt.job.incarnation:
            rt.verdicts.append(
                Verdict(
                    kind=VerdictKind.RANK_DIED,
                    node_id=reg.node_id,
                    reason=f"agent of {reg.node_id} came back without the workers of incarnation {rt.job.incarnation}",
                    wall_time_ns=self.clock.wall_ns(),
                    incarnation=rt.job.incarnation,
                )
            )
        return NodeState.ALIVE, ""

    def heartbeat(self, job_id: str, node_id: str) -> tuple[bool, str]:
        """Renews a node's lease; a lost or unknown node must register again."""
        with self._lock:
            rt = self._jobs.get(job_id)
            node = rt.nodes.get(node_id) if rt else None
            if rt is None or node is None:
                return False, "unknown node: register again"
            if node.state in (NodeState.LOST, NodeState.ISOLATED):
                return False, f"node is {node.state.value}: register again"
            rt.lease_deadline_s[node_id] = self.clock.mono_s() + self.config.lease_ttl_s
            return True, ""

    def report(self, rep: NodeReportData) -> None:
        """Verdicts and summaries from one agent."""
        with self._lock:
            rt = self._jobs.get(rep.job_id)
            node = rt.nodes.get(rep.node_id) if rt else None
            if rt is None or node is None or node.state is not NodeState.ALIVE:
                return
            now = self.clock.mono_s()
            current = rep.incarnation == rt.job.incarnation
            if current and rt.recovery is None:
                self._take_telemetry(rt, rep, now)
            for v in rep.verdicts:
                self._take_agent_verdict(rt, rep.node_id, v)
            if rep.probe is not None and rt.probe is not None:
                self._take_probe(rt, rep)

    def _take_telemetry(self, rt: JobRuntime, rep: NodeReportData, now: float) -> None:
        own = [s for s in rep.ranks if s.incarnation in (0, rt.job.incarnation)]
        for snap in own:
            snap.node_id = snap.node_id or rep.node_id
            rt.ranks[snap.rank] = snap
            rt.job.step = max(rt.job.step, snap.step)
        rt.diagnoser.observe_ranks(now, own)
        rt.diagnoser.observe_steps(rep.steps)
        rt.diagnoser.observe_collectives(rep.collectives)
        # a rank of the new world finished a step (step samples in the report may predate the restart)
        done = [
            s.step for s in own if s.incarnation == rt.job.incarnation and s.step >= 0 and s.step_time_s > 0
        ]
        if rt.resume_pending and done:
            rt.resume_pending = False
            self._event(
                rt, "resumed", f"first step after start: {max(done)} (incarnation {rt.job.incarnation})"
            )

    def _take_agent_verdict(self, rt: JobRuntime, node_id: str, v: Verdict) -> None:
        v.node_id = v.node_id or node_id
        identity = (v.node_id, v.rank, int(v.kind), v.wall_time_ns)
        if v.wall_time_ns and identity in rt.seen_verdicts:
            return  # delivered again after a reconnect
        rt.seen_verdicts[identity] = None
        while len(rt.seen_verdicts) > SEEN_VERDICTS:
            del rt.seen_verdicts[next(iter(rt.seen_verdicts))]
        if v.kind in RANK_VERDICTS and v.incarnation not in (0, rt.job.incarnation):
            return  # about workers of an older world
        if rt.recovery is not None and v.kind in RANK_VERDICTS:
            return  # workers die on purpose while we stop them
        if v.kind is VerdictKind.RANK_EXITED_OK:
            rt.exited_ok.add(v.rank)
            if len(rt.exited_ok) >= len(rt.assignments) > 0:
                self._finish_job(rt)
            return
        v.wall_time_ns = v.wall_time_ns or self.clock.wall_ns()
        v.incarnation = rt.job.incarnation
        if v.kind is VerdictKind.RANK_FROZEN and v.evidence.get("proc_status") not in STOPPED_STATES:
            # From one node a rank waiting for a frozen peer looks frozen too: the culprit is the
            # rank that alignment across every node puts behind.
            named = rt.diagnoser.arbitrate(self.clock.mono_s(), v.wall_time_ns)
            for n in named:
                n.evidence["agent_verdict"] = v.reason
            if named or rt.diagnoser.hang_culprit_named():
                self._add_verdicts(rt, named)
                return
        self._add_verdicts(rt, [v])

    def command_done(self, outcome: CommandOutcome) -> None:
        """An agent finished a command."""
        with self._lock:
            rt = self._jobs.get(outcome.job_id)
            if rt is not None:
                self.executor.on_done(rt, outcome)

    # --- the tick -----------------------------------------------------------------------------
    def tick(self) -> None:
        """Leases, diagnosis, policy and the executor for every job; called periodically."""
        with self._lock:
            for rt in list(self._jobs.values()):
                self._tick_job(rt)

    def _tick_job(self, rt: JobRuntime) -> None:
        now = self.clock.mono_s()
        self._expire_leases(rt, now)
        if rt.recovery is not None:
            self.executor.poll(rt)
        elif rt.job.state is JobState.PENDING:
            self._maybe_start(rt, now)
        elif rt.job.state is JobState.RUNNING:
            self._add_verdicts(rt, rt.diagnoser.evaluate(now, self.clock.wall_ns()))
            self._probe_tick(rt, now)
            self._decide(rt)
        self._persist(rt, now)

    def _expire_leases(self, rt: JobRuntime, now: float) -> None:
        stalled_s = now - rt.last_tick_s if rt.last_tick_s else 0.0
        rt.last_tick_s = now
        if stalled_s > max(1.0, 4 * self.config.tick_interval_s):
            # The coordinator itself did not run (a long call, GC, a paused process): heartbeats
            # may be waiting unprocessed, so lapsed time is not the agents' silence. Without this,
            # one 9 s stall at 128 nodes declared 93 healthy nodes lost and shrank the job.
            for node_id in rt.lease_deadline_s:
                rt.lease_deadline_s[node_id] += stalled_s
        for node_id, deadline in list(rt.lease_deadline_s.items()):
            node = rt.nodes[node_id]
            if now < deadline or node.state in (NodeState.LOST, NodeState.ISOLATED):
                continue
            try:
                self.store.set_node_state(
                    rt.job.job_id, node_id, NodeState.LOST, incarnation=rt.job.incarnation
                )
            except StaleIncarnation:
                continue
            was = node.state
            node.state = NodeState.LOST
            self._event(rt, "node", f"{node_id} lost: no heartbeat for {self.config.lease_ttl_s:.1f}s")
            if was is NodeState.ALIVE and node_id in rt.world_nodes():
                verdict = Verdict(
                    kind=VerdictKind.NODE_LOST,
                    node_id=node_id,
                    reason=f"agent of {node_id} silent for {self.config.lease_ttl_s:.1f}s: lease expired",
                    evidence={"lease_ttl_s": str(self.config.lease_ttl_s)},
                    wall_time_ns=self.clock.wall_ns(),
                    incarnation=rt.job.incarnation,
                )
                self._add_verdicts(rt, [verdict])

    def _maybe_start(self, rt: JobRuntime, now: float) -> None:
        alive = [n for n in rt.nodes.values() if n.state is NodeState.ALIVE]
        if (
            len(alive) < self.config.start_min_nodes
            or now - rt.last_registration_s < self.config.start_settle_s
        ):
            return
        multiple = max(self.config.policy.world_multiple, 1)
        world = sum(n.nproc for n in alive)
        world -= world % multiple
        if world < max(self.config.policy.min_world_size, 1):
            return
        self.executor.begin_initial(rt, world)

    def _decide(self, rt: JobRuntime) -> None:
        if not rt.verdicts:
            return
        if all(policy.is_collateral_candidate(v) for v in rt.verdicts):
            # Peers of a killed rank or of a lost node exit with an error code before the real cause
            # is known (the lease takes lease_ttl_s to expire): wait that long for it to surface.
            oldest_s = min(v.wall_time_ns for v in rt.verdicts) / 1e9
            if self.clock.wall_ns() / 1e9 - oldest_s < self.config.collateral_grace_s:
                return
        state = policy.State(
            job_state=rt.job.state,
            world_size=rt.job.world_size,
            nodes=[
                policy.NodeView(node_id=n.node_id, state=n.state, nproc=n.nproc) for n in rt.nodes.values()
            ],
            verdicts=list(rt.verdicts),
            history=list(rt.history),
        )
        action, reason = policy.decide(self.clock.wall_ns(), state, self.config.policy)
        rt.verdicts.clear()
        if action.kind is not ActionKind.NONE:
            self.executor.begin(rt, action, reason)

    def _add_verdicts(self, rt: JobRuntime, verdicts: list[Verdict]) -> None:
        if not verdicts:
            return
        try:
            self.store.append_diagnoses(rt.job.job_id, verdicts, incarnation=rt.job.incarnation)
        except StaleIncarnation:
            return
        for v in verdicts:
            log.warning(
                "verdict job=%s kind=%s node=%s rank=%d reason=%s",
                rt.job.job_id,
                v.kind.name,
                v.node_id,
                v.rank,
                v.reason,
            )
            self._event(rt, "verdict", f"{v.kind.name} node={v.node_id or '-'} rank={v.rank}: {v.reason}")
        rt.verdicts.extend(verdicts)

    # --- probe --------------------------------------------------------------------------------
    def _probe_tick(self, rt: JobRuntime, now: float) -> None:
        slow = [v for v in rt.verdicts if v.kind is VerdictKind.COMM_SLOW and not v.node_id]
        if slow and rt.probe is None:
            peers = rt.world_nodes()
            port = self.config.executor.master_port or executor.free_port()
            ids = {}
            for group in _probe_groups(peers, self.config.probe_group_nodes):
                body = RunProbeBody(
                    peers=group, master_addr=rt.nodes[group[0]].address or "127.0.0.1", master_port=port
                )
                for node in group:
                    cid = f"probe-{node}-{int(now * 1000)}"
                    command = CommandData(
                        command_id=cid, job_id=rt.job.job_id, incarnation=rt.job.incarnation, body=body
                    )
                    self._sink.send(node, command)
                    ids[cid] = node
            rt.probe = ProbeRun(
                command_ids=ids,
                peers=peers,
                cells={},
                deadline_s=now + self.config.probe_timeout_s,
                index={node: i for i, node in enumerate(peers)},
            )
            self._event(rt, "probe", f"pairwise probe over {len(peers)} nodes: {slow[0].reason}")
        if rt.probe is not None and now >= rt.probe.deadline_s:
            self._finish_probe(rt)

    def _take_probe(self, rt: JobRuntime, rep: NodeReportData) -> None:
        probe, data = rt.probe, rep.probe
        assert probe is not None and data is not None
        n = len(data.peers)
        # Peer positions by dict: list.index per cell made one answer O(n^3) (9 s at 128 nodes).
        at = [probe.index.get(p, -1) for p in data.peers]
        for idx, d in enumerate(data.delay_s):
            src, dst = at[idx // n], at[idx % n]
            if d >= 0 and src >= 0 and dst >= 0:
                probe.cells[(src, dst)] = d
        probe.command_ids.pop(data.command_id, None)
        if not probe.command_ids:
            self._finish_probe(rt)

    def _finish_probe(self, rt: JobRuntime) -> None:
        probe = rt.probe
        assert probe is not None
        rt.probe = None
        finding = localize_probe_cells(probe.peers, probe.cells)
        if finding.kind == "none":
            self._event(rt, "probe", finding.reason)
            return
        verdict = Verdict(
            kind=VerdictKind.COMM_SLOW,
            node_id=finding.node_id,
            reason=finding.reason,
            evidence={"probe": finding.kind, "src": finding.src, "dst": finding.dst},
            wall_time_ns=self.clock.wall_ns(),
            incarnation=rt.job.incarnation,
        )
        self._add_verdicts(rt, [verdict])

    # --- bookkeeping ----------------------------------------------------------------------------
    def _finish_job(self, rt: JobRuntime) -> None:
        try:
            self.store.set_job_state(rt.job.job_id, JobState.FINISHED, incarnation=rt.job.incarnation)
        except StaleIncarnation:
            return
        rt.job.state = JobState.FINISHED
        rt.exit_code = 0
        self._event(rt, "finished", f"every rank of incarnation {rt.job.incarnation} exited 0")

    def _persist(self, rt: JobRuntime, now: float) -> None:
        if now - rt.last_persist_s < self.config.persist_interval_s:
            return
        rt.last_persist_s = now
        wall = self.clock.wall_ns()
        expiries = {n: wall + int((d - now) * 1e9) for n, d in rt.lease_deadline_s.items()}
        try:
            self.store.renew_leases(rt.job.job_id, expiries, incarnation=rt.job.incarnation)
            self.store.set_job_step(rt.job.job_id, rt.job.step, incarnation=rt.job.incarnation)
        except StaleIncarnation:
            self.executor._abandon(rt, "persist")

    def _load(self, job: JobRecord) -> JobRuntime:
        """Rebuilds a job's runtime from the store (first registration, or a coordinator restart).
        Known nodes get a fresh lease from now: their agents re-register or expire."""
        rt = JobRuntime(job=job, diagnoser=Diagnoser(self.config.diagnosis))
        now = self.clock.mono_s()
        for node in self.store.list_nodes(job.job_id):
            rt.nodes[node.node_id] = node
            if node.state in (NodeState.ALIVE, NodeState.SPARE):
                rt.lease_deadline_s[node.node_id] = now + self.config.lease_ttl_s
        rt.assignments = self.store.assignments(job.job_id, job.incarnation)
        rt.history.extend(reversed(self.store.recent_actions(job.job_id, rt.history.maxlen or 0)))
        rt.diagnoser.reset(
            incarnation=job.incarnation, rank_nodes={a.rank: a.node_id for a in rt.assignments}
        )
        if job.state is JobState.RECOVERING:
            rt.job.state = JobState.RUNNING  # an interrupted recovery is decided again from scratch
            rt.verdicts.append(
                Verdict(
                    kind=VerdictKind.HANG_COMM, reason="coordinator restarted during a recovery; restarting"
                )
            )
        self._jobs[job.job_id] = rt
        return rt

    def _event(self, rt: JobRuntime, kind: str, detail: str) -> None:
        rt.timeline.append(TimelineEvent(wall_ns=self.clock.wall_ns(), kind=kind, detail=detail))
        log.info("event job=%s kind=%s %s", rt.job.job_id, kind, detail)

    # --- admin --------------------------------------------------------------------------------
    def status(self, job_id: str = "", recent: int = 10) -> list[JobStatus]:
        """Jobs (one or all) with nodes, ranks, recent diagnoses, actions and timeline."""
        with self._lock:
            now = self.clock.mono_s()
            out = []
            for rt in sorted(self._jobs.values(), key=lambda r: r.job.job_id):
                if job_id and rt.job.job_id != job_id:
                    continue
                nodes = [
                    NodeStatus(record=n, lease_left_s=max(0.0, rt.lease_deadline_s.get(n.node_id, now) - now))
                    for n in sorted(rt.nodes.values(), key=lambda n: n.node_id)
                ]
                out.append(
                    JobStatus(
                        job=rt.job,
                        nodes=nodes,
                        ranks=[rt.ranks[r] for r in sorted(rt.ranks)],
                        diagnoses=self.store.recent_diagnoses(rt.job.job_id, recent),
                        actions=self.store.recent_actions(rt.job.job_id, recent),
                        timeline=list(rt.timeline),
                    )
                )
            return out

    def exit_code(self, job_id: str) -> int | None:
        """0 when the job finished, EXIT_STOP_NO_REQUEUE when kedge gave up, None while it runs."""
        with self._lock:
            rt = self._jobs.get(job_id)
            return None if rt is None else rt.exit_code


def _probe_groups(peers: list[str], size: int) -> list[list[str]]:
    """Consecutive rings of `size` nodes; a last ring of one node joins the previous one."""
    size = max(2, size)
    groups = [peers[i : i + size] for i in range(0, len(peers), size)]
    if len(groups) > 1 and len(groups[-1]) < 2:
        groups[-2].extend(groups.pop())
    return groups
