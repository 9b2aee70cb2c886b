"""Published failure rates, and the mix of fault kinds drawn from them.

Facts used (cited in docs/SCALE.md):
- Llama 3 405B pre-training (Meta, "The Llama 3 Herd of Models", 2024): 419 unexpected interruptions
  in a 54-day window on 16,384 H100 GPUs; about 78% attributed to confirmed hardware issues. Root
  causes per the paper's table (counts): faulty GPU 148, GPU HBM3 72, software bug 54, network
  switch/cable 35, host maintenance 32, GPU SRAM 19, GPU system processor 17, NIC 7, NCCL watchdog
  timeout 7, silent data corruption 6, GPU thermal interface/sensor 6, and 16 across SSD, power
  supply, chassis, IO board, dependency, CPU and system memory.
- Meta research clusters (Kokolis et al., "Revisiting Reliability in Large-Scale Machine Learning
  Research Clusters", HPCA 2025): 6.5 failures per 1,000 node-days (RSC-1, 8 GPUs per node).

Each root cause maps to what kedge can see (a `FaultKind`); the mapping is this module's assumption
and is stated in docs/SCALE.md.
"""

from __future__ import annotations

from kedge_sim.faults import FaultKind

LLAMA3_INTERRUPTIONS = 419
LLAMA3_DAYS = 54.0
LLAMA3_GPUS = 16_384
META_RSC_FAILURES_PER_1000_NODE_DAYS = 6.5
GPUS_PER_NODE = 8

# Root cause (Llama 3 table) -> (count, kedge-visible kind). Where a root cause shows two ways, the
# count is split (e.g. a faulty GPU mostly raises an XID and kills its rank, sometimes hangs it).
LLAMA3_CAUSES: dict[str, tuple[int, FaultKind]] = {
    "faulty GPU (XID, rank dies)": (111, FaultKind.GPU_XID),
    "faulty GPU (hang)": (37, FaultKind.RANK_FROZEN),
    "GPU HBM3 (ECC XID)": (72, FaultKind.GPU_XID),
    "software bug": (54, FaultKind.RANK_DIED),
    "network switch/cable (link down)": (18, FaultKind.COMM_HANG),
    "network switch/cable (degraded)": (17, FaultKind.COMM_SLOW),
    "host maintenance": (32, FaultKind.NODE_LOSS),
    "GPU SRAM": (19, FaultKind.GPU_XID),
    "GPU system processor (hang)": (17, FaultKind.RANK_FROZEN),
    "NIC": (7, FaultKind.COMM_SLOW),
    "NCCL watchdog timeout": (7, FaultKind.RANK_FROZEN),
    "silent data corruption": (6, FaultKind.SILENT),
    "GPU thermal (slow GPU)": (6, FaultKind.STRAGGLER),
    "host hardware (SSD, PSU, chassis, IO board, CPU, memory)": (14, FaultKind.NODE_LOSS),
    "dependency": (2, FaultKind.RANK_DIED),
}


def llama3_failures_per_gpu_hour() -> float:
    """Unexpected interruptions per GPU-hour in the Llama 3 window."""
    return LLAMA3_INTERRUPTIONS / (LLAMA3_DAYS * 24.0 * LLAMA3_GPUS)


def meta_rsc_failures_per_gpu_hour() -> float:
    """Failures per GPU-hour at 6.5 per 1,000 node-days, 8 GPUs per node."""
    return META_RSC_FAILURES_PER_1000_NODE_DAYS / 1000.0 / 24.0 / GPUS_PER_NODE


def job_mtbf_s(gpus: int, failures_per_gpu_hour: float) -> float:
    """Mean time between failures of a job spanning `gpus` (failures independent per GPU)."""
    return 3600.0 / (failures_per_gpu_hour * gpus)


def fault_mix() -> dict[FaultKind, float]:
    """Probability of each kedge-visible kind, from the Llama 3 root-cause counts."""
    total = sum(count for count, _ in LLAMA3_CAUSES.values())
    mix: dict[FaultKind, float] = {}
    for count, kind in LLAMA3_CAUSES.values():
        mix[kind] = mix.get(kind, 0.0) + count / total
    return mix
