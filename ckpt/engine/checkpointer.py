"""The asynchronous `Checkpointer`: lazy snapshot, then host -> local -> remote in the background.

Order of calls (each rank makes every call; rank 0 commits in the background, no collective is used):

    ck = Checkpointer("/nvme/run1", remote="s3://bucket/run1", host_cache_bytes=32 << 30)
    step = ck.load(state)                  # latest committed (local first, else remote), or None
    for step in ...:
        train_step()                       # optimizer.step() waits for a pending snapshot (pre-hook)
        if step % 100 == 0:
            h = ck.save(step, state)       # returns at once; h.wait("host" | "local" | "remote")
    ck.close()                             # drains within close_timeout_s, then aborts; no thread left

`save()` raises `CheckpointFailed` for an earlier checkpoint that failed in the background (after
admitting the new one); `wait()` raises it too. Code that mutates saved tensors outside an optimizer
step (buffers updated in forward, manual edits) must call `h.wait("host")` first.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, TypeVar

from kedge.ckpt.engine.job import CheckpointHandle
from kedge.ckpt.engine.metrics import CheckpointMetrics
from kedge.ckpt.engine.pipeline import Engine, EngineConfig
from kedge.ckpt.engine.plan_cache import PlanCache
from kedge.ckpt.engine.retry import RetryPolicy

_log = logging.getLogger(__name__)
_KEEP_ALL = 1 << 62
# Precedence of the engine settings: argument > environment KEDGE_CKPT_<NAME> > default.
ENV_PREFIX = "KEDGE_CKPT_"
_T = TypeVar("_T")


def _setting(argument: _T | None, name: str, parse: Callable[[str], _T], default: _T) -> _T:
    """argument if given, else the environment variable KEDGE_CKPT_<name>, else default."""
    if argument is not None:
        return argument
    raw = os.environ.get(ENV_PREFIX + name)
    if raw is None or raw == "":
        return default
    try:
        return parse(raw)
    except ValueError as exc:
        raise ValueError(f"{ENV_PREFIX}{name}={raw!r}: {exc}") from exc


def _default_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class Checkpointer:
    """Lazy asynchronous multi-level checkpointer (see the module docstring for the call order)."""

    def __init__(
        self,
        url: str | None,
        *,
        remote: str | None = None,
        host_cache_bytes: int | None = None,
        compression: str = "zstd",
        keep_local: int | None = 2,
        keep_remote: int | None = None,
        remote_every_steps: int = 1,
        policy: str | None = None,
        max_in_flight: int | None = None,
        writer_threads: int | None = None,
        slab_bytes: int | None = None,
        timeout_s: float = 600.0,
        remote_retry: RetryPolicy | None = None,
        allow_pickle: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        storage_options: Mapping[str, Any] | None = None,
        remote_options: Mapping[str, Any] | None = None,
        chunk_bytes: int | None = None,
        threads: int | None = None,
        config: EngineConfig | None = None,
    ) -> None:
        """url: the local level (a path or fsspec URL; None for remote only); remote: the remote
        level; keep_local/keep_remote: committed steps kept per level (None: all); slab_bytes: one pool
        buffer and the largest chunk; chunk_bytes: a smaller largest chunk; writer_threads (alias
        threads): encoding/writing threads;
        timeout_s: bound of a commit's wait for every rank; config: every engine setting at once.
        host_cache_bytes, slab_bytes, writer_threads, max_in_flight and policy left as None come from
        the environment (KEDGE_CKPT_HOST_CACHE_BYTES, ..._SLAB_BYTES, ..._WRITER_THREADS,
        ..._MAX_IN_FLIGHT, ..._POLICY), else default to 4 GiB, 64 MiB, 2, 2 and "skip"."""
        from kedge.ckpt.storage import Storage

        if keep_local is not None and keep_local < 1:
            raise ValueError("keep_local must be >= 1 or None")
        if rank is None or world_size is None:
            default_rank, default_world = _default_world()
            rank = default_rank if rank is None else rank
            world_size = default_world if world_size is None else world_size
        if config is None:
            config = EngineConfig(
                rank=rank,
                world_size=world_size,
                host_cache_bytes=_setting(host_cache_bytes, "HOST_CACHE_BYTES", int, 4 << 30),
                slab_bytes=slab_bytes or _setting(None, "SLAB_BYTES", int, 64 << 20),
                chunk_bytes=chunk_bytes,
                codec=_codec_name(compression),
                writer_threads=writer_threads or threads or _setting(None, "WRITER_THREADS", int, 2),
                max_in_flight=_setting(max_in_flight, "MAX_IN_FLIGHT", int, 2),
                policy=_setting(policy, "POLICY", str, "skip"),
                keep_local=keep_local if keep_local is not None else _KEEP_ALL,
                keep_remote=keep_remote,
                remote_every_steps=remote_every_steps,
                commit_timeout_s=timeout_s,
                remote_retry=remote_retry or RetryPolicy(),
            )
        self._allow_pickle = allow_pickle
        self.config = config
        self._local = Storage(url, **dict(storage_options or {})) if url else None
        self._remote = Storage(remote, **dict(remote_options or {})) if remote else None
        self._engine = Engine(config, local=self._local, remote=self._remote)
        self._plans = PlanCache()

    @property
    def metrics(self) -> CheckpointMetrics:
        """Counters: saves, skipped_<level>, failed_<level>, committed_<level>, retries_remote, ..."""
        return self._engine.metrics

    def pool_bytes(self) -> int:
        """Bytes of the host buffer pool (allocated once, reused by every checkpoint)."""
        return self._engine.pool.capacity_bytes

    def wait_pool_ready(self, timeout_s: float) -> bool:
        """Waits until the host pool is fully allocated (and pinned); True when it is. Optional: the
        first snapshot waits for it anyway, in the background."""
        return self._engine.pool.wait_ready(timeout_s)

    def save(self, step: int, state: Mapping[str, Any]) -> CheckpointHandle:
        """Starts a checkpoint of state at step and returns at once (see the module docstring)."""
        started = time.perf_counter()
        plan = self._plans.plan(
            state, self.config.rank, self.config.world_size, allow_pickle=self._allow_pickle
        )
        job = self._engine.submit(step, plan.shards, dict(plan.values), list(plan.optimizers))
        handle = CheckpointHandle(job, self._engine.wait_host, self._engine.acknowledge)
        self.metrics.add("save_call_s", time.perf_counter() - started)
        self._engine.raise_pending_errors()
        return handle

    def wait(self, level: str = "local", timeout_s: float | None = None) -> None:
        """Waits until every checkpoint saved so far settled level; raises CheckpointFailed for any
        background failure not reported yet."""
        self._engine.wait(level, timeout_s)
        self._engine.raise_pending_errors()

    def steps(self) -> list[int]:
        """Committed steps, local and remote together, ascending (an unreachable level is logged and
        left out, so a broken remote never hides the local checkpoints)."""
        from kedge.ckpt.errors import CkptError

        found: set[int] = set()
        for storage in (self._local, self._remote):
            if storage is None:
                continue
            try:
                found.update(storage.committed_steps())
            except CkptError as exc:
                _log.warning("event=ckpt_level_unreadable url=%s error=%r", storage.url, exc)
        return sorted(found)

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def load(self, state: MutableMapping[str, Any], step: int | None = None, *, cast: bool = False) -> int:
        """Loads step (default: the latest committed on any level, local preferred) into state in
        place, resharding to this rank's placements; returns the step. NotFoundError when none."""
        from kedge.ckpt.errors import NotFoundError
        from kedge.ckpt.reader import load_into

        step = self.latest_step() if step is None else step
        if step is None:
            where = self._local if self._local is not None else self._remote
            raise NotFoundError(f"{where.url if where is not None else '?'}: no committed checkpoint")
        storage = self._storage_with(step)
        load_into(storage, step, state, self.config.rank, self.config.world_size, cast=cast)
        return step

    def _storage_with(self, step: int) -> Any:
        from kedge.ckpt.errors import NotFoundError

        for storage in (self._local, self._remote):
            if storage is not None and step in storage.committed_steps():
                return storage
        raise NotFoundError(f"step {step} is not committed at any level")

    def status(self) -> dict[int, dict[str, str]]:
        """Per recent checkpoint, the status of each level."""
        return self._engine.pending_levels()

    def close(self, *, drain: bool = True, timeout_s: float | None = None) -> None:
        """Drains in-flight checkpoints (or aborts them when drain is False), bounded, and stops
        every background thread."""
        self._engine.close(drain=drain, timeout_s=timeout_s)

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _codec_name(compression: str | None) -> str:
    """The public compression name -> the codec: "zstd" means byte-grouped zstd for tensors."""
    if compression in (None, "none", "raw"):
        return "raw"
    if compression == "zstd":
        return "bgzstd"
    return compression
