"""Reads PyTorch's Flight Recorder from the hooks' side thread.

Which recorder: torch (2.6+) keeps a Flight Recorder for every c10d backend once
`TORCH_FR_BUFFER_SIZE` (or the older `TORCH_NCCL_TRACE_BUFFER_SIZE`) is non-zero when the process
group is created. Its dump holds per process group `pg_status` (last enqueued / started / completed
collective sequence number) and the ring of recent entries. For gloo on CPU torch 2.13 records entries
and `pg_status` (entries stay in state "scheduled"; `last_completed_collective` advances), read with
`torch._C._distributed_c10d._dump_fr_trace_json`; for NCCL the richer `_dump_nccl_trace_json` (state,
start/complete discovered by CUDA events inside torch) is used when it exists. Either way nothing
runs on the training thread: the recorder is filled by c10d itself and this module only polls it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_BUFFER_ENTRIES = 256
BUFFER_ENV_VARS = ("TORCH_FR_BUFFER_SIZE", "TORCH_NCCL_TRACE_BUFFER_SIZE")


@dataclass(slots=True, frozen=True)
class GroupStatus:
    """pg_status of one process group."""

    name: str
    enqueued_seq: int
    started_seq: int
    completed_seq: int


@dataclass(slots=True, frozen=True)
class Record:
    """One Flight Recorder entry, in the project's terms (wall-clock nanoseconds as torch gives them)."""

    group: str
    seq: int
    op: str
    size_bytes: int
    state: str
    created_wall_ns: int
    started_wall_ns: int
    completed_wall_ns: int
    device_duration_ns: int = 0
    """The collective's time on the device (CUDA events; NCCL with TORCH_NCCL_ENABLE_TIMING), else 0."""


_DTYPE_BYTES = {"Float": 4, "Double": 8, "Half": 2, "BFloat16": 2, "Long": 8, "Int": 4, "Byte": 1, "Char": 1}


def _dumper() -> Callable[[bool, bool], str] | None:
    try:
        import torch._C._distributed_c10d as c10d
    except ImportError:  # torch built without distributed
        return None
    for name in ("_dump_nccl_trace_json", "_dump_fr_trace_json"):
        fn = getattr(c10d, name, None)
        if fn is not None:
            return fn  # type: ignore[no-any-return]
    return None


class FlightRecorderPoller:
    """Polls the recorder; `status()` is cheap (no entries), `records()` returns recent entries."""

    def __init__(self) -> None:
        self._dump = _dumper()
        self._failed = False
        self.dump_s = 0.0

    @property
    def available(self) -> bool:
        return self._dump is not None and not self._failed

    def _load(self, include_entries: bool) -> dict[str, Any]:
        if self._dump is None or self._failed:
            return {}
        t0 = time.perf_counter()
        try:
            data = json.loads(self._dump(include_entries, False))
        except (RuntimeError, ValueError, TypeError) as exc:
            self._failed = True
            log.warning("flight_recorder_unavailable error=%s", exc)
            return {}
        self.dump_s = time.perf_counter() - t0
        return data if isinstance(data, dict) else {}

    def dump_json(self) -> str:
        """The whole recorder (entries and status) as torch's JSON, for a post-mortem file."""
        if self._dump is None:
            return "{}"
        return self._dump(True, False)

    def status(self) -> list[GroupStatus]:
        pg_status = self._load(False).get("pg_status", {})
        return [
            GroupStatus(
                name=str(pg_id),
                enqueued_seq=int(s.get("last_enqueued_collective", -1)),
                started_seq=int(s.get("last_started_collective", -1)),
                completed_seq=int(s.get("last_completed_collective", -1)),
            )
            for pg_id, s in pg_status.items()
        ]

    def records(self, after_seq: dict[str, int]) -> list[Record]:
        """Entries with a sequence number above `after_seq[group]` (updated in place)."""
        out = []
        for entry in self._load(True).get("entries", []):
            rec = _to_record(entry)
            if rec.seq > after_seq.get(rec.group, -1):
                out.append(rec)
        for rec in out:
            after_seq[rec.group] = max(after_seq.get(rec.group, -1), rec.seq)
        return out


def _to_record(entry: dict[str, Any]) -> Record:
    sizes = entry.get("input_sizes") or []
    dtypes = entry.get("input_dtypes") or []
    size_bytes = 0
    for shape, dtype in zip(sizes, dtypes, strict=False):
        numel = 1
        for dim in shape:
            numel *= int(dim)
        size_bytes += numel * _DTYPE_BYTES.get(str(dtype), 4)
    return Record(
        group=str(entry.get("pg_id", 0)),
        seq=int(entry.get("collective_seq_id", 0)),
        op=str(entry.get("profiling_name", "")),
        size_bytes=size_bytes,
        state=str(entry.get("state", "")),
        created_wall_ns=int(entry.get("time_created_ns", 0)),
        started_wall_ns=int(entry.get("time_discovered_started_ns") or 0),
        completed_wall_ns=int(entry.get("time_discovered_completed_ns") or 0),
        device_duration_ns=int(float(entry.get("duration_ms") or 0.0) * 1e6),
    )
