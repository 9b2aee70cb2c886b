"""Collective timing sent to the agent: device-measured when there is one, none from an async CPU."""

from __future__ import annotations

import time

from kedge.hooks.flight_recorder import Record, _to_record
from kedge.hooks.runtime import _record_fields


def _record(duration_ns: int = 0) -> Record:
    now = time.time_ns()
    return Record(
        group="0",
        seq=7,
        op="nccl:all_reduce",
        size_bytes=4,
        state="completed",
        created_wall_ns=now - 50_000_000,
        started_wall_ns=now - 40_000_000,
        completed_wall_ns=now,
        device_duration_ns=duration_ns,
    )


def test_device_duration_places_the_start_before_completion() -> None:
    fields = _record_fields(_record(duration_ns=3_000_000), 5, async_device=True)
    assert int(fields["complete_mono_ns"]) - int(fields["start_mono_ns"]) == 3_000_000
    assert int(fields["enqueue_mono_ns"]) > 0


def test_async_device_without_device_timing_sends_no_cpu_timing() -> None:
    fields = _record_fields(_record(), 5, async_device=True)
    assert fields["enqueue_mono_ns"] == 0 and fields["start_mono_ns"] == 0
    assert int(fields["complete_mono_ns"]) > 0


def test_cpu_backend_keeps_cpu_timing() -> None:
    fields = _record_fields(_record(), 5, async_device=False)
    # each stamp is moved to the monotonic clock on its own, so the difference may move by a little
    assert abs(int(fields["complete_mono_ns"]) - int(fields["start_mono_ns"]) - 40_000_000) < 1_000_000


def test_flight_recorder_duration_ms_is_read() -> None:
    entry = {"pg_id": 0, "collective_seq_id": 3, "duration_ms": 1.5, "time_created_ns": 1}
    assert _to_record(entry).device_duration_ns == 1_500_000
    assert _to_record({"pg_id": 0, "collective_seq_id": 3, "duration_ms": None}).device_duration_ns == 0
