"""Reading a committed step: manifest, CRC-checked chunks, and resharding loads.

`load_into` plans this rank's wanted boxes (kedge.ckpt.restore), matches them with the stored
chunks by sort-and-sweep (kedge.ckpt.planner), reads only the chunks that overlap (one ranged read
per chunk, through fsspec on remote URLs), checks each chunk's CRC32C, decodes it and copies the
overlaps into place, on a bounded thread pool (zstd, CRC32C and the copies release the GIL).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from kedge.ckpt import codec as codecs
from kedge.ckpt.errors import FormatError, IntegrityError, NotFoundError
from kedge.ckpt.manifest import DTYPE_ITEMSIZE, ChunkRecord, Manifest, TensorRecord
from kedge.ckpt.planner import plan_reads
from kedge.ckpt.restore import Target, plan_load
from kedge.ckpt.storage import MANIFEST_NAME, Storage, step_dir

DEFAULT_READ_THREADS = 8


def open_manifest(storage: Storage, step: int) -> Manifest:
    """The manifest of a committed step; NotFoundError if the step is not committed."""
    path = f"{step_dir(step)}/{MANIFEST_NAME}"
    try:
        data = storage.read_bytes(path)
    except NotFoundError:
        raise NotFoundError(f"{storage.path(step_dir(step))}: step {step} is not committed") from None
    manifest = Manifest.from_json(data)
    if manifest.step != step:
        raise FormatError(f"{storage.path(path)}: manifest says step {manifest.step}")
    return manifest


def latest_step(storage: Storage) -> int:
    steps = storage.committed_steps()
    if not steps:
        raise NotFoundError(f"{storage.url}: no committed checkpoint")
    return steps[-1]


def read_chunk_raw(storage: Storage, chunk: ChunkRecord, record: TensorRecord) -> bytes | bytearray:
    """A chunk's decoded bytes, CRC-checked; IntegrityError names tensor, chunk and file."""
    index = _chunk_index(record, chunk)
    where = (
        f"tensor {record.name!r} chunk {index} (file {chunk.file}, bytes {chunk.byte_offset}"
        f"+{chunk.byte_length}) in {storage.url}"
    )
    path = f"{step_dir_of(storage, record)}/{chunk.file}"
    data = storage.read_range(path, chunk.byte_offset, chunk.byte_length)
    crc = codecs.crc32c(data)
    if crc != chunk.crc32c:
        raise IntegrityError(f"{where}: crc32c mismatch (manifest {chunk.crc32c:#010x}, data {crc:#010x})")
    if chunk.codec == "raw":
        if len(data) != chunk.raw_length:
            raise IntegrityError(
                f"{where}: raw chunk has {len(data)} bytes, manifest says {chunk.raw_length}"
            )
        return data
    try:
        return codecs.decode(data, chunk.codec, record.itemsize, chunk.raw_length)
    except FormatError as exc:
        raise IntegrityError(f"{where}: {exc}") from exc


def read_chunk(storage: Storage, chunk: ChunkRecord, record: TensorRecord) -> bytes:
    """A chunk's decoded, CRC-checked bytes (row-major, little-endian)."""
    return bytes(read_chunk_raw(storage, chunk, record))


def _chunk_index(record: TensorRecord, chunk: ChunkRecord) -> int:
    for i, c in enumerate(record.chunks):
        if c is chunk:
            return i
    return record.chunks.index(chunk)


def step_dir_of(storage: Storage, record: TensorRecord) -> str:
    if record.step < 0:
        raise ValueError(f"tensor {record.name!r} has no step; take records from open_manifest")
    return step_dir(record.step)


def _byte_view(t: torch.Tensor) -> np.ndarray[Any, Any]:
    """t's bytes as a writable uint8 numpy array shaped (..., last_dim * itemsize), sharing memory."""
    flat = t.reshape(1) if t.dim() == 0 else t
    return flat.view(torch.uint8).numpy()


def _slices(
    box_off: tuple[int, ...], box_sizes: tuple[int, ...], base: tuple[int, ...], itemsize: int
) -> Any:
    if not box_off:
        return (slice(0, itemsize),)
    idx = [slice(o - b, o - b + s) for o, s, b in zip(box_off, box_sizes, base, strict=True)]
    last = idx[-1]
    idx[-1] = slice(last.start * itemsize, last.stop * itemsize)
    return tuple(idx)


def _chunk_array(raw: bytes | bytearray, chunk: ChunkRecord, itemsize: int) -> np.ndarray[Any, Any]:
    shape = (*chunk.sizes[:-1], chunk.sizes[-1] * itemsize) if chunk.sizes else (itemsize,)
    return np.frombuffer(raw, dtype=np.uint8).reshape(shape)


def fill_targets(storage: Storage, manifest: Manifest, targets: list[Target], *, threads: int) -> None:
    """Reads every stored chunk that overlaps a target once and copies the overlaps into place."""
    by_name: dict[str, list[Target]] = defaultdict(list)
    for t in targets:
        by_name[t.name].append(t)
    jobs: list[Callable[[], None]] = []
    for name, wanted in by_name.items():
        record = manifest.tensors[name]
        overlaps = plan_reads(
            [(t.offsets, t.sizes) for t in wanted], [(c.offsets, c.sizes) for c in record.chunks]
        )
        per_chunk: dict[int, list[tuple[Target, tuple[int, ...], tuple[int, ...]]]] = defaultdict(list)
        covered: dict[int, int] = defaultdict(int)
        for o in overlaps:
            per_chunk[o.stored].append((wanted[o.wanted], o.offsets, o.sizes))
            covered[o.wanted] += math.prod(o.sizes)
        for wi, t in enumerate(wanted):
            if covered[wi] != math.prod(t.sizes):
                raise FormatError(
                    f"tensor {name!r}: stored chunks do not cover the wanted box {t.offsets}+{t.sizes}"
                )
        for ci, parts in per_chunk.items():
            jobs.append(_copy_job(storage, record, record.chunks[ci], parts))
    _run(jobs, threads)


def _copy_job(
    storage: Storage,
    record: TensorRecord,
    chunk: ChunkRecord,
    parts: list[tuple[Target, tuple[int, ...], tuple[int, ...]]],
) -> Callable[[], None]:
    def job() -> None:
        raw = read_chunk_raw(storage, chunk, record)
        src = _chunk_array(raw, chunk, record.itemsize)
        for target, offsets, sizes in parts:
            dst = _byte_view(target.dest)
            dst[_slices(offsets, sizes, target.offsets, record.itemsize)] = src[
                _slices(offsets, sizes, chunk.offsets, record.itemsize)
            ]

    return job


def _run(jobs: list[Callable[[], None]], threads: int) -> None:
    if threads <= 1 or len(jobs) <= 1:
        for job in jobs:
            job()
        return
    with ThreadPoolExecutor(
        max_workers=min(threads, len(jobs)), thread_name_prefix="kedge-ckpt-read"
    ) as pool:
        for future in [pool.submit(job) for job in jobs]:
            future.result()


def load_into(
    storage: Storage,
    step: int,
    state: MutableMapping[str, Any],
    rank: int,
    world_size: int,
    *,
    cast: bool = False,
    allow_pickle: bool = False,
    threads: int = DEFAULT_READ_THREADS,
) -> Manifest:
    """Loads committed `step` into state in place, resharding to the current placements."""
    manifest = open_manifest(storage, step)
    plan = plan_load(manifest, state, rank, world_size, cast=cast, allow_pickle=allow_pickle)
    with torch.no_grad():
        fill_targets(storage, manifest, plan.targets, threads=threads)
        for finish in plan.finalizers:
            finish()
    return manifest


def read_tensor(storage: Storage, manifest: Manifest, name: str) -> torch.Tensor:
    """The whole tensor `name` as a CPU tensor (for convert and inspection)."""
    rec = manifest.tensors.get(name)
    if rec is None:
        raise NotFoundError(f"tensor {name!r}: not in checkpoint step {manifest.step}")
    out = torch.empty(rec.shape, dtype=getattr(torch, rec.dtype))
    fill_targets(storage, manifest, [Target(name, out, (0,) * len(rec.shape), tuple(rec.shape))], threads=4)
    return out


__all__ = [
    "DTYPE_ITEMSIZE",
    "fill_targets",
    "latest_step",
    "load_into",
    "open_manifest",
    "read_chunk",
    "read_tensor",
]
