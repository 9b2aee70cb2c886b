"""Effective training time ratio (ETTR): the share of wall time that becomes kept training progress.

Per failure the job loses: detection (fault -> someone knows), diagnosis (-> the bad node is known),
recovery (-> training resumes: stop, reschedule, start, load the checkpoint) and the work since the
last checkpoint (half an interval on average). Checkpoints cost `ckpt_cost_s` of blocked training
each. The interval is Daly's optimum sqrt(2 * cost * MTBF) - cost (Young's first-order formula
minus the cost term), the optimum under exponential failures for cost << MTBF.

Two estimates: `analytic_ettr` (first order: waste = cost/interval + (downtime + interval/2)/MTBF)
and `monte_carlo_ettr` (a seeded job-level simulation: Poisson failures, a restart losing the work
since the last committed checkpoint, failures also during recovery), which checks the analytic one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(kw_only=True, slots=True)
class Downtime:
    """Time lost per failure, before the lost work is counted."""

    detect_s: float
    """Fault -> detected."""
    diagnose_s: float
    """Detected -> culprit node known (and excluded)."""
    recover_s: float
    """Decision -> first training step after the restore."""

    @property
    def total_s(self) -> float:
        return self.detect_s + self.diagnose_s + self.recover_s


def daly_interval_s(ckpt_cost_s: float, mtbf_s: float) -> float:
    """Daly's optimal checkpoint interval (compute time between checkpoints)."""
    if ckpt_cost_s >= mtbf_s / 2:
        return mtbf_s
    return math.sqrt(2.0 * ckpt_cost_s * mtbf_s) - ckpt_cost_s


def analytic_ettr(
    *, mtbf_s: float, ckpt_cost_s: float, downtime: Downtime, interval_s: float | None = None
) -> float:
    """First-order ETTR with the interval given or Daly-optimal."""
    tau = interval_s if interval_s is not None else daly_interval_s(ckpt_cost_s, mtbf_s)
    waste = ckpt_cost_s / (tau + ckpt_cost_s) + (downtime.total_s + tau / 2.0) / mtbf_s
    return max(0.0, 1.0 - waste)


def monte_carlo_ettr(
    *,
    mtbf_s: float,
    ckpt_cost_s: float,
    downtime_s: np.ndarray,
    horizon_s: float,
    rng: np.random.Generator,
    interval_s: float | None = None,
) -> float:
    """Simulates `horizon_s` of wall time; each failure's downtime is drawn from `downtime_s`."""
    tau = interval_s if interval_s is not None else daly_interval_s(ckpt_cost_s, mtbf_s)
    t = 0.0
    kept = 0.0
    next_fail = rng.exponential(mtbf_s)
    while t < horizon_s:
        # run segments of tau compute + checkpoint until the next failure
        segment = tau + ckpt_cost_s
        if t + segment <= next_fail:
            t += segment
            kept += tau
            continue
        t = next_fail + float(rng.choice(downtime_s))  # work since the last checkpoint is lost
        next_fail = t + rng.exponential(mtbf_s)
    return kept / t
