"""Fault kinds as kedge sees them, and injected fault instances with their ground truth."""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np


class FaultKind(str, enum.Enum):
    """What a fault looks like from kedge's side (agents, progress pages, leases)."""

    RANK_DIED = "rank_died"  # the process exits (exception, CUDA error): agent verdict at once
    GPU_XID = "gpu_xid"  # NVML reports a critical XID, then the rank dies
    RANK_FROZEN = "rank_frozen"  # the rank stops progressing; process still there (GIL/driver hang)
    STRAGGLER = "straggler"  # one GPU slower (thermal throttle): its rank arrives last
    COMM_SLOW = "comm_slow"  # one node's NIC degraded: every collective slower
    COMM_HANG = "comm_hang"  # a link of one node down: a collective never completes anywhere
    NODE_LOSS = "node_loss"  # host gone: its agent stops reporting, its ranks stop
    SILENT = "silent"  # silent data corruption: nothing kedge can observe


# Kinds whose culprit kedge is expected to name (SILENT is counted apart: no signal exists).
OBSERVABLE = frozenset(k for k in FaultKind if k is not FaultKind.SILENT)


@dataclass(kw_only=True, slots=True)
class Fault:
    """One injected fault: the ground truth a diagnosis is scored against."""

    kind: FaultKind
    at_s: float
    node: int  # node index
    rank: int  # global rank (-1 when the fault is the node's: NODE_LOSS, COMM_*)
    slow_factor: float = 1.0  # STRAGGLER: compute time multiplier; COMM_SLOW: collective multiplier
    gpu_index: int = -1


def draw_fault(
    rng: np.random.Generator, kind: FaultKind, at_s: float, nodes: int, gpus_per_node: int
) -> Fault:
    """A fault of `kind` on a uniformly chosen node (and GPU, where the kind concerns one)."""
    node = int(rng.integers(nodes))
    local = int(rng.integers(gpus_per_node))
    per_rank = kind in (FaultKind.RANK_DIED, FaultKind.GPU_XID, FaultKind.RANK_FROZEN, FaultKind.STRAGGLER)
    rank = node * gpus_per_node + local if per_rank else -1
    slow = 1.0
    if kind is FaultKind.STRAGGLER:
        slow = float(rng.uniform(1.3, 2.0))
    elif kind is FaultKind.COMM_SLOW:
        slow = float(rng.uniform(2.0, 5.0))
    gpu = local if kind in (FaultKind.GPU_XID, FaultKind.STRAGGLER) else -1
    return Fault(kind=kind, at_s=at_s, node=node, rank=rank, slow_factor=slow, gpu_index=gpu)


def draw_kind(rng: np.random.Generator, mix: dict[FaultKind, float]) -> FaultKind:
    kinds = list(mix)
    probs = np.array([mix[k] for k in kinds])
    return kinds[int(rng.choice(len(kinds), p=probs / probs.sum()))]
