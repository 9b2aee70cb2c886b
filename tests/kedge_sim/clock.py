"""A seeded, replayable discrete-event clock.

Events are (time, sequence, callback); the sequence number breaks ties in scheduling order, so two
runs with the same seed execute the same events in the same order. All randomness of a simulation
comes from one `numpy.random.Generator` created here from the seed, which is printed at start.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

Callback = Callable[[float], None]


@dataclass(order=True, slots=True)
class _Event:
    at_s: float
    seq: int
    callback: Callback = field(compare=False)


class VirtualClock:
    """Virtual time in seconds; `run_until` executes due events in (time, scheduling) order."""

    def __init__(self, seed: int, *, announce: bool = True) -> None:
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.now_s = 0.0
        self._queue: list[_Event] = []
        self._seq = 0
        self.events_run = 0
        if announce:
            print(f"kedge-sim seed={seed}", flush=True)

    def at(self, at_s: float, callback: Callback) -> None:
        """Schedules `callback(now_s)` at virtual time `at_s` (never in the past)."""
        self._seq += 1
        heapq.heappush(self._queue, _Event(max(at_s, self.now_s), self._seq, callback))

    def after(self, delay_s: float, callback: Callback) -> None:
        self.at(self.now_s + delay_s, callback)

    def every(self, period_s: float, callback: Callback, *, phase_s: float = 0.0) -> None:
        """Schedules `callback` every `period_s`, first at now + phase, for as long as the run goes."""

        def fire(now_s: float) -> None:
            callback(now_s)
            self.at(now_s + period_s, fire)

        self.at(self.now_s + phase_s, fire)

    def run_until(self, end_s: float, stop: Callable[[], bool] | None = None) -> None:
        """Runs events up to `end_s` inclusive, or until `stop()` turns true after an event."""
        while self._queue and self._queue[0].at_s <= end_s:
            event = heapq.heappop(self._queue)
            self.now_s = event.at_s
            event.callback(event.at_s)
            self.events_run += 1
            if stop is not None and stop():
                return
        self.now_s = max(self.now_s, end_s)

    @property
    def pending(self) -> int:
        return len(self._queue)
