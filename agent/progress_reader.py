"""Reads a rank's progress page (layout: docs/PROGRESS.md) without any help from the rank.

The agent must not import kedge.hooks (import boundary), so the layout constants are repeated here;
tests/contract/agent/test_progress_layout.py writes pages with the hooks and reads them back with this
module, so the two cannot drift apart silently.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

MAGIC = b"KEDGEPG\x00"
VERSION = 1
HEADER_SIZE_BYTES = 128
GROUP_SIZE_BYTES = 96
MAX_GROUPS = 16
PAGE_SIZE_BYTES = HEADER_SIZE_BYTES + MAX_GROUPS * GROUP_SIZE_BYTES
FLAG_CLOSED = 1

_HEADER = struct.Struct("<8sII4i7qQ")  # magic .. flags, offsets 0..95
_GROUP = struct.Struct("<32s6q")


@dataclass(slots=True, frozen=True)
class GroupSnapshot:
    """One process group's sequence numbers and the monotonic time each last changed."""

    name: str
    enqueued_seq: int
    started_seq: int
    completed_seq: int
    enqueued_mono_ns: int
    started_mono_ns: int
    completed_mono_ns: int

    @property
    def in_collective(self) -> bool:
        """True when a collective was enqueued and has not completed (waiting on peers or the link)."""
        return self.enqueued_seq > self.completed_seq


@dataclass(slots=True, frozen=True)
class PageSnapshot:
    """A rank's page as read at one moment."""

    pid: int
    rank: int
    local_rank: int
    world_size: int
    incarnation: int
    step: int
    step_mono_ns: int
    step_duration_ns: int
    heartbeat_mono_ns: int
    progress_mono_ns: int
    created_mono_ns: int
    closed: bool
    groups: tuple[GroupSnapshot, ...] = field(default=())


class PageFormatError(ValueError):
    """The file is not a progress page of a version this agent reads."""


def parse_page(data: bytes) -> PageSnapshot:
    """Parses the bytes of a page; raises PageFormatError on a wrong magic, version or size."""
    if len(data) < PAGE_SIZE_BYTES:
        raise PageFormatError(f"page too short: {len(data)} bytes")
    fields = _HEADER.unpack_from(data, 0)
    magic, version, n_groups = fields[0], fields[1], fields[2]
    if magic != MAGIC:
        raise PageFormatError("bad magic (page not initialised yet?)")
    if version != VERSION:
        raise PageFormatError(f"unsupported page version {version}")
    pid, rank, local_rank, world_size = fields[3:7]
    incarnation, step, step_ns, duration_ns, heartbeat_ns, progress_ns, created_ns = fields[7:14]
    groups = tuple(_parse_group(data, i) for i in range(min(n_groups, MAX_GROUPS)))
    return PageSnapshot(
        pid=pid,
        rank=rank,
        local_rank=local_rank,
        world_size=world_size,
        incarnation=incarnation,
        step=step,
        step_mono_ns=step_ns,
        step_duration_ns=duration_ns,
        heartbeat_mono_ns=heartbeat_ns,
        progress_mono_ns=progress_ns,
        created_mono_ns=created_ns,
        closed=bool(fields[14] & FLAG_CLOSED),
        groups=groups,
    )


def _parse_group(data: bytes, index: int) -> GroupSnapshot:
    name, enq, started, done, enq_ns, started_ns, done_ns = _GROUP.unpack_from(
        data, HEADER_SIZE_BYTES + index * GROUP_SIZE_BYTES
    )
    return GroupSnapshot(
        name=name.rstrip(b"\x00").decode(errors="replace"),
        enqueued_seq=enq,
        started_seq=started,
        completed_seq=done,
        enqueued_mono_ns=enq_ns,
        started_mono_ns=started_ns,
        completed_mono_ns=done_ns,
    )


def read_page(path: str | os.PathLike[str]) -> PageSnapshot | None:
    """Reads a page file; None while it does not exist or is not initialised yet."""
    try:
        with open(path, "rb") as f:
            data = f.read(PAGE_SIZE_BYTES)
        return parse_page(data)
    except (FileNotFoundError, PageFormatError):
        return None
