"""The manifest: the one JSON document that describes a committed checkpoint (no torch, no pickle).

Schema (docs/FORMAT.md has the normative text):

    {"format_version": 1, "step": int, "world_size": int, "created_unix_s": float,
     "tensors": {name: {"dtype": str, "shape": [int...],
                        "chunks": [{"offsets": [int...], "sizes": [int...], "file": str,
                                    "byte_offset": int, "byte_length": int, "codec": str,
                                    "crc32c": int, "raw_length": int}]}},
     "values": {path: JSON value}, "extra": {str: JSON value}}

Readers accept any format_version <= FORMAT_VERSION and refuse newer ones with a FormatError; unknown
keys are ignored, so adding an optional key does not need a new version.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from kedge.ckpt.errors import FormatError

FORMAT_VERSION = 1
JSONValue: TypeAlias = Any  # None | bool | int | float | str | list[JSONValue] | dict[str, JSONValue]

# dtype name -> bytes per element; the names are torch's without the "torch." prefix.
DTYPE_ITEMSIZE: dict[str, int] = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2,
    "float8_e4m3fn": 1, "float8_e5m2": 1, "float8_e4m3fnuz": 1, "float8_e5m2fnuz": 1,
    "int64": 8, "int32": 4, "int16": 2, "int8": 1, "uint8": 1, "uint16": 2, "uint32": 4, "uint64": 8,
    "bool": 1, "complex64": 8, "complex128": 16, "complex32": 4,
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class ChunkRecord:
    """One stored box of a tensor: where it lies globally and where its bytes lie in a file."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    file: str
    byte_offset: int
    byte_length: int
    codec: str
    crc32c: int
    raw_length: int

    def to_dict(self) -> dict[str, JSONValue]:
        return {
            "offsets": list(self.offsets),
            "sizes": list(self.sizes),
            "file": self.file,
            "byte_offset": self.byte_offset,
            "byte_length": self.byte_length,
            "codec": self.codec,
            "crc32c": self.crc32c,
            "raw_length": self.raw_length,
        }

    @staticmethod
    def from_dict(d: Any, where: str) -> ChunkRecord:
        _need_dict(d, where)
        return ChunkRecord(
            offsets=_int_tuple(d, "offsets", where),
            sizes=_int_tuple(d, "sizes", where),
            file=_str(d, "file", where),
            byte_offset=_int(d, "byte_offset", where),
            byte_length=_int(d, "byte_length", where),
            codec=_str(d, "codec", where),
            crc32c=_int(d, "crc32c", where),
            raw_length=_int(d, "raw_length", where),
        )


@dataclass(slots=True)
class TensorRecord:
    """A tensor's dtype, global shape and the chunks that together cover it exactly once."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    chunks: list[ChunkRecord] = field(default_factory=list)
    step: int = -1  # the step whose directory holds the files (the manifest's step; not serialized)

    @property
    def itemsize(self) -> int:
        return DTYPE_ITEMSIZE[self.dtype]

    @property
    def raw_bytes(self) -> int:
        return sum(c.raw_length for c in self.chunks)

    @property
    def stored_bytes(self) -> int:
        return sum(c.byte_length for c in self.chunks)

    def to_dict(self) -> dict[str, JSONValue]:
        return {"dtype": self.dtype, "shape": list(self.shape), "chunks": [c.to_dict() for c in self.chunks]}

    @staticmethod
    def from_dict(name: str, d: Any, step: int = -1) -> TensorRecord:
        where = f"tensor {name!r}"
        _need_dict(d, where)
        dtype = _str(d, "dtype", where)
        if dtype not in DTYPE_ITEMSIZE:
            raise FormatError(f"{where}: unknown dtype {dtype!r}")
        chunks_raw = d.get("chunks")
        if not isinstance(chunks_raw, list):
            raise FormatError(f"{where}: 'chunks' must be a list")
        rec = TensorRecord(name, dtype, _int_tuple(d, "shape", where), step=step)
        rec.chunks = [ChunkRecord.from_dict(c, f"{where} chunk {i}") for i, c in enumerate(chunks_raw)]
        rec.validate()
        return rec

    def validate(self) -> None:
        """Checks every chunk lies inside the tensor and has the right raw length."""
        for i, c in enumerate(self.chunks):
            where = f"tensor {self.name!r} chunk {i}"
            if len(c.offsets) != len(self.shape) or len(c.sizes) != len(self.shape):
                raise FormatError(f"{where}: rank differs from shape {list(self.shape)}")
            for o, s, n in zip(c.offsets, c.sizes, self.shape, strict=True):
                if o < 0 or s < 0 or o + s > n:
                    raise FormatError(f"{where}: box outside shape {list(self.shape)}")
            if c.raw_length != math.prod(c.sizes) * self.itemsize:
                raise FormatError(f"{where}: raw_length {c.raw_length} does not match its box")


@dataclass(slots=True)
class Manifest:
    """A committed checkpoint's full description."""

    format_version: int
    step: int
    world_size: int
    tensors: dict[str, TensorRecord]
    values: dict[str, JSONValue]
    created_unix_s: float
    extra: dict[str, JSONValue] = field(default_factory=dict)

    def to_json(self) -> bytes:
        doc = {
            "format_version": self.format_version,
            "step": self.step,
            "world_size": self.world_size,
            "created_unix_s": self.created_unix_s,
            "tensors": {name: rec.to_dict() for name, rec in sorted(self.tensors.items())},
            "values": self.values,
            "extra": self.extra,
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()

    @staticmethod
    def from_json(data: bytes) -> Manifest:
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, ValueError) as exc:
            raise FormatError(f"manifest is not valid JSON (truncated?): {exc}") from exc
        _need_dict(doc, "manifest")
        version = _int(doc, "format_version", "manifest")
        if version > FORMAT_VERSION:
            raise FormatError(
                f"manifest format_version {version} is newer than this reader ({FORMAT_VERSION}); upgrade kedge"
            )
        if version < 1:
            raise FormatError(f"manifest format_version {version} is invalid")
        tensors_raw = doc.get("tensors")
        _need_dict(tensors_raw, "manifest 'tensors'")
        values, extra = doc.get("values", {}), doc.get("extra", {})
        _need_dict(values, "manifest 'values'")
        _need_dict(extra, "manifest 'extra'")
        created = doc.get("created_unix_s", 0.0)
        if not isinstance(created, int | float):
            raise FormatError("manifest: 'created_unix_s' must be a number")
        step = _int(doc, "step", "manifest")
        return Manifest(
            format_version=version,
            step=step,
            world_size=_int(doc, "world_size", "manifest"),
            tensors={n: TensorRecord.from_dict(n, t, step) for n, t in tensors_raw.items()},
            values=values,
            created_unix_s=float(created),
            extra=extra,
        )


def _need_dict(d: Any, where: str) -> None:
    if not isinstance(d, dict):
        raise FormatError(f"{where}: expected a JSON object")


def _int(d: dict[str, Any], key: str, where: str) -> int:
    v = d.get(key)
    if not isinstance(v, int) or isinstance(v, bool):
        raise FormatError(f"{where}: {key!r} must be an integer")
    return v


def _str(d: dict[str, Any], key: str, where: str) -> str:
    v = d.get(key)
    if not isinstance(v, str):
        raise FormatError(f"{where}: {key!r} must be a string")
    return v


def _int_tuple(d: dict[str, Any], key: str, where: str) -> tuple[int, ...]:
    v = d.get(key)
    if not isinstance(v, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        raise FormatError(f"{where}: {key!r} must be a list of integers")
    return tuple(v)
