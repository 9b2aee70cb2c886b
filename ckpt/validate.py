"""Validation of a manifest before anything is allocated or read on its word.

A checkpoint may come from shared storage that someone else can write, so the manifest is untrusted
input. `validate_manifest` checks, without I/O, everything a reader later trusts:
- names: tensor names are bounded, printable text; chunk file names are relative paths of plain
  components (no `..`, no absolute path, no backslash, no hidden or empty component), bounded;
- dtypes are known (itemsize from a table, no eval) and codecs are known;
- shapes: bounded rank, non-negative dimensions, element count and byte size bounded;
- chunks: as many offsets/sizes as the shape's rank, the box inside the global shape,
  `raw_length == prod(sizes) * itemsize`, `byte_length == raw_length` for "raw", byte ranges
  non-negative and bounded, so decoding allocates at most `raw_length`, which is bounded;
- totals: number of tensors and chunks bounded.
`validate_file_ranges` then checks that every chunk's byte range lies inside its file, asking the
storage for each distinct file's size once. `check_manifest_size` bounds the manifest file itself.
kedge.ckpt.manifest.Manifest.from_json calls `validate_manifest`; kedge.ckpt.reader.open_manifest
calls `check_manifest_size` before reading and `validate_file_ranges` after parsing. Limits are generous defaults of `Limits` (a dataclass
a caller can tighten or, for an exotic trusted checkpoint, widen).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from kedge.ckpt.errors import FormatError

KNOWN_CODECS = frozenset({"raw", "zstd", "bgzstd"})
ITEMSIZE_BYTES: Mapping[str, int] = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2,
    "float8_e4m3fn": 1, "float8_e5m2": 1, "float8_e4m3fnuz": 1, "float8_e5m2fnuz": 1,
    "int64": 8, "int32": 4, "int16": 2, "int8": 1, "uint8": 1, "uint16": 2, "uint32": 4, "uint64": 8,
    "bool": 1, "complex64": 8, "complex128": 16, "complex32": 4,
}  # fmt: skip
_FILE_COMPONENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+=-]*\Z")


class UnsafeManifest(FormatError):
    """A manifest field would make a reader allocate without bound, read outside a file or write
    outside its target tensors; the message names the tensor, chunk and field."""


@dataclass(kw_only=True, slots=True, frozen=True)
class Limits:
    """Bounds on what one manifest may describe."""

    max_tensors: int = 1_000_000
    """Tensors in one checkpoint."""
    max_chunks: int = 10_000_000
    """Chunks over all tensors."""
    max_ndim: int = 32
    """Dimensions of one tensor."""
    max_tensor_bytes: int = 1 << 44
    """Raw bytes of one tensor (16 TiB)."""
    max_chunk_bytes: int = 1 << 36
    """Raw or stored bytes of one chunk (64 GiB): what a reader may allocate for one chunk."""
    max_name_chars: int = 4096
    """Characters of a tensor name."""
    max_file_chars: int = 1024
    """Characters of a chunk file path."""
    max_file_components: int = 8
    """Directory depth of a chunk file path."""
    max_manifest_bytes: int = 1 << 30
    """Size of the manifest file itself, checked before it is read."""


class ChunkLike(Protocol):
    @property
    def offsets(self) -> Sequence[int]: ...
    @property
    def sizes(self) -> Sequence[int]: ...
    @property
    def file(self) -> str: ...
    @property
    def byte_offset(self) -> int: ...
    @property
    def byte_length(self) -> int: ...
    @property
    def codec(self) -> str: ...
    @property
    def raw_length(self) -> int: ...


class TensorLike(Protocol):
    @property
    def dtype(self) -> str: ...
    @property
    def shape(self) -> Sequence[int]: ...
    @property
    def chunks(self) -> Sequence[ChunkLike]: ...


class ManifestLike(Protocol):
    @property
    def tensors(self) -> Mapping[str, TensorLike]: ...


DEFAULT_LIMITS = Limits()


def validate_manifest(manifest: ManifestLike, limits: Limits = DEFAULT_LIMITS) -> None:
    """Raises UnsafeManifest on the first field a reader must not trust; no I/O."""
    if len(manifest.tensors) > limits.max_tensors:
        raise UnsafeManifest(f"manifest: {len(manifest.tensors)} tensors (limit {limits.max_tensors})")
    chunks = 0
    for name, tensor in manifest.tensors.items():
        validate_tensor(name, tensor, limits)
        chunks += len(tensor.chunks)
        if chunks > limits.max_chunks:
            raise UnsafeManifest(f"manifest: more than {limits.max_chunks} chunks")


def validate_tensor(name: str, tensor: TensorLike, limits: Limits = DEFAULT_LIMITS) -> None:
    check_tensor_name(name, limits)
    where = f"tensor {name[:80]!r}"
    itemsize = ITEMSIZE_BYTES.get(tensor.dtype) if isinstance(tensor.dtype, str) else None
    if itemsize is None:
        raise UnsafeManifest(f"{where}: unknown dtype {str(tensor.dtype)[:40]!r}")
    shape = _ints(tensor.shape, f"{where}: shape")
    if len(shape) > limits.max_ndim:
        raise UnsafeManifest(f"{where}: {len(shape)} dimensions (limit {limits.max_ndim})")
    if any(n < 0 for n in shape):
        raise UnsafeManifest(f"{where}: negative dimension in shape {list(shape)}")
    if math.prod(shape) * itemsize > limits.max_tensor_bytes:
        raise UnsafeManifest(f"{where}: shape {list(shape)} exceeds {limits.max_tensor_bytes} bytes")
    for i, chunk in enumerate(tensor.chunks):
        validate_chunk(f"{where} chunk {i}", chunk, shape, itemsize, limits)


def validate_chunk(
    where: str, chunk: ChunkLike, shape: Sequence[int], itemsize: int, limits: Limits = DEFAULT_LIMITS
) -> None:
    offsets = _ints(chunk.offsets, f"{where}: offsets")
    sizes = _ints(chunk.sizes, f"{where}: sizes")
    if len(offsets) != len(shape) or len(sizes) != len(shape):
        raise UnsafeManifest(f"{where}: box rank differs from the tensor's shape {list(shape)}")
    for o, s, n in zip(offsets, sizes, shape, strict=True):
        if o < 0 or s < 0 or o + s > n:
            raise UnsafeManifest(f"{where}: box {list(offsets)}+{list(sizes)} outside shape {list(shape)}")
    if chunk.codec not in KNOWN_CODECS:
        raise UnsafeManifest(f"{where}: unknown codec {str(chunk.codec)[:40]!r}")
    raw, stored, start = chunk.raw_length, chunk.byte_length, chunk.byte_offset
    for field_name, value in (("raw_length", raw), ("byte_length", stored), ("byte_offset", start)):
        if not _is_int(value) or value < 0:
            raise UnsafeManifest(f"{where}: {field_name} must be a non-negative integer")
    if raw != math.prod(sizes) * itemsize:
        raise UnsafeManifest(
            f"{where}: raw_length {raw} != prod(sizes) x itemsize {math.prod(sizes) * itemsize}"
        )
    if max(raw, stored) > limits.max_chunk_bytes:
        raise UnsafeManifest(
            f"{where}: {max(raw, stored)} bytes exceeds the chunk limit {limits.max_chunk_bytes}"
        )
    if chunk.codec == "raw" and stored != raw:
        raise UnsafeManifest(f"{where}: raw codec with byte_length {stored} != raw_length {raw}")
    check_file_name(chunk.file, where, limits)


def check_tensor_name(name: str, limits: Limits = DEFAULT_LIMITS) -> None:
    if not isinstance(name, str) or not name:
        raise UnsafeManifest("manifest: empty or non-text tensor name")
    if len(name) > limits.max_name_chars:
        raise UnsafeManifest(f"tensor {name[:80]!r}...: name longer than {limits.max_name_chars} characters")
    if not name.isprintable():
        raise UnsafeManifest(f"tensor {name[:80]!r}: name holds control characters")


def check_file_name(file: str, where: str, limits: Limits = DEFAULT_LIMITS) -> None:
    """A chunk file is a relative path inside the step directory: plain components only."""
    if not isinstance(file, str) or not file:
        raise UnsafeManifest(f"{where}: empty file name")
    if len(file) > limits.max_file_chars:
        raise UnsafeManifest(f"{where}: file name longer than {limits.max_file_chars} characters")
    parts = file.split("/")
    if len(parts) > limits.max_file_components or not all(_FILE_COMPONENT.match(p) for p in parts):
        raise UnsafeManifest(f"{where}: file name {file[:80]!r} is not a plain relative path")


def check_manifest_size(size_bytes: int, where: str, limits: Limits = DEFAULT_LIMITS) -> None:
    """Refuses a manifest file too large to read into memory (checked from its size, before reading)."""
    if size_bytes > limits.max_manifest_bytes:
        raise UnsafeManifest(f"{where}: manifest of {size_bytes} bytes exceeds {limits.max_manifest_bytes}")


def validate_file_ranges(manifest: ManifestLike, file_size: Callable[[str], int | None]) -> None:
    """Checks every chunk's [byte_offset, byte_offset + byte_length) lies inside its file;
    `file_size(name)` is called once per distinct file; None (missing file) skips that file's
    chunks: nothing can be read from it, and the read names the missing file."""
    sizes: dict[str, int | None] = {}
    for name, tensor in manifest.tensors.items():
        for i, chunk in enumerate(tensor.chunks):
            if chunk.file not in sizes:
                sizes[chunk.file] = file_size(chunk.file)
            size = sizes[chunk.file]
            end = chunk.byte_offset + chunk.byte_length
            if size is not None and end > size:
                raise UnsafeManifest(
                    f"tensor {name[:80]!r} chunk {i}: bytes {chunk.byte_offset}..{end} outside "
                    f"file {chunk.file!r} of {size} bytes"
                )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _ints(values: Iterable[object], where: str) -> tuple[int, ...]:
    out = tuple(values)
    if not all(_is_int(v) for v in out):
        raise UnsafeManifest(f"{where} must be integers")
    return out  # type: ignore[return-value]
