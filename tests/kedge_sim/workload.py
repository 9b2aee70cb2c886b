"""Step and collective timing of a synchronous data/pipeline-parallel job, for every rank at once.

Model of one step k (all arrays over ranks, numpy):
- the step has C collectives on the job's world group, with sequence numbers k*C+1 .. k*C+C;
- between collectives each rank computes for its segment: base compute / C, times its pipeline stage
  factor (later stages a few percent slower: structural, not a fault), times log-normal jitter, times
  its slow factor (a straggler fault); occasionally one rank adds a garbage-collection pause;
- rank r enqueues collective j when its segment ends: arrive[r, j] = done[j-1] + seg[r, j];
- collective j completes on every rank when the last one arrived plus the transfer time:
  done[j] = max_r arrive[r, j] + comm_s * comm_factor;
- every `ckpt_every_steps` steps the job pauses for `ckpt_pause_s` at the step boundary (the blocking
  part of a checkpoint), every `eval_every_steps` for `eval_pause_s`; both pause every rank equally.
A rank that died or froze at t_f never arrives at a collective after t_f (arrive = inf); a broken link
makes the collective in flight never complete (done = inf). Infinity then propagates to every later
collective, which is exactly what a hang looks like to the others.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

INF = float("inf")


@dataclass(kw_only=True, slots=True)
class WorkloadConfig:
    """Timing of the simulated job (defaults: a large dense LLM step on H100-class GPUs)."""

    step_compute_s: float = 5.0
    """Compute time of one step on a median rank, without jitter or skew."""
    collectives_per_step: int = 4
    """Collectives per step on the world group (gradient buckets)."""
    comm_s: float = 0.12
    """Transfer time of one collective once every rank arrived."""
    jitter_sigma: float = 0.02
    """Sigma of the log-normal per-rank, per-segment compute jitter."""
    pipeline_stages: int = 16
    """Pipeline stages; rank r is in stage (r // 8) % stages."""
    pipeline_skew: float = 0.04
    """Compute of the last stage relative to the first (+4%), linear across stages."""
    gc_probability: float = 0.0005
    """Chance that a rank pauses for garbage collection in a given step."""
    gc_pause_s: tuple[float, float] = (0.2, 1.5)
    """Range of a garbage-collection pause."""
    ckpt_every_steps: int = 30
    """Steps between checkpoints (the blocking part only pauses the job)."""
    ckpt_pause_s: float = 3.0
    """Blocking time of one checkpoint at the step boundary."""
    eval_every_steps: int = 100
    """Steps between evaluation pauses."""
    eval_pause_s: float = 25.0
    """Duration of one evaluation pause (no collectives on the training group)."""


@dataclass(slots=True)
class StepTimes:
    """Timing of one step for every rank."""

    step: int
    start_s: float  # when the step's first segment started (after any pause)
    segs_s: np.ndarray  # [ranks, C] compute before each collective (drawn once, kept for replays)
    comm_factor: float  # collective slow-down in effect when the step began
    arrive_s: np.ndarray  # [ranks, C] enqueue (and start) time of each collective on each rank
    done_s: np.ndarray  # [C] completion time of each collective (same on every rank)

    @property
    def end_s(self) -> float:
        return float(self.done_s[-1])


class StepGenerator:
    """Produces consecutive steps; faults change the per-rank factors between calls.

    Rate faults (slow GPU, slow NIC) take effect from the next step on; stop faults (death, freeze,
    link down) are applied inside the step in flight by `replay`, leaving its past unchanged.
    """

    def __init__(self, config: WorkloadConfig, ranks: int, rng: np.random.Generator) -> None:
        self.config = config
        self.ranks = ranks
        self.rng = rng
        stages = max(1, config.pipeline_stages)
        stage = (np.arange(ranks) // 8) % stages
        self.stage_factor = 1.0 + config.pipeline_skew * stage / max(1, stages - 1)
        self.slow_factor = np.ones(ranks)
        self.stop_at_s = np.full(ranks, INF)  # rank dies or freezes at this time
        self.comm_factor = 1.0
        self.link_down_at_s = INF
        self.active = np.ones(ranks, dtype=bool)  # ranks in the current world

    def pause_after(self, step: int) -> float:
        c = self.config
        pause = 0.0
        if c.ckpt_every_steps and step % c.ckpt_every_steps == 0:
            pause += c.ckpt_pause_s
        if c.eval_every_steps and step % c.eval_every_steps == 0:
            pause += c.eval_pause_s
        return pause

    def step(self, step: int, start_s: float) -> StepTimes:
        c = self.config
        cols = c.collectives_per_step
        seg = (c.step_compute_s / cols) * self.stage_factor * self.slow_factor
        segs = self.rng.lognormal(0.0, c.jitter_sigma, size=(self.ranks, cols)) * seg[:, None]
        gc = self.rng.random(self.ranks) < c.gc_probability
        if gc.any():
            lo, hi = c.gc_pause_s
            segs[gc, self.rng.integers(cols)] += self.rng.uniform(lo, hi, size=int(gc.sum()))
        st = StepTimes(step, start_s, segs, self.comm_factor, np.empty((self.ranks, cols)), np.empty(cols))
        self.replay(st)
        return st

    def replay(self, st: StepTimes) -> None:
        """(Re)computes arrivals and completions of `st` under the current stop faults."""
        prev = st.start_s
        comm = self.config.comm_s * st.comm_factor
        for j in range(st.segs_s.shape[1]):
            col = prev + st.segs_s[:, j]
            col[col > self.stop_at_s] = INF
            col[~self.active] = -INF  # not in the world: ignored by the max below
            st.arrive_s[:, j] = col
            finish = float(col.max()) + comm
            st.done_s[j] = INF if finish > self.link_down_at_s else finish
            prev = float(st.done_s[j])
