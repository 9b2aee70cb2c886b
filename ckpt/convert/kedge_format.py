"""kedge checkpoints in and out (waits for the format's reader, writer and storage)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from kedge.ckpt.convert.base import ConvertError

_STEP_DIR = re.compile(r"^step-(\d+)$")


def is_kedge_root(src: str) -> bool:
    """A local directory holding `step-<n>` directories (or one such step directory)."""
    path = Path(src.removeprefix("file://"))
    if not path.is_dir():
        return False
    return bool(_STEP_DIR.match(path.name)) or any(_STEP_DIR.match(p.name) for p in path.iterdir())


class KedgeSource:
    def __init__(self, src: str, *, step: int | None = None) -> None:
        raise ConvertError(f"{src}: kedge format: not implemented yet")

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(name)


class KedgeSink(KedgeSource):
    def __init__(self, dst: str, *, overwrite: bool, codec: str, step: int | None) -> None:
        raise ConvertError(f"{dst}: kedge format: not implemented yet")
