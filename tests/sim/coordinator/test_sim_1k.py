"""A 1,024-GPU simulated cluster against the coordinator's real core (seeded, replayable).

Each fault is injected on a seeded random node after a warm-up; the coordinator must name that node
(and rank) with its first action, and a no-fault run with checkpoint pauses, GC pauses, jitter and
pipeline skew must produce no action at all.
"""

from __future__ import annotations

import pytest
from kedge_sim.core_adapter import CoreAdapter
from kedge_sim.driver import Result, Run, Scenario
from kedge_sim.faults import FaultKind
from kedge_sim.workload import WorkloadConfig

GPUS = 1024
SEED = 20261122


def _run(fault: FaultKind | None, *, seed: int = SEED, fault_at_s: float = 50.0) -> Result:
    scenario = Scenario(gpus=GPUS, seed=seed, fault=fault, charge_cpu=False, fault_at_s=fault_at_s)
    return _drive(scenario)


def _drive(scenario: Scenario) -> Result:
    adapter = CoreAdapter()
    try:
        return Run(scenario, adapter).run()
    finally:
        adapter.close()


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("fault", "action"),
    [
        (FaultKind.RANK_DIED, "restart"),
        (FaultKind.GPU_XID, "shrink"),
        (FaultKind.RANK_FROZEN, "restart"),
        (FaultKind.NODE_LOSS, "shrink"),
    ],
)
def test_culprit_named_by_first_action(fault: FaultKind, action: str) -> None:
    result = _run(fault)
    first = result.first_action
    assert result.fault is not None and first is not None, f"no action for {fault.value}"
    assert first.action == action, first.reason
    assert result.correct, f"named {first.culprit_nodes}, fault on node {result.fault.node}: {first.reason}"
    if result.fault.rank >= 0:
        assert result.fault.rank in first.culprit_ranks, first.reason
    assert result.false_actions == 0
    assert result.recovered_s is not None, "the job did not run again after the action"


@pytest.mark.timeout(240)
def test_no_fault_soak_takes_no_action() -> None:
    workload = WorkloadConfig(ckpt_every_steps=5, ckpt_pause_s=3.0, gc_probability=0.002)
    scenario = Scenario(
        gpus=GPUS, seed=SEED + 1, fault=None, charge_cpu=False, soak_s=90.0, workload=workload
    )
    result = _drive(scenario)
    assert result.decisions == [], [d.reason for d in result.decisions]
    assert result.messages["report"] == GPUS // 8 * 90


@pytest.mark.timeout(240)
def test_same_seed_replays_the_same_run() -> None:
    a, b = (
        _run(FaultKind.NODE_LOSS, seed=5, fault_at_s=15.0),
        _run(FaultKind.NODE_LOSS, seed=5, fault_at_s=15.0),
    )
    assert a.fault == b.fault
    assert [(d.at_s, d.action, d.reason) for d in a.decisions] == [
        (d.at_s, d.action, d.reason) for d in b.decisions
    ]
    assert a.messages == b.messages


@pytest.mark.timeout(240)
def test_slow_nic_localized_by_grouped_probe() -> None:
    # Seed 3 draws a 4.7x slower NIC (above the 3x comm-slow threshold) on node 125 of 128 nodes.
    scenario = Scenario(gpus=GPUS, seed=3, fault=FaultKind.COMM_SLOW, charge_cpu=False, fault_at_s=40.0)
    result = _drive(scenario)
    first = result.first_action
    assert result.fault is not None and first is not None
    assert result.correct, f"named {first.culprit_nodes}, fault on node {result.fault.node}: {first.reason}"
    assert result.messages["probe_result"] == GPUS // 8  # every node answered its ring
    assert result.false_actions == 0
