"""Synchronous save and load (`kedge.ckpt.save/load`) and the `Checkpointer`.

In a multi-rank job every rank calls `save` with its own state: each rank writes its shards and its
fragment; rank 0 commits (writes the manifest) with no collective; the other ranks then wait, polling
storage (bounded by timeout_s), until the commit is visible, so that when `save` returns on any rank
the step is loadable. Rank and world size come from torch.distributed when it is initialized.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Mapping, MutableMapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from kedge.ckpt.errors import CkptError, NotFoundError
from kedge.ckpt.manifest import DTYPE_ITEMSIZE, Manifest
from kedge.ckpt.reader import latest_step, load_into
from kedge.ckpt.state import SavePlan, TensorShard, plan_save, split_box
from kedge.ckpt.storage import Storage, step_dir
from kedge.ckpt.writer import RankWriter, commit_step, wait_committed

log = logging.getLogger(__name__)

DEFAULT_CHUNK_BYTES = 64 << 20
DEFAULT_WRITE_THREADS = 4
DEFAULT_TIMEOUT_S = 600.0


def current_rank_world() -> tuple[int, int]:
    """(rank, world_size) from torch.distributed if initialized, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _as_storage(url: str | os.PathLike[str] | Storage, options: Mapping[str, Any] | None) -> Storage:
    return url if isinstance(url, Storage) else Storage(os.fspath(url), **dict(options or {}))


def shard_bytes(shard: TensorShard) -> memoryview:
    """The shard's bytes as a flat uint8 memoryview (copied to CPU/contiguous only if needed)."""
    t = shard.tensor.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    flat = t.reshape(-1).view(torch.uint8)
    return memoryview(flat.numpy())  # type: ignore[arg-type]


def write_shards(writer: RankWriter, shards: list[TensorShard], *, chunk_bytes: int, threads: int) -> None:
    """Streams every shard this rank writes as chunks of at most chunk_bytes, encoded on a pool."""
    max_in_flight = max(1, threads) * 2
    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="kedge-ckpt-write") as pool:
        pending: list[Future[Any]] = []
        for shard in shards:
            if not shard.write:
                continue
            data = shard_bytes(shard)
            itemsize = DTYPE_ITEMSIZE[shard.dtype]
            for offsets, sizes in split_box(shard.offsets, shard.sizes, itemsize, chunk_bytes):
                start = _byte_start(shard, offsets, itemsize)
                piece = data[start : start + math.prod(sizes) * itemsize]
                pending.append(
                    pool.submit(
                        writer.add_chunk, shard.name, shard.dtype, shard.global_shape, offsets, sizes, piece
                    )
                )
                if len(pending) >= max_in_flight:  # bound memory held by encoded buffers
                    pending.pop(0).result()
        for f in pending:
            f.result()


def _byte_start(shard: TensorShard, offsets: tuple[int, ...], itemsize: int) -> int:
    start, stride = 0, itemsize
    for d in reversed(range(len(shard.sizes))):
        start += (offsets[d] - shard.offsets[d]) * stride
        stride *= shard.sizes[d]
    return start


def save_plan(
    storage: Storage,
    step: int,
    plan: SavePlan,
    rank: int,
    world_size: int,
    *,
    codec: str = "zstd",
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    threads: int = DEFAULT_WRITE_THREADS,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    extra: dict[str, Any] | None = None,
) -> Manifest | None:
    """Writes this rank's part of step; rank 0 commits and returns the manifest, others wait."""
    writer = RankWriter(storage, step, rank, codec)
    write_shards(writer, plan.shards, chunk_bytes=chunk_bytes, threads=threads)
    writer.finish(plan.values if rank == 0 else None)
    if rank == 0:
        return commit_step(storage, step, world_size, timeout_s=timeout_s, extra=extra)
    wait_committed(storage, step, timeout_s=timeout_s)
    return None


def save(
    url: str | os.PathLike[str] | Storage,
    state: Mapping[str, Any],
    *,
    step: int = 0,
    codec: str = "zstd",
    storage_options: Mapping[str, Any] | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    allow_pickle: bool = False,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    threads: int = DEFAULT_WRITE_THREADS,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> None:
    """Saves state as `step` under url, synchronously, on every rank; refuses a committed step."""
    storage = _as_storage(url, storage_options)
    if rank is None or world_size is None:
        rank, world_size = current_rank_world()
    if storage.is_committed(step):
        raise CkptError(f"{storage.path(step_dir(step))}: step {step} is already committed")
    plan = plan_save(state, rank, world_size, allow_pickle=allow_pickle)
    save_plan(storage, step, plan, rank, world_size, codec=codec, chunk_bytes=chunk_bytes, threads=threads,
              timeout_s=timeout_s)  # fmt: skip


def load(
    url: str | os.PathLike[str] | Storage,
    state: MutableMapping[str, Any],
    step: int | None = None,
    *,
    cast: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    allow_pickle: bool = False,
) -> int:
    """Loads `step` (default: the latest committed) into state in place, resharding; returns the step."""
    storage = _as_storage(url, storage_options)
    if rank is None or world_size is None:
        rank, world_size = current_rank_world()
    if step is None:
        step = latest_step(storage)
    load_into(storage, step, state, rank, world_size, cast=cast, allow_pickle=allow_pickle)
    return step


class SaveHandle:
    """The result of Checkpointer.save; synchronous saves are complete when returned."""

    def __init__(self, step: int, levels: tuple[str, ...]) -> None:
        self.step = step
        self.levels = levels

    def wait(self, level: str = "local", timeout_s: float | None = None) -> None:
        if level not in ("host", "local", "remote"):
            raise ValueError(f"unknown level {level!r}; want host, local or remote")
        if level == "remote" and "remote" not in self.levels:
            raise NotFoundError("this Checkpointer has no remote level")

    def done(self, level: str = "local") -> bool:
        return level in self.levels or level == "host"


class Checkpointer:
    """Saves and loads numbered steps under url (synchronously in this version) with retention.

    `remote`: a second URL every committed step is also written to; `keep_local`: how many committed
    steps the local level keeps (older ones are removed by rank 0 after each commit; None keeps all).
    """

    def __init__(
        self,
        url: str,
        *,
        remote: str | None = None,
        host_cache_bytes: int = 4 << 30,
        compression: str = "zstd",
        keep_local: int | None = 2,
        keep_remote: int | None = None,
        storage_options: Mapping[str, Any] | None = None,
        remote_options: Mapping[str, Any] | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        threads: int = DEFAULT_WRITE_THREADS,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        allow_pickle: bool = False,
    ) -> None:
        if keep_local is not None and keep_local < 1:
            raise ValueError("keep_local must be >= 1 or None")
        self.local = Storage(url, **dict(storage_options or {}))
        self.remote = Storage(remote, **dict(remote_options or {})) if remote else None
        self.host_cache_bytes = host_cache_bytes
        self.compression = compression
        self.keep_local, self.keep_remote = keep_local, keep_remote
        self.chunk_bytes, self.threads, self.timeout_s = chunk_bytes, threads, timeout_s
        self.allow_pickle = allow_pickle
        self._lock = threading.Lock()
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise CkptError("Checkpointer is closed")

    def save(self, step: int, state: Mapping[str, Any]) -> SaveHandle:
        """Saves state as step on every level; returns when it is committed on all of them."""
        self._check_open()
        rank, world = current_rank_world()
        with self._lock:
            plan = plan_save(state, rank, world, allow_pickle=self.allow_pickle)
            levels = [("local", self.local, self.keep_local)]
            if self.remote is not None:
                levels.append(("remote", self.remote, self.keep_remote))
            for _, storage, keep in levels:
                save_plan(storage, step, plan, rank, world, codec=self.compression, chunk_bytes=self.chunk_bytes,
                          threads=self.threads, timeout_s=self.timeout_s)  # fmt: skip
                if rank == 0 and keep is not None:
                    apply_retention(storage, keep)
        return SaveHandle(step, ("host", *(name for name, _, _ in levels)))

    def load(self, state: MutableMapping[str, Any], step: int | None = None, *, cast: bool = False) -> int:
        """Loads step (default: latest committed on any level) in place; returns the step."""
        self._check_open()
        storage = self.local
        if step is None:
            step = self.latest_step()
            if step is None:
                raise NotFoundError(f"{self.local.url}: no committed checkpoint")
        if not self.local.is_committed(step) and self.remote is not None and self.remote.is_committed(step):
            storage = self.remote
        return load(storage, state, step, cast=cast, allow_pickle=self.allow_pickle)

    def steps(self) -> list[int]:
        """Committed steps on any level, ascending."""
        found = set(self.local.committed_steps())
        if self.remote is not None:
            found.update(self.remote.committed_steps())
        return sorted(found)

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def apply_retention(storage: Storage, keep: int) -> list[int]:
    """Removes all but the newest `keep` committed steps (manifest first, so none looks committed
    while half removed); returns the removed steps."""
    steps = storage.committed_steps()
    removed = steps[:-keep] if keep else steps
    for step in removed:
        storage.remove(f"{step_dir(step)}/manifest.json")
        storage.remove_tree(step_dir(step))
        log.info("checkpoint retention removed step=%d url=%s", step, storage.url)
    return removed
