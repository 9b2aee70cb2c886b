"""One checkpoint in flight: its per-level status, and the handle returned by `save()`.

Levels, in order: "host" (this rank's snapshot is complete: training may mutate the state), "local"
and "remote" (committed at that level: the manifest is written). A level is pending, then exactly
one of reached, failed or skipped; "absent" when the checkpointer has no such level.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

LEVELS = ("host", "local", "remote")
PENDING = "pending"
REACHED = "reached"
FAILED = "failed"
SKIPPED = "skipped"
ABSENT = "absent"
_TERMINAL = frozenset({REACHED, FAILED, SKIPPED, ABSENT})


@dataclass(slots=True)
class LevelState:
    """Status of one level of one checkpoint."""

    status: str = PENDING
    error: BaseException | None = None
    reason: str = ""
    reached_monotonic_s: float = 0.0


@dataclass(slots=True, eq=False)
class CheckpointJob:
    """Engine-side record of one checkpoint; shared by the snapshot, writer and remote threads."""

    step: int
    shards: list[Any]
    values: dict[str, Any]
    levels: dict[str, LevelState]
    compute_event: Any = None  # torch.cuda.Event recorded on the compute stream at save()
    copy_done_event: Any = None  # torch.cuda.Event on the side stream after the last copy
    snapshot_device_s: float | None = None  # CUDA: compute event -> last copy done, on the device
    issued: threading.Event = field(default_factory=threading.Event)
    created_monotonic_s: float = field(default_factory=time.monotonic)
    state_bytes: int = 0
    encoded_bytes: int = 0
    slabs_outstanding: int = 0
    all_slabs_enqueued: bool = False
    files: set[str] = field(default_factory=set)
    writer: Any = None  # the RankWriter of the level written from host memory
    cond: threading.Condition = field(default_factory=threading.Condition)

    def status(self, level: str) -> str:
        with self.cond:
            return self.levels[level].status

    def is_pending(self, level: str) -> bool:
        return self.status(level) == PENDING

    def settle(
        self, level: str, status: str, *, error: BaseException | None = None, reason: str = ""
    ) -> bool:
        """Moves a pending level to a terminal status; False if it was already terminal."""
        with self.cond:
            state = self.levels[level]
            if state.status in _TERMINAL:
                return False
            state.status, state.error, state.reason = status, error, reason
            state.reached_monotonic_s = time.monotonic()
            self.cond.notify_all()
        if level == "host":
            self.issued.set()
        return True

    def settle_pending(self, status: str, *, error: BaseException | None = None, reason: str = "") -> None:
        """Settles every level still pending (used on abort and on skip)."""
        for level in LEVELS:
            self.settle(level, status, error=error, reason=reason)

    def wait_terminal(self, level: str, timeout_s: float | None) -> LevelState:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self.cond:
            while self.levels[level].status not in _TERMINAL:
                remaining_s = None if deadline is None else deadline - time.monotonic()
                if remaining_s is not None and remaining_s <= 0:
                    raise TimeoutError(f"checkpoint step={self.step} did not settle level={level} in time")
                self.cond.wait(remaining_s)
            return self.levels[level]

    def seconds_to(self, level: str) -> float | None:
        """Seconds from save() to reaching level, None if it has not been reached."""
        with self.cond:
            state = self.levels[level]
            if state.status != REACHED:
                return None
            return state.reached_monotonic_s - self.created_monotonic_s


def new_job(
    step: int, shards: list[Any], values: dict[str, Any], *, has_local: bool, has_remote: bool
) -> CheckpointJob:
    levels = {
        "host": LevelState(),
        "local": LevelState() if has_local else LevelState(status=ABSENT),
        "remote": LevelState() if has_remote else LevelState(status=ABSENT),
    }
    return CheckpointJob(step=step, shards=shards, values=values, levels=levels)


class CheckpointHandle:
    """What `Checkpointer.save()` returns: per-level status of one checkpoint and `wait(level)`."""

    def __init__(
        self,
        job: CheckpointJob,
        wait_host: Callable[[CheckpointJob, float | None], None],
        acknowledge: Callable[[CheckpointJob], None],
    ) -> None:
        self._job = job
        self._wait_host = wait_host
        self._acknowledge = acknowledge

    @property
    def step(self) -> int:
        return self._job.step

    def status(self, level: str) -> str:
        """One of pending, reached, failed, skipped, absent."""
        _check_level(level)
        return self._job.status(level)

    def reached(self, level: str) -> bool:
        return self.status(level) == REACHED

    def done(self, level: str = "local") -> bool:
        """Whether level has been reached (the synchronous handle's name for `reached`)."""
        return self.reached(level)

    def seconds_to(self, level: str) -> float | None:
        """Seconds from save() to the level, or None when it was not reached (yet)."""
        _check_level(level)
        return self._job.seconds_to(level)

    def snapshot_device_s(self) -> float | None:
        """CUDA only: seconds the device spent from the save point to the last copy (the snapshot's
        own duration, without the time the GPU was still busy with earlier work)."""
        return self._job.snapshot_device_s

    def wait(self, level: str = "local", timeout_s: float | None = None) -> bool:
        """Waits until level settles: True if reached, False if skipped; raises CheckpointFailed on
        failure, NotFoundError for a level this checkpointer does not have, TimeoutError after timeout_s."""
        from kedge.ckpt.errors import CheckpointFailed, NotFoundError

        _check_level(level)
        if level == "host":
            self._wait_host(self._job, timeout_s)
        state = self._job.wait_terminal(level, timeout_s)
        if state.status == ABSENT:
            raise NotFoundError(f"this Checkpointer has no {level} level")
        if state.status == FAILED:
            self._acknowledge(self._job)  # reported here: the next save() does not raise it again
            raise CheckpointFailed(f"checkpoint step={self.step} failed at level={level}: {state.reason}")
        return state.status == REACHED

    def __repr__(self) -> str:
        levels = ", ".join(f"{name}={self._job.status(name)}" for name in LEVELS)
        return f"CheckpointHandle(step={self.step}, {levels})"


def _check_level(level: str) -> None:
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; expected one of {', '.join(LEVELS)}")
