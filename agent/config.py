"""Agent settings. Precedence: command-line argument > environment `KEDGE_AGENT_*` > default."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field, fields

DEFAULT_SOCKET_DIR = "/run/kedge"
ENV_PREFIX = "KEDGE_AGENT_"


@dataclass(kw_only=True, slots=True)
class Config:
    """How one node agent runs."""

    node_id: str = field(default_factory=socket.gethostname)
    """Stable id of this node (default: the hostname)."""
    job_id: str = "default"
    """Job this node belongs to."""
    coordinator: str | None = None
    """Coordinator HOST:PORT; None: standalone (torchrun-like restarts by the agent itself)."""
    nproc_per_node: int = 1
    """Ranks launched on this node (launcher mode)."""
    max_restarts: int = 0
    """Standalone mode: how many times all ranks are restarted after a failure."""
    socket_path: str = ""
    """Unix socket of the local service; default <run_dir>/agent.sock."""
    run_dir: str = ""
    """Directory for the socket and progress pages; default /dev/shm/kedge-<node>-<pid>."""
    metrics_addr: str = "127.0.0.1:0"
    """Prometheus /metrics listen address (loopback by default; port 0 picks one; '' turns it off)."""
    master_addr: str = "127.0.0.1"
    """Standalone mode: MASTER_ADDR for the ranks."""
    master_port: int = 0
    """Standalone mode: MASTER_PORT (0: a free port)."""
    address: str = ""
    """Address at which this node's ranks are reachable, sent to the coordinator."""
    tick_s: float = 0.1
    """Supervision period: process and page checks."""
    report_interval_s: float = 1.0
    """Period of summary reports to the coordinator."""
    stop_grace_s: float = 5.0
    """Bounded grace between SIGTERM and SIGKILL when stopping ranks."""
    frozen_margin_s: float = 3.0
    """Progress may be stale this long beyond the rank's p90 step period before a frozen verdict."""
    stopped_persist_s: float = 0.5
    """A rank must stay in state T (stopped) this long to be called frozen."""
    nvml: str = "auto"
    """NVML backend: auto | real | fake:<scenario.json> | off."""
    verdict_log: str = ""
    """Append every verdict as a JSON line to this file ('' off): an audit trail operators can grep."""
    report_buffer: int = 120
    """Reports kept while the coordinator is unreachable (oldest summaries dropped first)."""

    @classmethod
    def from_env(cls, overrides: dict[str, object], env: dict[str, str] | None = None) -> Config:
        """Builds a Config: `overrides` (non-None CLI values) win over KEDGE_AGENT_<FIELD> variables."""
        source = os.environ if env is None else env
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = source.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _coerce(f.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]


def _coerce(type_name: object, raw: str) -> object:
    text = str(type_name)
    if text.startswith("int"):
        return int(raw)
    if text.startswith("float"):
        return float(raw)
    return raw
