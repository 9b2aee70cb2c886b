"""C4-style diagnosis as pure code: rank progress and collective timings in, verdicts out.

No sockets, no threads, no wall clock: callers pass `now_s` (any monotonic clock of the
coordinator), so the same code runs under the gRPC server and under the simulator's virtual clock.

What it classifies (DESIGN.md, Telemetry and diagnosis):

- hang: no rank has made progress (step, enqueued or completed collective) for longer than the
  adaptive threshold while some collective is pending. Aligning the ranks by (group, sequence):
  ranks whose last enqueued sequence is below the group's maximum never enqueued collective k and
  are the culprits (HANG_NON_COMM: a frozen, stopped, GIL-held or desynchronised rank); if every
  rank enqueued k and none completed it, the fault is between them (HANG_COMM).
- straggler: for each collective every rank reported, the rank whose own duration is shortest
  arrived last (everyone else waited for it). A rank that is last in most of a window of
  collectives with a wait that matters relative to the step time is a STRAGGLER.
- communication slow: the shortest duration of a collective (the part nobody waited for) grows well
  above the job's own baseline on every rank: COMM_SLOW, to be localized by a pairwise probe
  (`localize_probe`).

Thresholds come from the job's rhythm: rolling median step time and the longest stall the job
recovered from by itself (checkpoint, eval and GC pauses). A verdict is reported only after it held
for `persistence` consecutive evaluations. Cost per evaluation is O(ranks x groups); per collective
sample O(1) amortised; memory bounded by `max_pending_collectives` and the windows.
"""

from __future__ import annotations

import statistics
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from kedge.coordinator.model import CollectiveSample, RankSnapshot, StepSample, Verdict, VerdictKind


@dataclass(kw_only=True, slots=True)
class Config:
    """Diagnosis thresholds; the adaptive parts scale with the job's own rhythm."""

    hang_min_s: float = 4.0
    """No hang verdict before this much silence, whatever the rhythm says."""
    hang_max_s: float = 120.0
    """Cap of the adaptive hang threshold."""
    hang_step_factor: float = 10.0
    """Hang threshold is at least this many median step times."""
    hang_pause_factor: float = 1.5
    """...and at least this times the longest stall the job recovered from by itself."""
    persistence: int = 2
    """Consecutive evaluations a candidate verdict must hold before it is reported."""
    straggler_window: int = 12
    """Aligned collectives a straggler verdict looks back over."""
    straggler_share: float = 0.75
    """Share of the window in which the same rank must arrive last."""
    straggler_min_wait_frac: float = 0.1
    """Others' wait for the last rank must be at least this fraction of the median step time (0.1:
    a rank ~1.11x slower; the goal is >= 1.2x, and below ~1.1x a rank that merely syncs for logging
    was named on a healthy 2-GPU NCCL job)."""
    comm_slow_factor: float = 3.0
    """Collective time on every rank above this times the baseline is communication slow."""
    comm_slow_min_s: float = 0.005
    """...and above the baseline by at least this much (tiny collectives jitter a lot)."""
    comm_baseline_samples: int = 20
    """Aligned collectives that form the communication baseline."""
    max_pending_collectives: int = 256
    """Collectives waiting for the other ranks' samples (oldest dropped beyond)."""
    step_window: int = 200
    """Step durations kept for the rolling median."""


@dataclass(slots=True)
class _RankView:
    snapshot: RankSnapshot
    progress_key: tuple[int, ...]
    last_progress_s: float


@dataclass(slots=True)
class _Pending:
    durations: dict[int, float] = field(default_factory=dict)
    enqueued_ns: dict[int, int] = field(default_factory=dict)


class Diagnoser:
    """Per-job diagnosis state for one incarnation; `reset` on every new world."""

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()
        self._world_size = 0
        self._rank_node: dict[int, str] = {}
        self._ranks: dict[int, _RankView] = {}
        self._steps: deque[float] = deque(maxlen=self.config.step_window)
        self._pending: OrderedDict[tuple[str, int], _Pending] = OrderedDict()
        self._last_arrivals: deque[tuple[int, float]] = deque(maxlen=self.config.straggler_window)
        self._comm_baseline: list[float] = []
        self._comm_recent: deque[float] = deque(maxlen=self.config.straggler_window)
        self._longest_benign_stall_s = 0.0
        self._stall_started_s: float | None = None
        self._streak: Counter[tuple[VerdictKind, int]] = Counter()
        self._reported: set[tuple[VerdictKind, int]] = set()
        self._incarnation = 0
        self._ops: OrderedDict[tuple[str, int], dict[int, str]] = OrderedDict()
        self._named: set[tuple[VerdictKind, int]] = set()  # culprits named by arbitrate, this incarnation

    def reset(self, *, incarnation: int, rank_nodes: Mapping[int, str]) -> None:
        """Starts a new world: forget rank progress and pending verdicts, keep the job's rhythm."""
        self._incarnation = incarnation
        self._world_size = len(rank_nodes)
        self._rank_node = dict(rank_nodes)
        self._ranks.clear()
        self._pending.clear()
        self._ops.clear()
        self._named.clear()
        self._last_arrivals.clear()
        self._comm_recent.clear()
        self._streak.clear()
        self._reported.clear()
        self._stall_started_s = None

    # --- input ----------------------------------------------------------------------------------
    def observe_ranks(self, now_s: float, snapshots: Iterable[RankSnapshot]) -> None:
        """Latest per-rank state from a node report; progress is timed by the coordinator's clock."""
        for snap in snapshots:
            if snap.incarnation not in (0, self._incarnation) or snap.rank not in self._rank_node:
                continue
            key = _progress_key(snap)
            view = self._ranks.get(snap.rank)
            if view is None or view.progress_key != key:
                self._ranks[snap.rank] = _RankView(snap, key, now_s)
            else:
                view.snapshot = snap

    def observe_steps(self, samples: Iterable[StepSample]) -> None:
        """Step durations feed the job's rhythm (rolling median)."""
        self._steps.extend(s.duration_s for s in samples if s.duration_s > 0)

    def observe_collectives(self, samples: Iterable[CollectiveSample]) -> None:
        """Completed collectives; once every rank reported one (group, seq) it is aligned."""
        for s in samples:
            if s.rank not in self._rank_node:
                continue
            ops = self._ops.setdefault((s.group, s.seq), {})
            ops[s.rank] = s.op
            if len(self._ops) > self.config.max_pending_collectives:
                self._ops.popitem(last=False)
            pending = self._pending.setdefault((s.group, s.seq), _Pending())
            pending.durations[s.rank] = s.duration_s
            pending.enqueued_ns[s.rank] = s.enqueue_ns
            if len(pending.durations) == self._world_size:
                del self._pending[(s.group, s.seq)]
                durations = _durations(pending, self.median_step_s())
                if durations is not None:
                    self._align(durations)
            while len(self._pending) > self.config.max_pending_collectives:
                self._pending.popitem(last=False)

    def _align(self, durations: dict[int, float]) -> None:
        if len(durations) < 2:
            return
        ordered = sorted(durations.items(), key=lambda kv: kv[1])
        last_rank, shortest = ordered[0]
        others = statistics.median(d for r, d in ordered[1:])
        self._last_arrivals.append((last_rank, others - shortest))
        if len(self._comm_baseline) < self.config.comm_baseline_samples:
            self._comm_baseline.append(shortest)
        else:
            self._comm_recent.append(shortest)

    # --- rhythm ---------------------------------------------------------------------------------
    def median_step_s(self) -> float:
        """Rolling median step duration, 0 before the first step."""
        return statistics.median(self._steps) if self._steps else 0.0

    def hang_threshold_s(self) -> float:
        """Silence that makes a hang: adaptive to step time and to the job's own benign pauses."""
        c = self.config
        adaptive = max(
            c.hang_step_factor * self.median_step_s(), c.hang_pause_factor * self._longest_benign_stall_s
        )
        return min(c.hang_max_s, max(c.hang_min_s, adaptive))

    # --- evaluation -----------------------------------------------------------------------------
    def evaluate(self, now_s: float, wall_time_ns: int = 0) -> list[Verdict]:
        """Candidate verdicts of this moment, reported once each after `persistence` evaluations."""
        candidates = [*self._hang_candidates(now_s), *self._straggler_candidates(), *self._comm_candidates()]
        keys = {(v.kind, v.rank) for v in candidates}
        for key in list(self._streak):
            if key not in keys:
                del self._streak[key]
                self._reported.discard(key)
        confirmed = []
        for v in candidates:
            key = (v.kind, v.rank)
            self._streak[key] += 1
            if self._streak[key] >= self.config.persistence and key not in self._reported | self._named:
                self._reported.add(key)
                v.wall_time_ns, v.incarnation = wall_time_ns, self._incarnation
                confirmed.append(v)
        return confirmed

    def arbitrate(self, now_s: float, wall_time_ns: int = 0) -> list[Verdict]:
        """An agent found a rank's progress stale (its own adaptive threshold already passed), but
        from one node a rank waiting for a peer looks the same as the frozen peer. Name the culprits
        now by aligning every rank; [] when alignment cannot tell (telemetry missing, or every rank
        is equal). Culprits named here are not reported again by `evaluate`."""
        if len(self._ranks) < self._world_size or not self._ranks:
            return []
        silence_s = now_s - max(v.last_progress_s for v in self._ranks.values())
        named = []
        for group in sorted({g for v in self._ranks.values() for g in v.snapshot.groups}):
            for v in self._classify_group(group, silence_s):
                key = (v.kind, v.rank)
                if v.kind is VerdictKind.HANG_NON_COMM and key not in self._reported | self._named:
                    self._named.add(key)
                    v.wall_time_ns, v.incarnation = wall_time_ns, self._incarnation
                    named.append(v)
        return named

    def hang_culprit_named(self) -> bool:
        """Whether this incarnation already has a non-communication hang culprit."""
        return bool(self._named) or any(kind is VerdictKind.HANG_NON_COMM for kind, _ in self._reported)

    def _hang_candidates(self, now_s: float) -> list[Verdict]:
        if len(self._ranks) < self._world_size or not self._ranks:
            return []
        last_progress_s = max(v.last_progress_s for v in self._ranks.values())
        silence_s = now_s - last_progress_s
        stalled = silence_s >= self.hang_threshold_s()
        self._track_stall(now_s, last_progress_s)
        if not stalled:
            return []
        out: list[Verdict] = []
        for group in sorted({g for v in self._ranks.values() for g in v.snapshot.groups}):
            out += self._classify_group(group, silence_s)
        return out

    def _track_stall(self, now_s: float, last_progress_s: float) -> None:
        """Stalls that end on their own are the job's benign pauses; remember the longest."""
        median = self.median_step_s()
        quiet = now_s - last_progress_s > max(1.0, 3 * median)
        if quiet and self._stall_started_s is None:
            self._stall_started_s = last_progress_s
        elif not quiet and self._stall_started_s is not None:
            if not self._reported:
                length = last_progress_s - self._stall_started_s
                self._longest_benign_stall_s = max(self._longest_benign_stall_s, length)
            self._stall_started_s = None

    def _classify_group(self, group: str, silence_s: float) -> list[Verdict]:
        progress = {r: v.snapshot.groups.get(group) for r, v in self._ranks.items()}
        enq = {r: (p.last_enqueued_seq if p else 0) for r, p in progress.items()}
        done = {r: (p.last_completed_seq if p else 0) for r, p in progress.items()}
        top = max(enq.values())
        if all(done[r] >= enq[r] for r in enq):
            return []  # nothing pending in this group: everyone is computing
        behind = sorted(r for r, e in enq.items() if e < top)
        evidence = {"group": group, "seq": str(top), "silence_s": f"{silence_s:.1f}"}
        if behind:
            return [
                Verdict(
                    kind=VerdictKind.HANG_NON_COMM,
                    rank=r,
                    node_id=self._rank_node.get(r, ""),
                    reason=f"rank {r} never enqueued {group}#{top} (last {enq[r]}); others wait {silence_s:.1f}s",
                    evidence={**evidence, "rank_last_enqueued": str(enq[r]), **self._state_evidence(r)},
                )
                for r in behind
            ]
        odd = self._odd_ops(group, top)
        if odd:
            return [
                Verdict(
                    kind=VerdictKind.HANG_NON_COMM,
                    rank=r,
                    node_id=self._rank_node.get(r, ""),
                    reason=f"rank {r} desynchronised: issued {op} as {group}#{top} where the others issued {common}",
                    evidence={**evidence, "op": op, "others_op": common, **self._state_evidence(r)},
                )
                for r, op, common in odd
            ]
        return [
            Verdict(
                kind=VerdictKind.HANG_COMM,
                reason=f"every rank enqueued {group}#{top}, none completed it for {silence_s:.1f}s",
                evidence=evidence,
            )
        ]

    def _odd_ops(self, group: str, seq: int) -> list[tuple[int, str, str]]:
        """Ranks whose collective #seq is a different op than the majority's (a desync: one rank
        skipped or added a collective, so sequence numbers line up but operations do not)."""
        ops = self._ops.get((group, seq), {})
        if len(ops) < max(self._world_size, 2):
            return []
        common, count = Counter(ops.values()).most_common(1)[0]
        if count == len(ops) or count <= len(ops) // 2:
            return []
        return sorted((r, op, common) for r, op in ops.items() if op != common)

    def _state_evidence(self, rank: int) -> dict[str, str]:
        snap = self._ranks[rank].snapshot
        return {"proc_status": snap.proc_status, "step": str(snap.step)}

    def _straggler_candidates(self) -> list[Verdict]:
        c = self.config
        if len(self._last_arrivals) < c.straggler_window:
            return []
        min_wait_s = c.straggler_min_wait_frac * self.median_step_s()
        counted = [(r, w) for r, w in self._last_arrivals if w >= max(min_wait_s, 1e-4)]
        if not counted:
            return []
        rank, hits = Counter(r for r, _ in counted).most_common(1)[0]
        if hits < c.straggler_share * len(self._last_arrivals):
            return []
        wait_s = statistics.median(w for r, w in counted if r == rank)
        step_s = self.median_step_s()
        slowdown = step_s / (step_s - wait_s) if step_s > wait_s > 0 else float("inf")
        return [
            Verdict(
                kind=VerdictKind.STRAGGLER,
                rank=rank,
                node_id=self._rank_node.get(rank, ""),
                reason=f"rank {rank} arrived last at {hits}/{len(self._last_arrivals)} collectives; "
                f"others wait {wait_s * 1e3:.0f} ms (~{slowdown:.2f}x)",
                evidence={
                    "last_arrivals": str(hits),
                    "wait_s": f"{wait_s:.4f}",
                    "slowdown": f"{slowdown:.2f}",
                },
            )
        ]

    def _comm_candidates(self) -> list[Verdict]:
        c = self.config
        if len(self._comm_baseline) < c.comm_baseline_samples or len(self._comm_recent) < c.straggler_window:
            return []
        base = statistics.median(self._comm_baseline)
        now = statistics.median(self._comm_recent)
        if now < c.comm_slow_factor * base or now - base < c.comm_slow_min_s:
            return []
        return [
            Verdict(
                kind=VerdictKind.COMM_SLOW,
                reason=f"collectives slow on every rank: {now * 1e3:.1f} ms vs baseline {base * 1e3:.1f} ms",
                evidence={"baseline_s": f"{base:.4f}", "recent_s": f"{now:.4f}"},
            )
        ]


def _durations(pending: _Pending, median_step_s: float) -> dict[int, float] | None:
    """Each rank's time in the collective. Measured durations when every rank has one (NCCL);
    otherwise, from enqueue times, how long each rank waited for the last one to arrive. That
    needs a shared clock (ranks of one host, or synchronised clocks): a spread wider than a step
    means the clocks are not comparable, and the collective is not used."""
    if all(d >= 0 for d in pending.durations.values()):
        return pending.durations
    enq = pending.enqueued_ns
    if any(t <= 0 for t in enq.values()):
        return None
    last = max(enq.values())
    spread_s = (last - min(enq.values())) / 1e9
    if median_step_s <= 0 or spread_s > 1.5 * median_step_s:
        return None
    return {r: (last - t) / 1e9 for r, t in enq.items()}


def _progress_key(snap: RankSnapshot) -> tuple[int, ...]:
    key = [snap.step]
    for group in sorted(snap.groups):
        p = snap.groups[group]
        key += [p.last_enqueued_seq, p.last_completed_seq]
    return tuple(key)


@dataclass(frozen=True, slots=True)
class ProbeFinding:
    """Where a pairwise probe puts a communication fault: a node, a link, or nowhere."""

    kind: str  # "node" | "link" | "none"
    node_id: str = ""
    src: str = ""
    dst: str = ""
    reason: str = ""


def localize_probe(peers: list[str], delay_s: list[float], hot_factor: float = 3.0) -> ProbeFinding:
    """Reads a row-major source x destination delay matrix (negative = not measured, e.g. shifts
    left out at scale); see `localize_probe_cells`."""
    n = len(peers)
    if n < 2 or len(delay_s) != n * n:
        return ProbeFinding(kind="none", reason=f"probe matrix has {len(delay_s)} cells for {n} peers")
    cells = {
        (i, j): delay_s[i * n + j] for i in range(n) for j in range(n) if i != j and delay_s[i * n + j] >= 0
    }
    return localize_probe_cells(peers, cells, hot_factor)


def localize_probe_cells(
    peers: list[str], cells: Mapping[tuple[int, int], float], hot_factor: float = 3.0
) -> ProbeFinding:
    """Localizes from the measured cells only ((source, destination) index -> delay), so a probe run
    in groups at scale costs O(cells), not O(peers^2). A node whose sending row or receiving column
    is hot is the culprit; else the hottest cell above the baseline is a link. The baseline is the
    lower quartile of measured cells, robust to one bad node's hot row and column."""
    n = len(peers)
    cells = {k: d for k, d in cells.items() if k[0] != k[1] and d >= 0}
    if n < 2 or not cells:
        return ProbeFinding(kind="none", reason="probe measured nothing")
    values = sorted(cells.values())
    baseline = values[len(values) // 4]
    limit = hot_factor * max(baseline, 1e-6)
    if n > 2:
        node = _hot_node(peers, cells, limit)
        if node is not None:
            return node
    (src, dst), worst = max(cells.items(), key=lambda kv: kv[1])
    if worst <= limit:
        return ProbeFinding(
            kind="none", reason=f"no probe cell above {hot_factor}x baseline {baseline * 1e3:.1f} ms"
        )
    return ProbeFinding(
        kind="link",
        src=peers[src],
        dst=peers[dst],
        reason=f"link {peers[src]}->{peers[dst]} {worst * 1e3:.1f} ms vs baseline {baseline * 1e3:.1f} ms",
    )


def _hot_node(peers: list[str], cells: dict[tuple[int, int], float], limit: float) -> ProbeFinding | None:
    rows: dict[int, list[float]] = {}
    cols: dict[int, list[float]] = {}
    for (i, j), d in cells.items():
        rows.setdefault(i, []).append(d)
        cols.setdefault(j, []).append(d)
    hot = sorted(
        {i for i, ds in rows.items() if statistics.median_low(ds) > limit}
        | {j for j, ds in cols.items() if statistics.median_low(ds) > limit}
    )
    if len(hot) != 1:
        return None
    node = peers[hot[0]]
    return ProbeFinding(kind="node", node_id=node, reason=f"node {node}: its probe row/column is hot")
