#!/usr/bin/env python3
"""Simulated clusters of 1K-100K GPUs against the kedge coordinator: the tables of docs/SCALE.md.

    .venv/bin/python tests/sim/run_sim.py                      # 1,024 / 16,384 / 100,000 GPUs
    .venv/bin/python tests/sim/run_sim.py --gpus 1024 --kinds rank_died,node_loss --seed 7

Prints the seed, the machine, a scale table (message rate, coordinator CPU per simulated second,
queueing lag, memory), a diagnosis table (latency, culprit, action per fault kind and size) and an
ETTR table under Llama-3 failure rates (kedge's measured detection vs plain PyTorch).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the kedge_sim package

from kedge_sim import rates
from kedge_sim.core_adapter import CoreAdapter
from kedge_sim.driver import Run, Scenario
from kedge_sim.faults import FaultKind
from kedge_sim.report import (
    SizeSummary,
    coordinator_memory_bytes,
    diagnosis_table,
    ettr_rows,
    machine,
    per_kind_downtime_s,
    scale_table,
)

DEFAULT_KINDS = "rank_died,gpu_xid,rank_frozen,straggler,comm_slow,comm_hang,node_loss"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpus", default="1024,16384,100000", help="comma-separated cluster sizes")
    p.add_argument("--kinds", default=DEFAULT_KINDS, help="fault kinds to inject, one run each")
    p.add_argument("--seed", type=int, default=int(time.time()) % 100_000)
    p.add_argument("--soak-s", type=float, default=120.0, help="virtual length of the no-fault run")
    p.add_argument("--fault-at-s", type=float, default=50.0, help="virtual warm-up before the fault")
    p.add_argument(
        "--memory", action="store_true", help="also measure coordinator memory (tracemalloc, slow)"
    )
    p.add_argument("--restart-s", type=float, default=120.0, help="assumed job restart time (both sides)")
    p.add_argument(
        "--ckpt-cost-s", type=float, default=10.0, help="blocking time per checkpoint (both sides)"
    )
    args = p.parse_args()
    logging.disable(logging.WARNING)  # the core logs every verdict and action: noise at 12,500 nodes
    try:
        sizes = [int(x) for x in args.gpus.split(",")]
        kinds = [FaultKind(k) for k in args.kinds.split(",") if k]
    except ValueError as e:
        print(f"run_sim: bad argument: {e}", file=sys.stderr)
        return 2
    print(f"kedge-sim seed={args.seed}")
    print(f"machine: {machine()}")
    summaries = []
    for gpus in sizes:
        results = {}
        for kind in [None, *kinds]:
            sc = Scenario(
                gpus=gpus, seed=args.seed, fault=kind, soak_s=args.soak_s, fault_at_s=args.fault_at_s
            )
            adapter = CoreAdapter()
            try:
                r = Run(sc, adapter, announce=False).run()
            finally:
                adapter.close()
            results[kind.value if kind else "none"] = r
            print(
                f"  {gpus:>7,} GPUs {kind.value if kind else 'no fault':<12} virtual {r.virtual_s:6.1f}s "
                f"wall {r.wall_s:6.1f}s coord cpu {r.coord_cpu_s:6.2f}s latency {r.latency_s} "
                f"correct {r.correct} false {r.false_actions} recovered {r.recovered_s} lag {r.max_lag_s:.2f}",
                flush=True,
            )
        summaries.append(SizeSummary(gpus=gpus, results=results))
    print("\n## Scale (no-fault run; coordinator = kedge.coordinator.core.CoordinatorCore, SQLite store)\n")
    print(scale_table(summaries))
    if args.memory:
        print("\n| GPUs | coordinator memory at T/2 | at T | growth per sim s |\n|---:|---:|---:|---:|")
        for gpus in sizes:
            half, end = coordinator_memory_bytes(gpus, args.seed, 40.0)
            print(
                f"| {gpus:,} | {half / 1e6:.1f} MB | {end / 1e6:.1f} MB | {(end - half) / 20.0 / 1e3:.1f} kB/s |"
            )
    print("\n## Diagnosis (fault -> first action)\n")
    print(diagnosis_table(summaries))
    print_ettr(summaries, args)
    return 0


def print_ettr(summaries: list[SizeSummary], args: argparse.Namespace) -> None:
    rate = rates.llama3_failures_per_gpu_hour()
    print(
        f"\n## ETTR under Llama-3 rates ({rate * 1e6:.3f} failures per 1M GPU-hours), checkpoint cost "
        f"{args.ckpt_cost_s:.0f}s, Daly interval, restart {args.restart_s:.0f}s (both sides)\n"
    )
    print(
        "| GPUs | job MTBF h | manual diagnosis min | kedge mean downtime s | kedge ETTR | "
        "PyTorch mean downtime s | PyTorch ETTR |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for s in summaries:
        for manual_min in (30, 60):
            row = _ettr(s, args.restart_s, args.ckpt_cost_s, manual_min, rate, args.seed)
            print(
                f"| {s.gpus:,} | {row[0] / 3600:.2f} | {manual_min} | {row[3]:.0f} | {row[1]:.1%} | "
                f"{row[4]:.0f} | {row[2]:.1%} |"
            )
    for s in summaries:
        print(f"\nSensitivity at {s.gpus:,} GPUs (manual diagnosis 45 min): kedge ETTR / PyTorch ETTR\n")
        costs = (2.0, 10.0, 30.0)
        print("| restart s | " + " | ".join(f"ckpt cost {c:.0f}s" for c in costs) + " |")
        print("|---:|" + "---:|" * len(costs))
        for restart in (30.0, 120.0, 300.0):
            cells = []
            for cost in costs:
                row = _ettr(s, restart, cost, 45, rate, args.seed)
                cells.append(f"{row[1]:.1%} / {row[2]:.1%}")
            print(f"| {restart:.0f} | " + " | ".join(cells) + " |")


def _ettr(
    s: SizeSummary, restart_s: float, ckpt_cost_s: float, manual_min: float, rate: float, seed: int
) -> tuple[float, float, float, float, float]:
    kedge, base = per_kind_downtime_s(
        s.results, restart_s=restart_s, manual_s=manual_min * 60.0, operator_s=600.0, nccl_timeout_s=600.0
    )
    return ettr_rows(s.gpus, kedge, base, ckpt_cost_s=ckpt_cost_s, failures_per_gpu_hour=rate, seed=seed)


if __name__ == "__main__":
    raise SystemExit(main())
