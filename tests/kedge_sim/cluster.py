"""Simulated nodes, ranks and agents: what each agent would read and send at a given virtual time.

The job's timeline (`workload.StepGenerator`) is global and vectorized over ranks; an agent's report
samples the slice of its node's ranks at its own report time. Each node has its own monotonic clock
offset (hosts boot at different times), so only same-node differences of monotonic times are
meaningful, as on a real cluster.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from kedge_sim.faults import Fault, FaultKind
from kedge_sim.workload import INF, StepGenerator, StepTimes, WorkloadConfig

GROUP = "world"
_KEEP_STEPS = 4


@dataclass(slots=True)
class RankSample:
    """One rank's progress page and process state as its agent reads them."""

    rank: int
    local_rank: int
    state: str  # running | exited
    proc_status: str  # psutil status
    exit_code: int
    signal: int
    step: int
    step_time_s: float
    heartbeat_mono_ns: int
    last_enqueued_seq: int
    last_started_seq: int
    last_completed_seq: int
    enqueued_mono_ns: int
    started_mono_ns: int
    completed_mono_ns: int


@dataclass(slots=True)
class CollectiveSample:
    """One completed (or pending) collective of one rank, as Flight Recorder would list it."""

    rank: int
    seq: int
    step: int
    enqueue_mono_ns: int
    start_mono_ns: int
    complete_mono_ns: int  # 0 while pending


@dataclass(slots=True)
class AgentVerdict:
    """A verdict the agent reaches locally (process exit, NVML XID)."""

    kind: str  # rank_died | gpu_fault
    rank: int
    gpu_index: int
    reason: str
    evidence: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class NodeSample:
    """Everything one agent report carries."""

    node_id: str
    wall_time_ns: int
    ranks: list[RankSample]
    collectives: list[CollectiveSample]
    verdicts: list[AgentVerdict]
    step_timings: list[tuple[int, int, float, int]]  # (rank, step, duration_s, end_mono_ns)
    xids: dict[int, list[int]]  # gpu index -> recent critical XIDs


def node_id(index: int) -> str:
    return f"node-{index:05d}"


class Timeline:
    """The job's steps as they are generated; keeps the last few for sampling."""

    def __init__(self, gen: StepGenerator, start_s: float) -> None:
        self.gen = gen
        self.steps: deque[StepTimes] = deque(maxlen=_KEEP_STEPS)
        self.steps.append(gen.step(1, start_s))

    def advance_to(self, t_s: float) -> None:
        last = self.steps[-1]
        while last.end_s < INF:
            next_start = last.end_s + self.gen.pause_after(last.step)
            if next_start > t_s:
                return
            last = self.gen.step(last.step + 1, next_start)
            self.steps.append(last)

    def at(self, t_s: float) -> tuple[StepTimes, StepTimes | None]:
        """The latest step started by `t_s`, and the one before it."""
        self.advance_to(t_s)
        for i in range(len(self.steps) - 1, -1, -1):
            if self.steps[i].start_s <= t_s or i == 0:
                return self.steps[i], self.steps[i - 1] if i > 0 else None
        raise AssertionError("unreachable")

    def regenerate_from(self, t_s: float) -> None:
        """Recomputes the step in flight at `t_s` after a stop fault (its past stays the same)."""
        last = self.steps[-1]
        if last.end_s > t_s:
            self.gen.replay(last)


class Cluster:
    """Nodes of `gpus_per_node` ranks each, one job over all of them, faults applied to the timeline."""

    def __init__(
        self,
        *,
        nodes: int,
        gpus_per_node: int,
        workload: WorkloadConfig,
        rng: np.random.Generator,
        start_s: float = 0.0,
    ) -> None:
        self.nodes = nodes
        self.gpn = gpus_per_node
        self.ranks = nodes * gpus_per_node
        self.config = workload
        self.rng = rng
        self.gen = StepGenerator(workload, self.ranks, rng)
        self.timeline = Timeline(self.gen, start_s)
        self.mono_offset_ns = rng.integers(10**12, 10**15, size=nodes)
        self.node_lost = np.zeros(nodes, dtype=bool)
        self.dead_at_s = np.full(self.ranks, INF)
        self.exit_signal = np.zeros(self.ranks, dtype=np.int32)
        self.xids: dict[int, dict[int, list[int]]] = {}
        self.pending_verdicts: dict[int, list[AgentVerdict]] = {}
        self.last_sent_seq = np.zeros(self.ranks, dtype=np.int64)
        self.last_sent_step = np.zeros(nodes, dtype=np.int64)
        self.faults: list[Fault] = []
        self.max_collectives_per_rank = 4

    # --- faults -----------------------------------------------------------------------------

    def inject(self, fault: Fault) -> None:
        """Applies `fault` at `fault.at_s` (the caller schedules it at that virtual time)."""
        self.faults.append(fault)
        t = fault.at_s
        kind = fault.kind
        if kind in (FaultKind.RANK_DIED, FaultKind.RANK_FROZEN):
            self.gen.stop_at_s[fault.rank] = t
            if kind is FaultKind.RANK_DIED:
                self._die(fault.node, fault.rank, t, signal=6, reason="process exited: SIGABRT")
        elif kind is FaultKind.GPU_XID:
            xid = int(self.rng.choice([48, 79, 94, 95]))
            self.xids.setdefault(fault.node, {}).setdefault(fault.gpu_index, []).append(xid)
            self.gen.stop_at_s[fault.rank] = t
            self._queue_verdict(
                fault.node,
                AgentVerdict(
                    "gpu_fault", fault.rank, fault.gpu_index, f"critical XID {xid}", {"xid": str(xid)}
                ),
            )
            self._die(fault.node, fault.rank, t, signal=0, reason=f"CUDA error after XID {xid}")
        elif kind is FaultKind.STRAGGLER:
            self.gen.slow_factor[fault.rank] = fault.slow_factor
        elif kind is FaultKind.COMM_SLOW:
            self.gen.comm_factor = fault.slow_factor
        elif kind is FaultKind.COMM_HANG:
            self.gen.link_down_at_s = t
        elif kind is FaultKind.NODE_LOSS:
            self.node_lost[fault.node] = True
            lo = fault.node * self.gpn
            self.gen.stop_at_s[lo : lo + self.gpn] = t
        self.timeline.regenerate_from(t)

    def _die(self, node: int, rank: int, t: float, *, signal: int, reason: str) -> None:
        self.dead_at_s[rank] = t
        self.exit_signal[rank] = signal
        self._queue_verdict(
            node,
            AgentVerdict(
                "rank_died",
                rank,
                -1,
                reason,
                {"signal": str(signal), "exit_code": "1" if not signal else "0"},
            ),
        )

    def _queue_verdict(self, node: int, verdict: AgentVerdict) -> None:
        self.pending_verdicts.setdefault(node, []).append(verdict)

    def has_urgent(self, node: int) -> bool:
        """True when the node's agent holds a verdict it sends at once (not with the summary)."""
        return bool(self.pending_verdicts.get(node))

    # --- sampling ---------------------------------------------------------------------------

    def sample(self, node: int, t_s: float) -> NodeSample:
        """What node `node`'s agent reports at `t_s`: progress pages, new collectives, verdicts."""
        st, prev = self.timeline.at(t_s)
        off = int(self.mono_offset_ns[node])
        lo, hi = node * self.gpn, (node + 1) * self.gpn
        ranks = self._rank_samples(lo, hi, st, prev, t_s, off)
        collectives = self._collectives(lo, hi, st, prev, t_s, off)
        verdicts = self.pending_verdicts.pop(node, [])
        timings = self._step_timings(node, lo, hi, st, prev, t_s, off)
        return NodeSample(
            node_id(node),
            int(t_s * 1e9),
            ranks,
            collectives,
            verdicts,
            timings,
            dict(self.xids.get(node, {})),
        )

    def _rank_samples(
        self, lo: int, hi: int, st: StepTimes, prev: StepTimes | None, t: float, off: int
    ) -> list[RankSample]:
        """The progress pages of ranks lo..hi-1 at `t` (vectorized over the node's ranks)."""
        cols = self.config.collectives_per_step
        arrive = st.arrive_s[lo:hi]
        n_enq = np.count_nonzero(arrive <= t, axis=1)
        n_done = np.minimum(n_enq, int(np.count_nonzero(st.done_s <= t)))
        idx = np.arange(hi - lo)
        prev_arrive = prev.arrive_s[lo:hi, -1] if prev is not None else np.full(hi - lo, st.start_s)
        prev_done = float(prev.done_s[-1]) if prev is not None else st.start_s
        enq_s = np.where(n_enq > 0, arrive[idx, np.maximum(n_enq - 1, 0)], prev_arrive)
        done_s = np.where(n_done > 0, st.done_s[np.maximum(n_done - 1, 0)], prev_done)
        step_over = int(np.count_nonzero(st.done_s <= t)) == cols
        step_time = st.end_s - st.start_s if step_over else (prev.end_s - prev.start_s if prev else 0.0)
        base = (st.step - 1) * cols
        dead = (self.dead_at_s[lo:hi] <= t).tolist()
        sig = self.exit_signal[lo:hi].tolist()
        enq_ns = _ns_array(enq_s, off)
        done_ns = _ns_array(done_s, off)
        step = st.step if step_over else st.step - 1
        out = []
        for i, (ne, nd, en, dn, d, sg) in enumerate(
            zip(n_enq.tolist(), n_done.tolist(), enq_ns, done_ns, dead, sig, strict=True)
        ):
            out.append(
                RankSample(
                    rank=lo + i,
                    local_rank=i,
                    state="exited" if d else "running",
                    proc_status="zombie" if d else "running",
                    exit_code=0 if sg else 1,
                    signal=sg if d else 0,
                    step=step,
                    step_time_s=step_time,
                    heartbeat_mono_ns=max(en, dn),
                    last_enqueued_seq=base + ne,
                    last_started_seq=base + ne,
                    last_completed_seq=base + nd,
                    enqueued_mono_ns=en,
                    started_mono_ns=en,
                    completed_mono_ns=dn,
                )
            )
        return out

    def _collectives(
        self, lo: int, hi: int, st: StepTimes, prev: StepTimes | None, t: float, off: int
    ) -> list[CollectiveSample]:
        """Collectives enqueued since the last report, newest `max_collectives_per_rank` per rank."""
        cols = self.config.collectives_per_step
        parts = [p for p in (prev, st) if p is not None]
        arrive = np.concatenate([p.arrive_s[lo:hi] for p in parts], axis=1)
        done = np.concatenate([p.done_s for p in parts])
        seq = np.concatenate([np.arange(1, cols + 1) + (p.step - 1) * cols for p in parts])
        step = np.concatenate([np.full(cols, p.step) for p in parts])
        sent = self.last_sent_seq[lo:hi]
        fresh = (arrive <= t) & (arrive > -INF) & (seq[None, :] > sent[:, None])
        completed = fresh & (done[None, :] <= t)
        any_done = completed.any(axis=1)
        newest = np.where(completed, seq[None, :], 0).max(axis=1)
        sent[any_done] = newest[any_done]  # pending ones are sent again until they complete
        out: list[CollectiveSample] = []
        keep = self.max_collectives_per_rank
        for i, row in enumerate(fresh):
            js = np.flatnonzero(row)[-keep:]
            for j in js.tolist():
                a = _ns(float(arrive[i, j]), off)
                d = float(done[j])
                out.append(
                    CollectiveSample(lo + i, int(seq[j]), int(step[j]), a, a, _ns(d, off) if d <= t else 0)
                )
        return out

    def _step_timings(
        self, node: int, lo: int, hi: int, st: StepTimes, prev: StepTimes | None, t: float, off: int
    ) -> list[tuple[int, int, float, int]]:
        finished = st if st.end_s <= t else prev
        if finished is None or finished.step <= self.last_sent_step[node]:
            return []
        self.last_sent_step[node] = finished.step
        dur = finished.end_s - finished.start_s
        end = _ns(finished.end_s, off)
        return [(r, finished.step, dur, end) for r in range(lo, hi) if self.dead_at_s[r] > t]


def _ns_array(t_s: np.ndarray, offset_ns: int) -> list[int]:
    finite = np.isfinite(t_s)
    return np.where(finite, offset_ns + (np.where(finite, t_s, 0.0) * 1e9).astype(np.int64), 0).tolist()


def _ns(t_s: float, offset_ns: int) -> int:
    if t_s in (INF, -INF):
        return 0
    return offset_ns + int(t_s * 1e9)
