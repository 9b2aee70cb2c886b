"""The rank's progress page: a fixed binary record in shared memory that the node agent reads directly.

The layout is specified in docs/PROGRESS.md; `kedge.agent.progress_reader` reads it and a contract
test checks that writer and reader agree. Every field is an aligned 8-byte (or smaller) slot written
with one `struct.pack_into`, so the writer never takes a lock and a reader sees each field either old
or new. The page is a file in /dev/shm (tmpfs) mapped with mmap: it outlives a frozen or dead writer,
which is the point.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from pathlib import Path

MAGIC = b"KEDGEPG\x00"
VERSION = 1
HEADER_SIZE_BYTES = 128
GROUP_SIZE_BYTES = 96
MAX_GROUPS = 16
PAGE_SIZE_BYTES = HEADER_SIZE_BYTES + MAX_GROUPS * GROUP_SIZE_BYTES
GROUP_NAME_BYTES = 32
FLAG_CLOSED = 1

# Header field offsets (see docs/PROGRESS.md).
OFF_MAGIC = 0
OFF_VERSION = 8
OFF_N_GROUPS = 12
OFF_PID = 16
OFF_RANK = 20
OFF_LOCAL_RANK = 24
OFF_WORLD_SIZE = 28
OFF_INCARNATION = 32
OFF_STEP = 40
OFF_STEP_MONO_NS = 48
OFF_STEP_DURATION_NS = 56
OFF_HEARTBEAT_MONO_NS = 64
OFF_PROGRESS_MONO_NS = 72
OFF_CREATED_MONO_NS = 80
OFF_FLAGS = 88
# Group slot field offsets, relative to the slot.
GOFF_NAME = 0
GOFF_ENQUEUED_SEQ = 32
GOFF_STARTED_SEQ = 40
GOFF_COMPLETED_SEQ = 48
GOFF_ENQUEUED_NS = 56
GOFF_STARTED_NS = 64
GOFF_COMPLETED_NS = 72

_I64 = struct.Struct("<q")
_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class ProgressPage:
    """Writer side of one rank's page. `mark_step` runs on the training thread (three pack_into calls);
    `beat` and `set_group` run on the hooks' side thread."""

    def __init__(
        self, path: str | os.PathLike[str], *, rank: int, local_rank: int, world_size: int, incarnation: int
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, PAGE_SIZE_BYTES)
            self._map = mmap.mmap(fd, PAGE_SIZE_BYTES)
        finally:
            os.close(fd)
        self._groups: dict[str, int] = {}
        now = time.monotonic_ns()
        buf = self._map
        for offset, value in (
            (OFF_PID, os.getpid()),
            (OFF_RANK, rank),
            (OFF_LOCAL_RANK, local_rank),
            (OFF_WORLD_SIZE, world_size),
        ):
            _I32.pack_into(buf, offset, value)
        _U32.pack_into(buf, OFF_VERSION, VERSION)
        _I64.pack_into(buf, OFF_INCARNATION, incarnation)
        _I64.pack_into(buf, OFF_STEP, -1)
        for offset in (OFF_STEP_MONO_NS, OFF_HEARTBEAT_MONO_NS, OFF_PROGRESS_MONO_NS, OFF_CREATED_MONO_NS):
            _I64.pack_into(buf, offset, now)
        # Magic last: a reader never accepts a half-initialised page.
        buf[OFF_MAGIC : OFF_MAGIC + 8] = MAGIC

    def mark_step(self, step: int, now_ns: int, duration_ns: int) -> None:
        """Records a step boundary (training thread: no syscalls, no allocation beyond ints)."""
        buf = self._map
        _I64.pack_into(buf, OFF_STEP_DURATION_NS, duration_ns)
        _I64.pack_into(buf, OFF_STEP_MONO_NS, now_ns)
        _I64.pack_into(buf, OFF_STEP, step)
        _I64.pack_into(buf, OFF_PROGRESS_MONO_NS, now_ns)

    def beat(self, now_ns: int) -> None:
        """Liveness: bumped by the side thread while the interpreter can run Python."""
        _I64.pack_into(self._map, OFF_HEARTBEAT_MONO_NS, now_ns)

    def set_group(self, name: str, enqueued: int, started: int, completed: int, now_ns: int) -> None:
        """Updates one process group's sequence numbers; a changed sequence gets the time `now_ns`."""
        slot = self._slot(name)
        if slot is None:
            return
        buf = self._map
        changed = False
        for seq_off, ns_off, value in (
            (GOFF_ENQUEUED_SEQ, GOFF_ENQUEUED_NS, enqueued),
            (GOFF_STARTED_SEQ, GOFF_STARTED_NS, started),
            (GOFF_COMPLETED_SEQ, GOFF_COMPLETED_NS, completed),
        ):
            if _I64.unpack_from(buf, slot + seq_off)[0] != value:
                _I64.pack_into(buf, slot + ns_off, now_ns)
                _I64.pack_into(buf, slot + seq_off, value)
                changed = True
        if changed:
            _I64.pack_into(buf, OFF_PROGRESS_MONO_NS, now_ns)

    def _slot(self, name: str) -> int | None:
        slot = self._groups.get(name)
        if slot is not None:
            return slot
        index = len(self._groups)
        if index >= MAX_GROUPS:
            return None  # bounded: further groups are not tracked on the page
        slot = HEADER_SIZE_BYTES + index * GROUP_SIZE_BYTES
        encoded = name.encode()[:GROUP_NAME_BYTES].ljust(GROUP_NAME_BYTES, b"\x00")
        self._map[slot + GOFF_NAME : slot + GOFF_NAME + GROUP_NAME_BYTES] = encoded
        for off in (GOFF_ENQUEUED_SEQ, GOFF_STARTED_SEQ, GOFF_COMPLETED_SEQ):
            _I64.pack_into(self._map, slot + off, -1)
        self._groups[name] = slot
        _U32.pack_into(self._map, OFF_N_GROUPS, index + 1)
        return slot

    def close(self, *, clean: bool = True) -> None:
        """Marks the page closed (a clean exit) and unmaps it; the file stays for the agent to read."""
        if self._map.closed:
            return
        if clean:
            _U64.pack_into(self._map, OFF_FLAGS, FLAG_CLOSED)
        self._map.close()
