"""The agent's real NVML health monitor on this machine: every GpuHealth field it reads per GPU (and
which NVML queries failed and were read as 0), then its monitor threads (snapshot poll and XID event
wait) run for `--seconds` and stop; any error they log or raise is reported.

    python3 tests/gpu/nvml_dump.py --seconds 5 --json nvml.json

Exits 2 with one line on a machine without NVML (no library, no driver or no GPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import linecache
import logging
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpu_machine import machine_info, machine_line, print_table


class Recorder(logging.Handler):
    """Keeps every WARNING+ record of the agent's NVML modules, and thread crashes."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("nvml_xid "):
            return  # an XID the GPU reported is an event, listed with the monitor's XIDs
        self.errors.append(f"{record.levelname} {record.name}: {record.getMessage()}")

    def thread_crash(self, args: threading.ExceptHookArgs) -> None:
        name = args.thread.name if args.thread else "?"
        self.errors.append(f"thread {name} crashed: {args.exc_type.__name__}: {args.exc_value}")


def watch_failed_queries(nvml_real: Any) -> list[str]:
    """Wraps the backend's `_or_zero` so each NVML query that fails is named (by its source line)."""
    failed: list[str] = []

    def recording(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except nvml_real.pynvml.NVMLError as exc:
            code = fn.__code__
            line = linecache.getline(code.co_filename, code.co_firstlineno).strip()
            failed.append(f"{line[:90]} -> {exc}")
            return 0

    nvml_real._or_zero = recording
    return failed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0, help="how long the monitor threads run")
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    recorder = Recorder()  # before the backend: registering XID events may already warn
    for name in ("kedge.agent.nvml", "kedge.agent.nvml_real"):
        logging.getLogger(name).addHandler(recorder)
    threading.excepthook = recorder.thread_crash
    try:
        from kedge.agent import nvml_real

        backend = nvml_real.RealNvml()
    except Exception as exc:
        print(f"nvml_dump: no NVML on this machine ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 2
    from kedge.agent.nvml import GpuMonitor

    info = machine_info()
    print(machine_line(info), flush=True)
    failed = watch_failed_queries(nvml_real)
    snapshots = []
    for index in range(backend.gpu_count()):
        try:
            snapshots.append(dataclasses.asdict(backend.snapshot(index)))
        except Exception as exc:  # not an NVMLError (those read as 0): the agent's probe would fail too
            recorder.errors.append(f"snapshot of gpu {index} failed: {type(exc).__name__}: {exc}")
    print_fields(snapshots)
    print(f"\nNVML queries that failed (read as 0): {len(set(failed))}")
    for line in sorted(set(failed)):
        print(f"  {line}")
    monitor = run_monitor(GpuMonitor(backend, poll_s=1.0), args.seconds)
    print(
        f"\nmonitor ran {args.seconds:.1f} s: {monitor['threads']} threads, "
        f"{monitor['snapshots']} GPUs with snapshots, XIDs {monitor['xids']}, "
        f"stopped cleanly: {monitor['stopped']}"
    )
    print(f"errors: {len(recorder.errors)}")
    for line in recorder.errors:
        print(f"  {line}")
    if args.json:
        doc = {"machine": info, "snapshots": snapshots, "failed_queries": sorted(set(failed))}
        doc.update(monitor=monitor, errors=recorder.errors)
        Path(args.json).write_text(json.dumps(doc, indent=2))
    ok = monitor["stopped"] and monitor["alive_before_stop"] == monitor["threads"] == 2
    return 0 if ok and not recorder.errors else 1


def print_fields(snapshots: list[dict[str, Any]]) -> None:
    if not snapshots:
        print("no GPU")
        return
    fields = list(snapshots[0])
    rows = [[f, *(str(s[f]) for s in snapshots)] for f in fields]
    print_table(["field", *(f"gpu {s['index']}" for s in snapshots)], rows)


def run_monitor(monitor: Any, seconds: float) -> dict[str, Any]:
    """Starts the agent's GpuMonitor (poll + XID threads), lets it run, stops it."""
    monitor.start()
    threads = [t for t in monitor._threads if t.is_alive()]
    time.sleep(seconds)
    snaps = monitor.snapshots()
    alive_before_stop = sum(t.is_alive() for t in threads)
    monitor.stop()
    return {
        "threads": len(threads),
        "alive_before_stop": alive_before_stop,
        "snapshots": len(snaps),
        "xids": {s.index: s.recent_xids for s in snaps if s.recent_xids},
        "stopped": not any(t.is_alive() for t in threads),
    }


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    sys.exit(main())
