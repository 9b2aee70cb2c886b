"""The ETTR model: Daly's interval, analytic vs Monte-Carlo agreement, and the published rates."""

from __future__ import annotations

import math

import numpy as np
import pytest
from kedge_sim import ettr, rates
from kedge_sim.faults import OBSERVABLE, FaultKind


@pytest.mark.timeout(30)
def test_daly_interval_minimises_analytic_waste() -> None:
    mtbf_s, cost_s = 11_000.0, 10.0
    down = ettr.Downtime(detect_s=5.0, diagnose_s=5.0, recover_s=120.0)
    best = ettr.daly_interval_s(cost_s, mtbf_s)
    assert best == pytest.approx(math.sqrt(2 * cost_s * mtbf_s) - cost_s)
    at_best = ettr.analytic_ettr(mtbf_s=mtbf_s, ckpt_cost_s=cost_s, downtime=down, interval_s=best)
    for other in (best / 3, best * 3):
        assert (
            ettr.analytic_ettr(mtbf_s=mtbf_s, ckpt_cost_s=cost_s, downtime=down, interval_s=other) < at_best
        )


@pytest.mark.timeout(30)
def test_monte_carlo_agrees_with_first_order_model() -> None:
    mtbf_s = rates.job_mtbf_s(16_384, rates.llama3_failures_per_gpu_hour())
    down = ettr.Downtime(detect_s=10.0, diagnose_s=0.0, recover_s=300.0)
    analytic = ettr.analytic_ettr(mtbf_s=mtbf_s, ckpt_cost_s=5.0, downtime=down)
    simulated = ettr.monte_carlo_ettr(
        mtbf_s=mtbf_s,
        ckpt_cost_s=5.0,
        downtime_s=np.array([down.total_s]),
        horizon_s=400 * 86_400.0,
        rng=np.random.default_rng(1),
    )
    assert simulated == pytest.approx(analytic, abs=0.01)


@pytest.mark.timeout(30)
def test_published_rates() -> None:
    # Llama 3: 419 interruptions in 54 days on 16,384 GPUs is one every ~3.1 hours.
    assert rates.job_mtbf_s(16_384, rates.llama3_failures_per_gpu_hour()) / 3600 == pytest.approx(
        3.09, abs=0.01
    )
    mix = rates.fault_mix()
    assert sum(mix.values()) == pytest.approx(1.0)
    assert sum(count for count, _ in rates.LLAMA3_CAUSES.values()) == rates.LLAMA3_INTERRUPTIONS
    assert set(mix) - {FaultKind.SILENT} <= OBSERVABLE
