"""kedge.hooks: the library imported by each training process (init, step heartbeat, collective
telemetry, progress page, checkpoint glue).

    import kedge.hooks as kh
    kh.init()          # before torch.distributed.init_process_group (arms Flight Recorder)
    for step in ...:
        ...
        optimizer.step()  # a step boundary is marked automatically by an optimizer step hook
        # or kh.step(step) explicitly (then the optimizer hook stands aside)
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from kedge.hooks.runtime import Config, Runtime

__all__ = ["Config", "checkpoint_requested", "init", "restore_step", "shutdown", "step"]

log = logging.getLogger(__name__)

_lock = threading.Lock()
_runtime: Runtime | None = None
_explicit_steps = False
_hooked_optimizer: int | None = None


def init(config: Config | None = None) -> Runtime | None:
    """Starts the hooks from the agent's environment (idempotent). Without an agent environment it does
    nothing, says so once and returns None; `step()` is then a cheap no-op."""
    global _runtime
    with _lock:
        if _runtime is not None:
            return _runtime
        cfg = config or Config.from_env()
        if not cfg.progress_page and not cfg.agent_socket:
            log.info("kedge_hooks_disabled reason=no agent environment (KEDGE_AGENT_SOCKET unset)")
            return None
        runtime = Runtime(cfg)
        runtime.start()
        _install_optimizer_hook()
        _runtime = runtime
        log.info("kedge_hooks_started rank=%d incarnation=%d", cfg.rank, cfg.incarnation)
        return runtime


def step(n: int | None = None) -> None:
    """Marks a step boundary (heartbeat + step timing). Cheap; safe to call without init()."""
    global _explicit_steps
    _explicit_steps = True
    runtime = _runtime
    if runtime is not None:
        runtime.step(n)


def restore_step() -> int:
    """The checkpoint step the agent asked this incarnation to restore (-1 latest, -2 none)."""
    return _runtime.config.restore_step if _runtime is not None else Config.from_env().restore_step


def checkpoint_requested() -> bool:
    """True once the agent asked for a checkpoint at the next step boundary (then cleared)."""
    runtime = _runtime
    if runtime is None or not runtime.checkpoint_requested.is_set():
        return False
    runtime.checkpoint_requested.clear()
    return True


def shutdown() -> None:
    """Stops the side thread and marks the page closed (also run at exit)."""
    global _runtime
    with _lock:
        if _runtime is not None:
            _runtime.close()
            _runtime = None


def _install_optimizer_hook() -> None:
    try:
        from torch.optim.optimizer import register_optimizer_step_post_hook
    except ImportError:
        return
    register_optimizer_step_post_hook(_after_optimizer_step)


def _after_optimizer_step(optimizer: Any, args: Any, kwargs: Any) -> None:
    """One step per step of the first optimizer seen, unless the user marks steps with kh.step()."""
    global _hooked_optimizer
    runtime = _runtime
    if runtime is None or _explicit_steps:
        return
    if _hooked_optimizer is None:
        _hooked_optimizer = id(optimizer)
    if id(optimizer) == _hooked_optimizer:
        runtime.step(None)
