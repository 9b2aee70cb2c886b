"""Named failpoints: `maybe(name)` does nothing unless a test arms that name.

Armed by the environment variable `KEDGE_FAILPOINTS="name=action[,name=action]"` (read once, at the
first `maybe` call, so a child process inherits it) or in-process with `arm(name, action)`.
Actions: `kill` (SIGKILL this process: a crash that runs no cleanup), `raise` (raise InjectedFault),
`sleep:SECONDS`, `hang` (sleep until disarmed; bounded by _HANG_LIMIT_S so a test cannot hang forever).

Names used by the format (see docs/FORMAT.md, commit protocol): `ckpt.after_data` (data file written,
no fragment), `ckpt.before_fragment`, `ckpt.after_fragment`, `ckpt.before_manifest`,
`ckpt.after_manifest`. Other modules add their own names (prefix them with their component).
"""

from __future__ import annotations

import os
import signal
import threading
import time

ENV_VAR = "KEDGE_FAILPOINTS"
_HANG_LIMIT_S = 3600.0
_lock = threading.Lock()
_armed: dict[str, str] = {}
_env_loaded = False


class InjectedFault(RuntimeError):
    """Raised by a failpoint armed with `raise`."""


def _parse(spec: str) -> dict[str, str]:
    points: dict[str, str] = {}
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, action = item.partition("=")
        if not sep or not name or not action:
            raise ValueError(f"{ENV_VAR}: bad entry {item!r}; want name=action")
        _check_action(action)
        points[name.strip()] = action.strip()
    return points


def _check_action(action: str) -> None:
    if action in ("kill", "raise", "hang"):
        return
    if action.startswith("sleep:"):
        float(action.split(":", 1)[1])
        return
    raise ValueError(f"unknown failpoint action {action!r}; want kill, raise, sleep:SECONDS or hang")


def _load_env() -> None:
    global _env_loaded
    with _lock:
        if not _env_loaded:
            _armed.update(_parse(os.environ.get(ENV_VAR, "")))
            _env_loaded = True


def arm(name: str, action: str) -> None:
    """Arms failpoint `name` with `action` in this process."""
    _check_action(action)
    _load_env()
    with _lock:
        _armed[name] = action


def disarm(name: str | None = None) -> None:
    """Disarms one failpoint, or all of them when name is None."""
    _load_env()
    with _lock:
        if name is None:
            _armed.clear()
        else:
            _armed.pop(name, None)


def maybe(name: str) -> None:
    """Runs the action armed for `name`, if any; a dictionary lookup otherwise."""
    if not _env_loaded:
        _load_env()
    action = _armed.get(name)
    if action is None:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(_HANG_LIMIT_S)  # SIGKILL is asynchronous; never run past the failpoint
    elif action == "raise":
        raise InjectedFault(f"failpoint {name}")
    elif action.startswith("sleep:"):
        time.sleep(float(action.split(":", 1)[1]))
    elif action == "hang":
        deadline = time.monotonic() + _HANG_LIMIT_S
        while _armed.get(name) == "hang" and time.monotonic() < deadline:
            time.sleep(0.05)
