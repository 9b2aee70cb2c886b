"""The hooks write progress pages and the agent reads them; the two sides share only docs/PROGRESS.md."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from kedge.agent import progress_reader as reader
from kedge.hooks import progress_page as writer


@pytest.mark.timeout(10)
def test_layout_constants_agree() -> None:
    for name in (
        "MAGIC",
        "VERSION",
        "HEADER_SIZE_BYTES",
        "GROUP_SIZE_BYTES",
        "MAX_GROUPS",
        "PAGE_SIZE_BYTES",
    ):
        assert getattr(reader, name) == getattr(writer, name), name


@pytest.mark.timeout(10)
def test_written_fields_read_back(tmp_path: Path) -> None:
    page = writer.ProgressPage(tmp_path / "p.page", rank=3, local_rank=1, world_size=8, incarnation=7)
    page.mark_step(41, now_ns=1_000, duration_ns=250)
    page.beat(2_000)
    page.set_group("0", enqueued=12, started=11, completed=10, now_ns=3_000)
    page.set_group("tp", enqueued=5, started=5, completed=5, now_ns=4_000)
    snap = reader.read_page(tmp_path / "p.page")
    assert snap is not None
    assert (snap.pid, snap.rank, snap.local_rank, snap.world_size, snap.incarnation) == (
        os.getpid(),
        3,
        1,
        8,
        7,
    )
    assert (snap.step, snap.step_mono_ns, snap.step_duration_ns, snap.heartbeat_mono_ns) == (
        41,
        1_000,
        250,
        2_000,
    )
    assert snap.progress_mono_ns == 4_000 and not snap.closed
    g0, tp = snap.groups
    assert (g0.name, g0.enqueued_seq, g0.started_seq, g0.completed_seq, g0.enqueued_mono_ns) == (
        "0",
        12,
        11,
        10,
        3_000,
    )
    assert g0.in_collective and not tp.in_collective and tp.name == "tp"
    page.set_group("0", enqueued=12, started=11, completed=12, now_ns=5_000)
    snap = reader.read_page(tmp_path / "p.page")
    assert (
        snap is not None
        and snap.groups[0].enqueued_mono_ns == 3_000
        and snap.groups[0].completed_mono_ns == 5_000
    )
    page.close()
    snap = reader.read_page(tmp_path / "p.page")
    assert snap is not None and snap.closed


@pytest.mark.timeout(10)
def test_groups_are_bounded_and_bad_pages_rejected(tmp_path: Path) -> None:
    page = writer.ProgressPage(tmp_path / "p.page", rank=0, local_rank=0, world_size=1, incarnation=1)
    for i in range(writer.MAX_GROUPS + 5):
        page.set_group(f"g{i}", 1, 1, 1, now_ns=i)
    snap = reader.read_page(tmp_path / "p.page")
    assert snap is not None and len(snap.groups) == writer.MAX_GROUPS
    page.close()
    (tmp_path / "junk").write_bytes(b"x" * reader.PAGE_SIZE_BYTES)
    assert reader.read_page(tmp_path / "junk") is None
    assert reader.read_page(tmp_path / "missing") is None
    with pytest.raises(reader.PageFormatError):
        reader.parse_page(b"short")
