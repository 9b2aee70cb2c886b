"""Local verdicts: which rank died, which is frozen, which GPU is faulty or throttling.

Rules (docs/PROGRESS.md explains the page's clocks):
- died: the process exited (non-zero code or a signal) while kedge was not stopping it; found by the
  supervision tick (`tick_s`), so well within a second.
- frozen: (a) the process stays in state T (stopped/traced) for `stopped_persist_s`; or (b) after its
  first step boundary, the rank's *progress* (step marks and collective sequence changes) is stale for
  longer than an adaptive threshold: the p90 of its own recent step durations plus `frozen_margin_s`.
  The threshold adapts to slow steps; a single long pause (GC, checkpoint, eval) shorter than the
  margin never triggers it. A rank that is waiting inside a collective which another local rank has
  not enqueued yet is not called frozen: the one that is behind is the culprit. Heartbeat freshness
  is evidence (GIL held / stopped vs blocked outside Python), not a rule of its own.
- GPU fault: a critical XID, a non-zero recovery action, row-remap failures, or new uncorrected ECC.
- throttling: a hardware slowdown/thermal/power-brake clocks-event reason seen on consecutive polls.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from dataclasses import dataclass, field

from kedge.agent.model import GpuHealth, Verdict, VerdictKind
from kedge.agent.progress_reader import PageSnapshot
from kedge.agent.workers import ADOPTED_GONE, Worker, describe_exit

STEP_WINDOW = 64
HEARTBEAT_STALE_S = 1.0
CRITICAL_XIDS = frozenset({48, 61, 62, 63, 64, 74, 79, 92, 94, 95, 119, 120, 140})
THROTTLE_MASK = 0x8 | 0x20 | 0x40 | 0x80  # HW slowdown, SW thermal, HW thermal, HW power brake
THROTTLE_PERSIST_POLLS = 3
_NS = 1_000_000_000


@dataclass(slots=True)
class RankTrack:
    """What the detector remembers of one rank between ticks."""

    durations_s: deque[float] = field(default_factory=lambda: deque(maxlen=STEP_WINDOW))
    last_step: int = -1
    last_progress_ns: int = 0
    stopped_since_s: float | None = None
    frozen_reported: bool = False

    def threshold_s(self, margin_s: float) -> float:
        """Adaptive staleness threshold: p90 of the rank's own step durations plus the margin."""
        if not self.durations_s:
            return margin_s
        if len(self.durations_s) < 2:
            p90 = self.durations_s[0]
        else:
            p90 = statistics.quantiles(self.durations_s, n=10, method="inclusive")[-1]
        return p90 + margin_s


@dataclass(slots=True)
class Observation:
    """One rank at one tick: its worker, page (if readable) and psutil status."""

    worker: Worker
    page: PageSnapshot | None
    proc_status: str
    returncode: int | None


class Detector:
    """Turns observations into verdicts; remembers per-rank state so each fault is reported once."""

    def __init__(self, *, node_id: str, frozen_margin_s: float, stopped_persist_s: float) -> None:
        self.node_id = node_id
        self.frozen_margin_s = frozen_margin_s
        self.stopped_persist_s = stopped_persist_s
        self.tracks: dict[tuple[int, int], RankTrack] = {}
        self._throttle_polls: dict[int, int] = {}
        self._gpu_reported: set[tuple[int, str]] = set()
        self._ecc_seen: dict[int, int] = {}

    def track(self, worker: Worker) -> RankTrack:
        return self.tracks.setdefault((worker.incarnation, worker.rank), RankTrack())

    def observe_ranks(self, observations: list[Observation], now_ns: int | None = None) -> list[Verdict]:
        now = time.monotonic_ns() if now_ns is None else now_ns
        verdicts = [v for o in observations if (v := self._exit_verdict(o)) is not None]
        verdicts.sort(key=lambda v: _culprit_order(v, observations))
        for obs in observations:
            if obs.returncode is None and not obs.worker.stopping:
                frozen = self._frozen_verdict(obs, observations, now)
                if frozen is not None:
                    verdicts.append(frozen)
        return verdicts

    def _exit_verdict(self, obs: Observation) -> Verdict | None:
        w = obs.worker
        if obs.returncode is None or w.reported_exit:
            return None
        w.reported_exit = True
        if w.stopping:
            return None
        code, sig, words = describe_exit(obs.returncode)
        clean = obs.returncode == 0
        if obs.returncode == ADOPTED_GONE and obs.page is not None and obs.page.closed:
            clean, words = True, "exited cleanly (its page is closed)"
        kind = VerdictKind.RANK_EXITED_OK if clean else VerdictKind.RANK_DIED
        evidence = {"pid": str(w.pid), "exit_code": str(code), "signal": str(sig)}
        if obs.page is not None:
            evidence["last_step"] = str(obs.page.step)
        return self._verdict(kind, w, f"rank {w.rank} (pid {w.pid}) {words}", evidence)

    def _frozen_verdict(self, obs: Observation, all_obs: list[Observation], now_ns: int) -> Verdict | None:
        track = self.track(obs.worker)
        self._update_track(track, obs, now_ns)
        if track.frozen_reported:
            return None
        reason = self._stopped_reason(track, obs) or self._stale_reason(track, obs, all_obs, now_ns)
        if reason is None:
            return None
        track.frozen_reported = True
        return self._verdict(VerdictKind.RANK_FROZEN, obs.worker, reason, _evidence(obs, track, now_ns))

    def _update_track(self, track: RankTrack, obs: Observation, now_ns: int) -> None:
        page = obs.page
        if obs.proc_status == "stopped" or obs.proc_status == "tracing-stop":
            if track.stopped_since_s is None:
                track.stopped_since_s = now_ns / _NS
        else:
            track.stopped_since_s = None
        if page is None:
            return
        if page.step != track.last_step:
            if track.last_step >= 0 and page.step_duration_ns > 0:
                track.durations_s.append(page.step_duration_ns / _NS)
            track.last_step = page.step
        if page.progress_mono_ns != track.last_progress_ns:
            track.last_progress_ns = page.progress_mono_ns
            if track.stopped_since_s is None:
                track.frozen_reported = False  # moving again: a later freeze is a new fault

    def _stopped_reason(self, track: RankTrack, obs: Observation) -> str | None:
        if track.stopped_since_s is None:
            return None
        stopped_s = time.monotonic() - track.stopped_since_s
        if stopped_s < self.stopped_persist_s:
            return None
        w = obs.worker
        return f"rank {w.rank} (pid {w.pid}) frozen: process stopped (state T) for {stopped_s:.1f}s"

    def _stale_reason(
        self, track: RankTrack, obs: Observation, all_obs: list[Observation], now_ns: int
    ) -> str | None:
        page = obs.page
        if page is None or not track.durations_s:
            return None  # before the first full step only death and state T count (startup is long)
        stale_s = (now_ns - page.progress_mono_ns) / _NS
        threshold_s = track.threshold_s(self.frozen_margin_s)
        if stale_s <= threshold_s or _waits_on_local_peer(page, all_obs):
            return None
        w = obs.worker
        alive = (now_ns - page.heartbeat_mono_ns) / _NS < HEARTBEAT_STALE_S
        how = (
            "interpreter alive (heartbeat fresh: a loop, a blocking call or a collective)"
            if alive
            else "no Python thread runs (heartbeat stale: GIL held in C, stopped or in the kernel)"
        )
        where = _collective_words(page)
        return (
            f"rank {w.rank} (pid {w.pid}) frozen: no progress for {stale_s:.1f}s "
            f"(threshold {threshold_s:.1f}s) at step {page.step}, {how}{where}"
        )

    def observe_gpus(self, gpus: list[GpuHealth], rank_of_gpu: dict[int, int]) -> list[Verdict]:
        verdicts = []
        for gpu in gpus:
            for key, reason in _gpu_faults(gpu, self._ecc_seen.get(gpu.index, 0)):
                if (gpu.index, key) not in self._gpu_reported:
                    self._gpu_reported.add((gpu.index, key))
                    verdicts.append(self._gpu_verdict(VerdictKind.GPU_FAULT, gpu, reason, rank_of_gpu))
            self._ecc_seen[gpu.index] = max(self._ecc_seen.get(gpu.index, 0), gpu.ecc_volatile_uncorrected)
            verdicts.extend(self._throttle(gpu, rank_of_gpu))
        return verdicts

    def _throttle(self, gpu: GpuHealth, rank_of_gpu: dict[int, int]) -> list[Verdict]:
        bits = gpu.throttle_reasons & THROTTLE_MASK
        polls = self._throttle_polls.get(gpu.index, 0) + 1 if bits else 0
        self._throttle_polls[gpu.index] = polls
        if polls == 0:
            self._gpu_reported.discard((gpu.index, "throttle"))
        if polls < THROTTLE_PERSIST_POLLS or (gpu.index, "throttle") in self._gpu_reported:
            return []
        self._gpu_reported.add((gpu.index, "throttle"))
        reason = f"gpu {gpu.index} throttling: clocks-event reasons 0x{bits:x} for {polls} polls"
        return [self._gpu_verdict(VerdictKind.THROTTLING, gpu, reason, rank_of_gpu)]

    def _gpu_verdict(
        self, kind: VerdictKind, gpu: GpuHealth, reason: str, rank_of_gpu: dict[int, int]
    ) -> Verdict:
        evidence = {
            "uuid": gpu.uuid,
            "xids": ",".join(map(str, gpu.recent_xids)),
            "recovery_action": str(gpu.recovery_action),
            "ecc_volatile_uncorrected": str(gpu.ecc_volatile_uncorrected),
            "row_remap_failures": str(gpu.row_remap_failures),
            "throttle_reasons": hex(gpu.throttle_reasons),
        }
        return Verdict(
            kind=kind,
            node_id=self.node_id,
            rank=rank_of_gpu.get(gpu.index, -1),
            gpu_index=gpu.index,
            reason=reason,
            evidence=evidence,
        )

    def _verdict(self, kind: VerdictKind, w: Worker, reason: str, evidence: dict[str, str]) -> Verdict:
        return Verdict(
            kind=kind,
            node_id=self.node_id,
            rank=w.rank,
            reason=reason,
            evidence=evidence,
            incarnation=w.incarnation,
        )


def _gpu_faults(gpu: GpuHealth, ecc_before: int) -> list[tuple[str, str]]:
    faults = [(f"xid{x}", f"gpu {gpu.index} critical XID {x}") for x in gpu.recent_xids if x in CRITICAL_XIDS]
    if gpu.recovery_action:
        faults.append(("recovery", f"gpu {gpu.index} needs recovery action {gpu.recovery_action}"))
    if gpu.row_remap_failures:
        faults.append(("remap", f"gpu {gpu.index} row-remap failure ({gpu.row_remap_failures})"))
    if gpu.ecc_volatile_uncorrected > ecc_before:
        faults.append((f"ecc{gpu.ecc_volatile_uncorrected}", f"gpu {gpu.index} new uncorrected ECC errors"))
    return faults


def _waits_on_local_peer(page: PageSnapshot, all_obs: list[Observation]) -> bool:
    """True when this rank waits in a collective that another local rank has not enqueued yet."""
    for group in page.groups:
        if not group.in_collective:
            continue
        for other in all_obs:
            peer = other.page
            if peer is None or peer.rank == page.rank:
                continue
            for g in peer.groups:
                if g.name == group.name and g.enqueued_seq < group.enqueued_seq:
                    return True
    return False


def _collective_words(page: PageSnapshot) -> str:
    waiting = [g for g in page.groups if g.in_collective]
    if not waiting:
        return ", not in a collective"
    g = waiting[0]
    return f", inside collective group={g.name} seq={g.enqueued_seq} (completed {g.completed_seq})"


def _evidence(obs: Observation, track: RankTrack, now_ns: int) -> dict[str, str]:
    evidence = {"pid": str(obs.worker.pid), "proc_status": obs.proc_status}
    page = obs.page
    if page is not None:
        evidence.update(
            step=str(page.step),
            progress_age_s=f"{(now_ns - page.progress_mono_ns) / _NS:.2f}",
            heartbeat_age_s=f"{(now_ns - page.heartbeat_mono_ns) / _NS:.2f}",
            heartbeat="fresh" if (now_ns - page.heartbeat_mono_ns) / _NS < HEARTBEAT_STALE_S else "stale",
            threshold_s=f"{track.threshold_s(0.0):.2f}",
        )
        for g in page.groups:
            evidence[f"group.{g.name}"] = f"enq={g.enqueued_seq} done={g.completed_seq}"
    return evidence


def _culprit_order(v: Verdict, observations: list[Observation]) -> tuple[int, int, int]:
    """Several ranks found dead in one tick: signals first (a peer's death makes others fail with a
    code), then the rank that had enqueued the fewest collectives (it is the one others waited for)."""
    page = next((o.page for o in observations if o.worker.rank == v.rank), None)
    enqueued = max((g.enqueued_seq for g in page.groups), default=-1) if page is not None else -1
    return (0 if v.evidence.get("signal", "0") != "0" else 1, enqueued, v.rank)
