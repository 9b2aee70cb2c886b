"""Atomic local outputs: write under a hidden temporary name next to the target, rename on commit.

Protocol (atomic rename): every byte goes to `.<name>.kedge-tmp-<pid>` in the target's directory, so
an interrupted conversion leaves only a hidden temporary that no reader takes for an output. On
commit the temporary is fsynced and renamed to the final name (rename(2) is atomic within one
file system). With overwrite, an existing output is first renamed aside and removed only after the
new one is in place, so a crash in between leaves either the old or the new output, never a mix.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from kedge.ckpt.convert.base import ConvertError


class StagedPath:
    """A file or directory written under a temporary name and renamed into place on commit."""

    def __init__(self, final: Path, *, overwrite: bool, is_dir: bool) -> None:
        self.final = final
        self.is_dir = is_dir
        self._overwrite = overwrite
        if final.exists() and not overwrite:
            raise ConvertError(f"{final}: output exists (pass --overwrite to replace it)")
        if not final.parent.is_dir():
            raise ConvertError(f"{final.parent}: output directory does not exist")
        self.path = final.parent / f".{final.name}.kedge-tmp-{os.getpid()}"

    def create(self) -> None:
        """Starts writing: clears a leftover temporary of this pid and makes the directory."""
        _remove(self.path)
        if self.is_dir:
            self.path.mkdir()

    def commit(self) -> None:
        _fsync_tree(self.path)
        aside = self.final.parent / f".{self.final.name}.kedge-old-{os.getpid()}"
        had_old = self.final.exists() or self.final.is_symlink()
        if had_old:
            if not self._overwrite:
                raise ConvertError(f"{self.final}: output appeared while converting; not replaced")
            os.replace(self.final, aside)
        os.replace(self.path, self.final)
        _fsync_dir(self.final.parent)
        if had_old:
            _remove(aside)

    def abort(self) -> None:
        _remove(self.path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _fsync_tree(path: Path) -> None:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for file in files:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    if path.is_dir():
        _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
