"""Torch-free inspection of checkpoints for the `ckpt` CLI: list steps, describe, verify chunks."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

from kedge.ckpt import codec as codecs
from kedge.ckpt.errors import FormatError, IntegrityError, NotFoundError, StorageError
from kedge.ckpt.manifest import ChunkRecord, Manifest, TensorRecord
from kedge.ckpt.storage import MANIFEST_NAME, STEP_DIR_RE, Storage, step_dir


@dataclass(frozen=True, slots=True)
class StepRow:
    step: int
    committed: bool
    size_bytes: int
    world_size: int | None


def split_url(url: str) -> tuple[str, int | None]:
    """(root URL, step) when url names a step directory, else (url, None)."""
    stripped = url.rstrip("/")
    head, _, last = stripped.rpartition("/")
    m = STEP_DIR_RE.match(last)
    if m and head:
        return head, int(m.group(1))
    return url, None


def open_root(url: str) -> Storage:
    """A Storage for url; NotFoundError if a local path does not exist."""
    storage = Storage(url)
    if storage.local and not os.path.isdir(storage.root):
        raise NotFoundError(f"{url}: no such directory")
    return storage


def open_step(url: str) -> tuple[Storage, Manifest]:
    """The storage and manifest of the step url names, or of the latest committed step under url."""
    root, step = split_url(url)
    storage = open_root(root)
    if step is None:
        steps = storage.committed_steps()
        if not steps:
            partial = storage.all_step_dirs()
            why = f"only partial steps {partial}" if partial else "no step-NNNNNNNNNNNN directories"
            raise NotFoundError(f"{url}: not a kedge checkpoint ({why})")
        step = steps[-1]
    if not storage.exists(f"{step_dir(step)}/{MANIFEST_NAME}"):
        raise NotFoundError(f"{url}: step {step} has no manifest (partial or missing)")
    manifest = Manifest.from_json(storage.read_bytes(f"{step_dir(step)}/{MANIFEST_NAME}"))
    return storage, manifest


def list_steps(storage: Storage) -> list[StepRow]:
    rows = []
    for step in storage.all_step_dirs():
        sdir = step_dir(step)
        names = storage.list_dir(sdir)
        size = sum(storage.size(f"{sdir}/{n}") for n in names if not n.startswith("."))
        world: int | None = None
        committed = MANIFEST_NAME in names
        if committed:
            try:
                world = Manifest.from_json(storage.read_bytes(f"{sdir}/{MANIFEST_NAME}")).world_size
            except FormatError:
                committed = False
        rows.append(StepRow(step, committed, size, world))
    return rows


def verify_chunk(storage: Storage, record: TensorRecord, index: int, chunk: ChunkRecord) -> None:
    """Reads one chunk, checks its CRC32C and that it decodes; IntegrityError on any mismatch."""
    where = f"tensor {record.name!r} chunk {index} (file {chunk.file}, bytes {chunk.byte_offset}+{chunk.byte_length})"
    try:
        data = storage.read_range(
            f"{step_dir(record.step)}/{chunk.file}", chunk.byte_offset, chunk.byte_length
        )
    except (StorageError, NotFoundError) as exc:
        raise IntegrityError(f"{where}: {exc}") from exc
    crc = codecs.crc32c(data)
    if crc != chunk.crc32c:
        raise IntegrityError(f"{where}: crc32c mismatch (manifest {chunk.crc32c:#010x}, data {crc:#010x})")
    try:
        codecs.decode(data, chunk.codec, record.itemsize, chunk.raw_length)
    except FormatError as exc:
        raise IntegrityError(f"{where}: {exc}") from exc


def verify(
    storage: Storage, manifest: Manifest, progress: Callable[[int], object] | None = None
) -> list[str]:
    """Checks every chunk of every tensor; returns one line per problem (empty: all good)."""
    problems = []
    for record in manifest.tensors.values():
        covered = sum(math.prod(c.sizes) for c in record.chunks)
        if covered != math.prod(record.shape):
            problems.append(
                f"tensor {record.name!r}: chunks cover {covered} of {math.prod(record.shape)} elements"
            )
        for i, chunk in enumerate(record.chunks):
            try:
                verify_chunk(storage, record, i, chunk)
            except IntegrityError as exc:
                problems.append(str(exc))
            if progress is not None:
                progress(chunk.byte_length)
    return problems
