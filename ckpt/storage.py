"""Storage: one checkpoint root on any fsspec URL (a path, file://, s3://, gs://, memory://, ...).

Layout: `<root>/step-<step as 12 zero-padded digits>/` holds `data-<rank>.bin` (every chunk that rank
wrote, back to back), `fragment-<rank>.json` (that rank's chunk records and values) and, once
committed, `manifest.json`.

Commit protocol (no collective needed; named failpoints in brackets):
1. Every rank writes its data file(s) completely (and fsyncs them on a local file system)
   [ckpt.after_data].
2. Every rank then writes its fragment atomically [ckpt.before_fragment, ckpt.after_fragment].
3. Rank 0 (`kedge.ckpt.writer.commit_step`, any thread) waits, bounded, until all world_size
   fragments exist, merges them and writes `manifest.json` LAST, atomically [ckpt.before_manifest,
   ckpt.after_manifest]: on a local file system write to a temporary name, fsync, rename, fsync the
   directory; on an object store one single PUT (objects appear whole or not at all).
A step directory is committed iff its manifest exists; only committed steps are listed as loadable
(`committed_steps`) or loaded. A crash at any point leaves earlier committed steps untouched; the
partial directory it leaves (`all_step_dirs` shows it) is removed by the next commit (debris
cleanup removes uncommitted steps older than the newly committed one; newer ones may still be
in flight and are kept).
A save repeated at the same step after a crash: each RankWriter first deletes its own old fragment,
so rank 0 normally waits for fresh ones; should rank 0 still catch a stale fragment before its rank
deleted it, the manifest points at byte ranges of a data file being rewritten, and the CRC check
refuses the load (never silent). The asynchronous engine avoids this by never reusing a step.
Atomic single-file writes on local disk use a temporary name `.<name>.tmp-<pid>-<thread>` in the
same directory, which a reader never mistakes for a manifest.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import IO, Any, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem
from kedge.ckpt.errors import NotFoundError, StorageError

MANIFEST_NAME = "manifest.json"
STEP_DIR_RE = re.compile(r"^step-(\d{12})$")
_T = TypeVar("_T")


def step_dir(step: int) -> str:
    """`step-%012d`: zero-padded so names sort in step order."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return f"step-{step:012d}"


def data_file(rank: int) -> str:
    return f"data-{rank:05d}.bin"


def fragment_file(rank: int) -> str:
    return f"fragment-{rank:05d}.json"


def _is_no_credentials(exc: BaseException) -> bool:
    return type(exc).__name__ in ("NoCredentialsError", "PartialCredentialsError")


class Storage:
    """A checkpoint root; every path argument is relative to it and uses '/' separators."""

    def __init__(self, url: str, **fsspec_options: Any) -> None:
        self.url = url
        try:
            fs, root = fsspec.core.url_to_fs(url, **fsspec_options)
        except (ImportError, ValueError) as exc:
            raise StorageError(f"cannot open {url}: {exc}") from exc
        self.fs: Any = fs
        self.local = isinstance(fs, LocalFileSystem)
        self.root = os.path.abspath(root) if self.local else root.rstrip("/")

    def __repr__(self) -> str:
        return f"Storage({self.url!r})"

    def step_dir(self, step: int) -> str:
        return step_dir(step)

    def path(self, relpath: str) -> str:
        return f"{self.root}/{relpath}" if relpath else self.root

    @contextmanager
    def _errors(self, what: str, relpath: str) -> Iterator[None]:
        try:
            yield
        except FileNotFoundError as exc:
            raise NotFoundError(f"{self.path(relpath)}: not found") from exc
        except Exception as exc:
            if _is_no_credentials(exc):
                raise StorageError(f"{self.url}: no credentials (set AWS_* or pass storage options)") from exc
            if isinstance(exc, OSError | PermissionError) or type(exc).__module__.startswith(
                ("botocore", "aiobotocore", "s3fs", "fsspec", "aiohttp")
            ):
                raise StorageError(f"{what} {self.path(relpath)}: {type(exc).__name__}: {exc}") from exc
            raise

    def _call(self, what: str, relpath: str, fn: Callable[[], _T]) -> _T:
        with self._errors(what, relpath):
            return fn()

    def open_write(self, relpath: str) -> IO[bytes]:
        """A binary file to write sequentially (a streaming multipart upload on object stores)."""
        path = self.path(relpath)
        with self._errors("open", relpath):
            if self.local:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                return open(path, "wb")
            return self.fs.open(path, "wb", block_size=64 << 20)  # type: ignore[no-any-return]

    def write_bytes(self, relpath: str, data: bytes) -> None:
        """Writes a whole file atomically: readers see the old state or all of data."""
        path = self.path(relpath)
        with self._errors("write", relpath):
            if not self.local:
                self.fs.pipe_file(path, data)
                return
            parent = os.path.dirname(path)
            os.makedirs(parent, exist_ok=True)
            tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp-{os.getpid()}-{threading.get_ident()}")
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            fsync_dir(parent)

    def read_range(self, relpath: str, start: int, length: int) -> bytes:
        """Exactly `length` bytes at `start`; StorageError if the file is shorter."""
        path = self.path(relpath)
        with self._errors("read", relpath):
            if self.local:
                with open(path, "rb", buffering=0) as f:
                    data = os.pread(f.fileno(), length, start)
            else:
                data = self.fs.cat_file(path, start=start, end=start + length)
        if len(data) != length:
            raise StorageError(f"read {path}: wanted {length} bytes at {start}, got {len(data)} (truncated?)")
        return bytes(data)

    def read_range_into(self, relpath: str, start: int, buf: memoryview) -> None:
        """Reads len(buf) bytes at start straight into buf (no extra copy on local disk)."""
        if not self.local:
            buf[:] = self.read_range(relpath, start, len(buf))
            return
        path = self.path(relpath)
        with self._errors("read", relpath), open(path, "rb", buffering=0) as f:
            got = 0
            while got < len(buf):
                n = os.preadv(f.fileno(), [buf[got:]], start + got)
                if n <= 0:
                    raise StorageError(f"read {path}: truncated at {start + got}")
                got += n

    def read_bytes(self, relpath: str) -> bytes:
        return bytes(self._call("read", relpath, lambda: self.fs.cat_file(self.path(relpath))))

    def exists(self, relpath: str) -> bool:
        if self.local:
            return os.path.exists(self.path(relpath))
        return bool(self._call("stat", relpath, lambda: self.fs.exists(self.path(relpath))))

    def size(self, relpath: str) -> int:
        return int(self._call("stat", relpath, lambda: self.fs.size(self.path(relpath))))

    def list_dir(self, relpath: str = "") -> list[str]:
        """Names (not paths) directly under relpath; [] if it does not exist."""
        path = self.path(relpath)
        if self.local:
            try:
                return sorted(os.listdir(path))
            except FileNotFoundError:
                return []
            except OSError as exc:
                raise StorageError(f"list {path}: {exc}") from exc
        with self._errors("list", relpath):
            self.fs.invalidate_cache()
            try:
                entries = self.fs.ls(path, detail=False)
            except FileNotFoundError:
                return []
        return sorted(str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries)

    def remove_tree(self, relpath: str) -> None:
        """Removes a directory and everything under it (no error if it is gone)."""
        path = self.path(relpath)
        with self._errors("remove", relpath):
            try:
                self.fs.rm(path, recursive=True)
            except FileNotFoundError:
                return
        if not self.local:
            # stores with real directories (SeaweedFS) keep an empty "dir/" entry that would still be
            # listed; deleting that key removes it, and is a no-op on plain object stores
            with self._errors("remove", relpath), suppress(FileNotFoundError):
                self.fs.rm_file(path + "/")
            self.fs.invalidate_cache()

    def remove(self, relpath: str) -> None:
        with self._errors("remove", relpath):
            try:
                self.fs.rm_file(self.path(relpath))
            except FileNotFoundError:
                return

    def all_step_dirs(self) -> list[int]:
        """Steps of every step directory, committed or partial, ascending."""
        steps = []
        for name in self.list_dir(""):
            m = STEP_DIR_RE.match(name)
            if m:
                steps.append(int(m.group(1)))
        return sorted(steps)

    def is_committed(self, step: int) -> bool:
        return self.exists(f"{step_dir(step)}/{MANIFEST_NAME}")

    def committed_steps(self) -> list[int]:
        """Steps whose manifest exists (and so is complete: it is written atomically), ascending."""
        if self.local:
            return [s for s in self.all_step_dirs() if self.is_committed(s)]
        pattern = self.path(f"step-*/{MANIFEST_NAME}")
        with self._errors("list", ""):
            self.fs.invalidate_cache()
            found = self.fs.glob(pattern)
        steps = []
        for p in found:
            m = STEP_DIR_RE.match(str(p).rstrip("/").split("/")[-2])
            if m:
                steps.append(int(m.group(1)))
        return sorted(steps)


def fsync_dir(path: str) -> None:
    """Makes a rename in `path` durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
