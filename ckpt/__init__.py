"""kedge.ckpt: the lazy asynchronous multi-level checkpointer and the universal checkpoint format.

torch is imported lazily (module `__getattr__`), so `import kedge.ckpt`, `ckpt --help` and format
inspection start fast and work without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "CheckpointFailed",
    "Checkpointer",
    "CkptError",
    "FormatError",
    "IntegrityError",
    "LocalShard",
    "NotFoundError",
    "RNGState",
    "StorageError",
    "load",
    "save",
]

_WHERE = {
    "Checkpointer": "kedge.ckpt.api",
    "save": "kedge.ckpt.api",
    "load": "kedge.ckpt.api",
    "LocalShard": "kedge.ckpt.state",
    "RNGState": "kedge.ckpt.state",
    "CkptError": "kedge.ckpt.errors",
    "FormatError": "kedge.ckpt.errors",
    "IntegrityError": "kedge.ckpt.errors",
    "NotFoundError": "kedge.ckpt.errors",
    "StorageError": "kedge.ckpt.errors",
    "CheckpointFailed": "kedge.ckpt.errors",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'kedge.ckpt' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
