"""The machine line every GPU script prints: CPU, cores, Python, torch, CUDA, GPU names, driver, NCCL."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _driver() -> str:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return str(pynvml.nvmlSystemGetDriverVersion())
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:  # no library or no driver: say which
        return f"none ({type(exc).__name__})"


def machine_info() -> dict[str, Any]:
    """Versions and devices of this machine (never raises)."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "driver": _driver(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.version.cuda or "none"
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(count)]
        try:
            version = torch.cuda.nccl.version() if count else ()  # type: ignore[no-untyped-call]
            info["nccl"] = ".".join(str(x) for x in version) or "none"
        except Exception as exc:
            info["nccl"] = f"none ({type(exc).__name__})"
    except ImportError:
        info.update(torch="not installed", cuda="none", gpus=[], nccl="none")
    return info


def machine_line(info: dict[str, Any] | None = None) -> str:
    i = info or machine_info()
    gpus = ", ".join(i["gpus"]) if i["gpus"] else "no GPU"
    return (
        f"machine: {i['cpu']}; {i['cores']} cores; {len(i['gpus'])}x {gpus}; driver {i['driver']}; "
        f"python {i['python']}; torch {i['torch']} (CUDA {i['cuda']}); NCCL {i['nccl']}"
    )


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
