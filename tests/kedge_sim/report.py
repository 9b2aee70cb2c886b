"""Tables for run_sim.py: scale measurements and ETTR (kedge vs plain PyTorch)."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import tracemalloc
from dataclasses import dataclass

import numpy as np

from kedge_sim import ettr, rates
from kedge_sim.core_adapter import CoreAdapter
from kedge_sim.driver import Result, Run, Scenario
from kedge_sim.faults import FaultKind


def machine() -> str:
    cpu = platform.processor() or "unknown cpu"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}; {os.cpu_count()} cores visible; Python {sys.version.split()[0]}; numpy {np.__version__}"


def coordinator_memory_bytes(gpus: int, seed: int, soak_s: float) -> tuple[int, int]:
    """Memory held by coordinator code (and the adapter standing in for its wire decoding) after
    soak_s/2 and soak_s virtual seconds of a no-fault run, by tracemalloc (a separate, slower run)."""
    half: list[int] = []
    filters = [tracemalloc.Filter(True, "*/coordinator/*"), tracemalloc.Filter(True, "*core_adapter.py")]

    def held() -> int:
        snap = tracemalloc.take_snapshot().filter_traces(filters)
        return sum(s.size for s in snap.statistics("filename"))

    tracemalloc.start()
    adapter = CoreAdapter()
    try:
        run = Run(Scenario(gpus=gpus, seed=seed, soak_s=soak_s, charge_cpu=False), adapter, announce=False)
        run.clock.at(soak_s / 2, lambda _t: half.append(held()))
        run.run()
        return half[0], held()
    finally:
        tracemalloc.stop()
        adapter.close()


@dataclass(kw_only=True, slots=True)
class SizeSummary:
    gpus: int
    results: dict[str, Result]

    def soak(self) -> Result:
        return self.results["none"]


def scale_table(summaries: list[SizeSummary]) -> str:
    lines = [
        "| GPUs | nodes | msgs/s (coord in) | coord CPU s per sim s | max queue lag s | false actions (soak) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        soak = s.soak()
        msgs = sum(v for k, v in soak.messages.items() if k != "tick" and k != "register") / soak.virtual_s
        lines.append(
            f"| {s.gpus:,} | {s.gpus // 8:,} | {msgs:,.0f} | {soak.coord_cpu_s / soak.virtual_s:.3f} | "
            f"{soak.max_lag_s:.3f} | {soak.false_actions} in {soak.virtual_s:.0f} s |"
        )
    return "\n".join(lines)


def diagnosis_table(summaries: list[SizeSummary]) -> str:
    kinds = [k for k in summaries[0].results if k != "none"]
    head = (
        "| fault | "
        + " | ".join(
            f"{s.gpus:,} GPUs: latency s / culprit / action / control-plane recovery s" for s in summaries
        )
        + " |"
    )
    lines = [head, "|---|" + "---|" * len(summaries)]
    for kind in kinds:
        cells = []
        for s in summaries:
            r = s.results[kind]
            act = r.first_action
            lat = f"{r.latency_s:.1f}" if r.latency_s is not None else "-"
            ok = {True: "right", False: "wrong" if act else "none", None: "-"}[r.correct]
            rec = f" / {r.recovered_s:.1f}" if r.recovered_s is not None else ""
            cells.append(
                f"{lat} / {ok} / {act.action if act else 'none'}{rec}"
                + (f" ({r.false_actions} false)" if r.false_actions else "")
            )
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_kind_downtime_s(
    results: dict[str, Result], *, restart_s: float, manual_s: float, operator_s: float, nccl_timeout_s: float
) -> tuple[dict[FaultKind, float], dict[FaultKind, float]]:
    """Downtime per failure kind for kedge (measured detection + diagnosis) and the baseline."""
    kedge: dict[FaultKind, float] = {}
    base: dict[FaultKind, float] = {}
    for kind in rates.fault_mix():
        r = results.get(kind.value)
        hardware = kind is not FaultKind.RANK_DIED
        base[kind] = nccl_timeout_s + (manual_s if hardware else 0.0) + restart_s
        act = r.first_action if r is not None else None
        if r is None or act is None or not r.correct:
            kedge[kind] = (
                (r.latency_s if r is not None and r.latency_s is not None else nccl_timeout_s)
                + manual_s
                + restart_s
            )
        elif act.action == "alert":
            kedge[kind] = (r.latency_s or 0.0) + operator_s + restart_s
        else:
            kedge[kind] = (r.latency_s or 0.0) + restart_s
    return kedge, base


def ettr_rows(
    gpus: int,
    kedge: dict[FaultKind, float],
    base: dict[FaultKind, float],
    *,
    ckpt_cost_s: float,
    failures_per_gpu_hour: float,
    seed: int,
) -> tuple[float, float, float, float, float]:
    mtbf = rates.job_mtbf_s(gpus, failures_per_gpu_hour)
    mix = rates.fault_mix()
    rng = np.random.default_rng(seed)
    kinds = list(mix)
    draws = rng.choice(len(kinds), size=4000, p=np.array([mix[k] for k in kinds]))
    out = []
    for table in (kedge, base):
        down = np.array([table[kinds[i]] for i in draws])
        out.append(
            ettr.monte_carlo_ettr(
                mtbf_s=mtbf,
                ckpt_cost_s=ckpt_cost_s,
                downtime_s=down,
                horizon_s=max(200 * mtbf, 30 * 86_400.0),
                rng=rng,
            )
        )
        out.append(float(statistics.fmean(down)))
    return mtbf, out[0], out[2], out[1], out[3]
