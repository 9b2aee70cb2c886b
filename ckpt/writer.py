"""Writing one step: per-rank data files and fragments, then the manifest (see kedge.ckpt.storage).

Order of calls: every rank makes one `RankWriter(storage, step, rank, codec)`, calls `add_chunk` for
each chunk it writes (from any number of threads: encoding runs in parallel, appends are serialized),
then `finish(values)` once. Rank 0 (from any thread, with no collective) calls `commit_step`, which
waits for every rank's fragment and writes the manifest last. Other ranks may `wait_committed`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from typing import IO, Any

from kedge.ckpt import codec as codecs
from kedge.ckpt import faults
from kedge.ckpt.errors import FormatError, StorageError
from kedge.ckpt.manifest import DTYPE_ITEMSIZE, FORMAT_VERSION, ChunkRecord, JSONValue, Manifest, TensorRecord
from kedge.ckpt.storage import MANIFEST_NAME, Storage, data_file, fragment_file, step_dir

log = logging.getLogger(__name__)
_POLL_S = 0.02
_POLL_MAX_S = 0.5


class RankWriter:
    """Appends one rank's encoded chunks to its data file and then writes its fragment.

    `add_chunk` is thread-safe; `finish` must be called once, after every add_chunk returned.
    """

    def __init__(self, storage: Storage, step: int, rank: int, codec: str = "zstd") -> None:
        if codec not in codecs.CODECS:
            raise ValueError(f"unknown codec {codec!r}; want one of {', '.join(codecs.CODECS)}")
        self.storage, self.step, self.rank, self.codec = storage, step, rank, codec
        self.dir = step_dir(step)
        self.file_name = data_file(rank)
        self._file: IO[bytes] | None = None
        self._offset = 0
        self._lock = threading.Lock()
        self._records: list[dict[str, JSONValue]] = []
        self._finished = False
        # a fragment left by an earlier, crashed attempt at this step must not be merged
        storage.remove(f"{self.dir}/{fragment_file(rank)}")

    @property
    def bytes_written(self) -> int:
        return self._offset

    def add_chunk(
        self,
        name: str,
        dtype: str,
        global_shape: tuple[int, ...],
        offsets: tuple[int, ...],
        sizes: tuple[int, ...],
        data: memoryview | bytes,
    ) -> ChunkRecord:
        """Encodes data (the box's raw little-endian bytes), CRCs it and appends it to the data file."""
        itemsize = DTYPE_ITEMSIZE[dtype]
        if isinstance(data, memoryview) and (data.format != "B" or data.ndim != 1):
            data = data.cast("B")
        raw_length = len(data) if isinstance(data, bytes) else data.nbytes
        if raw_length != math.prod(sizes) * itemsize:
            raise ValueError(f"{name}: {raw_length} bytes do not match box {sizes} of {dtype}")
        used = self.codec
        encoded = codecs.encode(data, used, itemsize)
        if used != "raw" and len(encoded) >= raw_length:
            used, encoded = "raw", data  # incompressible: store as is, reading it back is cheaper
        crc = codecs.crc32c(encoded)
        with self._lock:
            if self._finished:
                raise RuntimeError("add_chunk after finish")
            if self._file is None:
                self._file = self.storage.open_write(f"{self.dir}/{self.file_name}")
            start = self._offset
            self._file.write(encoded)
            self._offset += len(encoded)
            record = ChunkRecord(
                tuple(offsets), tuple(sizes), self.file_name, start, len(encoded), used, crc, raw_length
            )
            self._records.append(
                {"name": name, "dtype": dtype, "shape": list(global_shape), "chunk": record.to_dict()}
            )
        return record

    def finish(self, values: dict[str, JSONValue] | None = None) -> None:
        """Closes the data file (fsync on local disk), then writes this rank's fragment."""
        with self._lock:
            self._finished = True
            f, self._file = self._file, None
        if f is not None:
            f.flush()
            if self.storage.local:
                os.fsync(f.fileno())
            f.close()
        faults.maybe("ckpt.after_data")
        fragment = {
            "format_version": FORMAT_VERSION,
            "step": self.step,
            "rank": self.rank,
            "tensors": self._records,
            "values": values or {},
        }
        faults.maybe("ckpt.before_fragment")
        self.storage.write_bytes(f"{self.dir}/{fragment_file(self.rank)}", json.dumps(fragment).encode())
        faults.maybe("ckpt.after_fragment")


def _wait_for(what: str, ready: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    pause_s = _POLL_S
    while not ready():
        if time.monotonic() >= deadline:
            raise StorageError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(pause_s)
        pause_s = min(pause_s * 1.5, _POLL_MAX_S)


def commit_step(
    storage: Storage,
    step: int,
    world_size: int,
    *,
    timeout_s: float = 600.0,
    extra: dict[str, JSONValue] | None = None,
    clean_debris: bool = True,
) -> Manifest:
    """Rank 0: waits for all fragments, merges them and writes the manifest last (the commit point)."""
    sdir = step_dir(step)
    missing = set(range(world_size))

    def all_present() -> bool:
        for r in sorted(missing):
            if storage.exists(f"{sdir}/{fragment_file(r)}"):
                missing.discard(r)
        return not missing

    _wait_for(f"fragments of step {step} from ranks {sorted(missing)}", all_present, timeout_s)
    manifest = merge_fragments(storage, step, world_size, extra or {})
    faults.maybe("ckpt.before_manifest")
    storage.write_bytes(f"{sdir}/{MANIFEST_NAME}", manifest.to_json())
    faults.maybe("ckpt.after_manifest")
    log.info("checkpoint committed step=%d world_size=%d url=%s", step, world_size, storage.url)
    if clean_debris:
        remove_debris(storage, step)
    return manifest


def merge_fragments(storage: Storage, step: int, world_size: int, extra: dict[str, JSONValue]) -> Manifest:
    """Builds the manifest from every rank's fragment; checks each tensor is covered exactly."""
    tensors: dict[str, TensorRecord] = {}
    values: dict[str, JSONValue] = {}
    for rank in range(world_size):
        path = f"{step_dir(step)}/{fragment_file(rank)}"
        try:
            frag = json.loads(storage.read_bytes(path))
        except ValueError as exc:
            raise FormatError(f"fragment {path} is not valid JSON: {exc}") from exc
        if frag.get("step") != step or frag.get("rank") != rank:
            raise FormatError(f"fragment {path} belongs to step {frag.get('step')} rank {frag.get('rank')}")
        for item in frag["tensors"]:
            rec = tensors.setdefault(
                item["name"], TensorRecord(item["name"], item["dtype"], tuple(item["shape"]), step=step)
            )
            if rec.dtype != item["dtype"] or list(rec.shape) != item["shape"]:
                raise FormatError(f"tensor {item['name']!r}: ranks disagree on dtype or shape")
            rec.chunks.append(ChunkRecord.from_dict(item["chunk"], f"tensor {item['name']!r}"))
        for key, value in frag["values"].items():
            values.setdefault(key, value)
    for rec in tensors.values():
        rec.chunks.sort(key=lambda c: c.offsets)
        rec.validate()
        covered = sum(math.prod(c.sizes) for c in rec.chunks)
        if covered != math.prod(rec.shape):
            raise FormatError(
                f"tensor {rec.name!r}: chunks cover {covered} of {math.prod(rec.shape)} elements"
            )
    return Manifest(FORMAT_VERSION, step, world_size, tensors, values, time.time(), extra)


def remove_debris(storage: Storage, committed_step: int) -> list[int]:
    """Removes uncommitted step directories older than committed_step (newer may be in flight)."""
    removed = []
    committed = set(storage.committed_steps())
    for step in storage.all_step_dirs():
        if step < committed_step and step not in committed:
            storage.remove_tree(step_dir(step))
            removed.append(step)
            log.info("checkpoint debris removed step=%d url=%s", step, storage.url)
    return removed


def wait_committed(storage: Storage, step: int, *, timeout_s: float = 600.0) -> None:
    """Waits (bounded, polling storage) until step's manifest is visible."""
    _wait_for(f"commit of step {step}", lambda: storage.is_committed(step), timeout_s)
