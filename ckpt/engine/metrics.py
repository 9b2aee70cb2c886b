"""Plain, thread-safe counters of the checkpoint engine (the hooks or the agent export them).

No metrics library is imported here: kedge.ckpt stays free of the control plane.
"""

from __future__ import annotations

import threading
from collections import defaultdict


class CheckpointMetrics:
    """Monotonic counters keyed by name (e.g. `failed_local`, `skipped_remote`, `retries_remote`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: defaultdict[str, float] = defaultdict(float)

    def add(self, name: str, amount: float = 1.0) -> None:
        with self._lock:
            self._counts[name] += amount

    def get(self, name: str) -> float:
        with self._lock:
            return self._counts.get(name, 0.0)

    def snapshot(self) -> dict[str, float]:
        """A copy of every counter, for export."""
        with self._lock:
            return dict(self._counts)
