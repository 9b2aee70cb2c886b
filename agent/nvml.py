"""GPU health through NVML, behind one interface with a real backend (nvidia-ml-py) and a scripted fake.

`GpuMonitor` runs two threads: one polls snapshots (each probe with its own timeout, since NVML calls
can hang: a hung probe marks that GPU and is not retried until it returns), one waits on the XID event
set. On a machine without a GPU the real backend says so once and the monitor reports no GPUs.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Protocol

from kedge.agent.model import GpuHealth

log = logging.getLogger(__name__)

MAX_RECENT_XIDS = 16


class HealthBackend(Protocol):
    """What the monitor needs from NVML."""

    def gpu_count(self) -> int: ...
    def snapshot(self, index: int) -> GpuHealth: ...
    def wait_xid(self, timeout_s: float) -> list[tuple[int, int]]:
        """(gpu index, xid) events seen within `timeout_s`."""
        ...

    def close(self) -> None: ...


class NoGpuBackend:
    """No GPU (or no NVML): nothing to watch."""

    def gpu_count(self) -> int:
        return 0

    def snapshot(self, index: int) -> GpuHealth:
        raise IndexError(index)

    def wait_xid(self, timeout_s: float) -> list[tuple[int, int]]:
        time.sleep(timeout_s)
        return []

    def close(self) -> None:
        pass


class FakeNvml:
    """Scripted NVML for machines without a GPU. Script (JSON):
    {"gpus": 2, "events": [{"at_s": 1.0, "gpu": 0, "xid": 79},
                           {"at_s": 0.5, "gpu": 1, "set": {"throttle_reasons": 64}},
                           {"at_s": 2.0, "gpu": 0, "hang_s": 10}]}
    `at_s` counts from the backend's creation; an event with `"when_file": PATH` also waits until that
    file exists (so a test can trigger it); `set` overrides snapshot fields; `hang_s` makes the next
    snapshot of that GPU block (to exercise probe timeouts)."""

    def __init__(self, script: dict[str, Any]) -> None:
        self._t0 = time.monotonic()
        self._count = int(script.get("gpus", 1))
        self._events = sorted(script.get("events", []), key=lambda e: float(e.get("at_s", 0)))
        self._fields: dict[int, dict[str, Any]] = {i: {} for i in range(self._count)}
        self._xids: deque[tuple[int, int]] = deque(maxlen=256)
        self._hang_s: dict[int, float] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()

    @classmethod
    def from_file(cls, path: str) -> FakeNvml:
        return cls(json.loads(Path(path).read_text()))

    def _advance(self) -> None:
        elapsed = time.monotonic() - self._t0
        with self._lock:
            due = [e for e in self._events if float(e.get("at_s", 0)) <= elapsed and _triggered(e)]
            for event in due:
                self._events.remove(event)
                gpu = int(event.get("gpu", 0))
                if "xid" in event:
                    self._xids.append((gpu, int(event["xid"])))
                self._fields.setdefault(gpu, {}).update(event.get("set", {}))
                if "hang_s" in event:
                    self._hang_s[gpu] = float(event["hang_s"])

    def gpu_count(self) -> int:
        return self._count

    def snapshot(self, index: int) -> GpuHealth:
        self._advance()
        with self._lock:
            hang_s = self._hang_s.pop(index, 0.0)
            fields = dict(self._fields.get(index, {}))
        if hang_s:
            self._closed.wait(hang_s)
        base: dict[str, Any] = {"uuid": f"GPU-fake-{index}", "temperature_c": 40.0, "power_w": 80.0}
        base.update(fields)
        return GpuHealth(index=index, **base)

    def wait_xid(self, timeout_s: float) -> list[tuple[int, int]]:
        deadline = time.monotonic() + timeout_s
        while not self._closed.is_set():
            self._advance()
            with self._lock:
                if self._xids:
                    out = list(self._xids)
                    self._xids.clear()
                    return out
            if time.monotonic() >= deadline:
                return []
            self._closed.wait(min(0.05, timeout_s))
        return []

    def close(self) -> None:
        self._closed.set()


def _triggered(event: dict[str, Any]) -> bool:
    path = event.get("when_file")
    return path is None or Path(path).exists()


def make_backend(spec: str) -> HealthBackend:
    """auto | real | off | fake:<script.json>."""
    if spec == "off":
        return NoGpuBackend()
    if spec.startswith("fake:"):
        return FakeNvml.from_file(spec[len("fake:") :])
    try:
        from kedge.agent.nvml_real import RealNvml

        return RealNvml()
    except Exception as exc:  # no driver, no GPU, no library: say it once and go on
        if spec == "real":
            raise
        log.info("nvml_unavailable reason=%s (no GPU health on this node)", exc)
        return NoGpuBackend()


class GpuMonitor:
    """Keeps the latest snapshot of every GPU and the XIDs seen since the last `take()`."""

    def __init__(self, backend: HealthBackend, *, poll_s: float = 1.0, probe_timeout_s: float = 2.0) -> None:
        self.backend = backend
        self.poll_s = poll_s
        self.probe_timeout_s = probe_timeout_s
        self._latest: dict[int, GpuHealth] = {}
        self._xids: dict[int, deque[int]] = {}
        self._hung: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        if self.backend.gpu_count() == 0:
            return
        for target in (self._poll_loop, self._xid_loop):
            thread = threading.Thread(target=target, name="kedge-nvml", daemon=True)
            thread.start()
            self._threads.append(thread)

    def snapshots(self) -> list[GpuHealth]:
        """Latest health of every GPU, with the XIDs seen recently."""
        with self._lock:
            out = []
            for index, gpu in sorted(self._latest.items()):
                gpu.recent_xids = list(self._xids.get(index, ()))
                out.append(gpu)
            return out

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            for index in range(self.backend.gpu_count()):
                if index not in self._hung:
                    self._probe(index)
            self._stop.wait(self.poll_s)

    def _probe(self, index: int) -> None:
        result: list[GpuHealth] = []

        def call() -> None:
            try:
                result.append(self.backend.snapshot(index))
            except Exception as exc:
                log.warning("nvml_probe_failed gpu=%d error=%s", index, exc)
            finally:
                self._hung.discard(index)

        self._hung.add(index)
        thread = threading.Thread(target=call, name="kedge-nvml-probe", daemon=True)
        thread.start()
        thread.join(self.probe_timeout_s)
        if thread.is_alive():
            log.error("nvml_probe_hung gpu=%d timeout_s=%.1f", index, self.probe_timeout_s)
            return
        if result:
            with self._lock:
                self._latest[index] = result[0]

    def _xid_loop(self) -> None:
        while not self._stop.is_set():
            for index, xid in self.backend.wait_xid(min(self.poll_s, 1.0)):
                log.warning("nvml_xid gpu=%d xid=%d", index, xid)
                with self._lock:
                    self._xids.setdefault(index, deque(maxlen=MAX_RECENT_XIDS)).append(xid)
                    if index not in self._latest:
                        self._latest[index] = GpuHealth(index=index)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.probe_timeout_s + 1.0)
        self.backend.close()
