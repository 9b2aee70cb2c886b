"""The streaming seam every format implements: a `TensorSource` and a `TensorSink`.

A conversion moves one chunk at a time from a source to a sink, so memory stays bounded by the
largest chunk (or, for sinks that need whole tensors, the largest tensor). Order of calls:

    source.tensors()                  # metadata only, no data read
    source.values()                   # non-tensor state (JSON-able or not)
    sink.begin(metas, values)         # once, before any data: knows every name, dtype and shape
    for meta in metas:
        for chunk in source.read(meta): sink.write(meta, chunk)
    sink.end()                        # everything written and flushed into the staging place
    sink.staged_source()              # a source over what was written, for read-back verification
    sink.commit()  or  sink.abort()   # make the output visible atomically, or remove every byte

A chunk's tensor is only valid until the next chunk is requested or the iterator is closed (a
source may reuse or release its memory then); sinks must not keep references to it.

A new format is one new module with a source and/or a sink class, registered in `formats.py`.
"""

from __future__ import annotations

import ctypes
import math
import mmap
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

# dtype names are torch's without "torch." (as in the kedge manifest).
DTYPE_ITEMSIZE: Mapping[str, int] = {
    "float64": 8,
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint8": 1,
    "uint16": 2,
    "uint32": 4,
    "uint64": 8,
    "bool": 1,
    "complex64": 8,
    "complex128": 16,
}
FLOAT_DTYPES = frozenset({"float64", "float32", "float16", "bfloat16"})


class ConvertError(Exception):
    """A conversion cannot proceed; the message is one line naming the file or tensor at fault."""


class OutputError(ConvertError):
    """Writing the output failed (a full disk, no permission); nothing partial is left visible."""


def describe_os_error(error: BaseException) -> str:
    """One line for an I/O failure, looking through wrappers (torch re-raises OSError as RuntimeError)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__ or seen.__context__
    lines = str(error).strip().splitlines()
    return lines[0][:200] if lines else type(error).__name__


@dataclass(frozen=True, slots=True)
class TensorMeta:
    """One tensor as a source lists it: name, dtype (torch name without "torch.") and global shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_ITEMSIZE[self.dtype]


@dataclass(frozen=True, slots=True)
class Chunk:
    """A box of a tensor: global offsets and sizes, and its data as a contiguous CPU tensor."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    tensor: torch.Tensor
    file_range: tuple[str, int] | None = None
    """(path, byte offset) when the tensor's bytes lie as they are in a local file: a sink may copy
    them in the kernel (copy_file_range) instead of through memory."""


class TensorSource(Protocol):
    """Lists tensors and yields their chunks one at a time."""

    def tensors(self) -> list[TensorMeta]: ...

    def values(self) -> dict[str, Any]: ...

    def read(self, meta: TensorMeta) -> Iterator[Chunk]: ...

    def close(self) -> None: ...


class TensorSink(Protocol):
    """Accepts chunks into a staging place and makes the output visible atomically on commit."""

    # True when write() must receive one chunk covering the whole tensor.
    whole_tensors: bool

    def plan_files(self, metas: list[TensorMeta]) -> list[str]: ...

    def begin(self, metas: list[TensorMeta], values: dict[str, Any]) -> None: ...

    def write(self, meta: TensorMeta, chunk: Chunk) -> None: ...

    def end(self) -> None: ...

    def staged_source(self) -> TensorSource: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...


def check_dtype(dtype: str, where: str) -> str:
    if dtype not in DTYPE_ITEMSIZE:
        raise ConvertError(f"{where}: unsupported dtype {dtype!r}")
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def torch_dtype(name: str) -> torch.dtype:
    import torch

    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ConvertError(f"unsupported dtype {name!r}")
    return dtype


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """A zero-copy byte view of a contiguous CPU tensor (valid while the tensor lives)."""
    if not tensor.is_contiguous():
        raise ValueError("tensor_bytes needs a contiguous tensor")
    nbytes = tensor.numel() * tensor.element_size()
    if nbytes == 0:
        return memoryview(bytearray())
    buf = (ctypes.c_ubyte * nbytes).from_address(tensor.data_ptr())
    return memoryview(buf).cast("B")


_PAGE = mmap.PAGESIZE
_MADV_DONTNEED = 4
_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def drop_pages(tensor: torch.Tensor) -> None:
    """Releases the resident pages of a tensor memory-mapped from a file it does not write.

    Sources that memory-map their input call this once a tensor has been written, so resident
    memory stays near one tensor; the pages refault from the file if touched again.
    """
    start = -(-tensor.data_ptr() // _PAGE) * _PAGE
    end = (tensor.data_ptr() + tensor.numel() * tensor.element_size()) // _PAGE * _PAGE
    if end > start:
        _LIBC.madvise(start, end - start, _MADV_DONTNEED)  # best effort: a failure only costs memory


def _crc32c_library() -> Any:
    """google-crc32c's shared library, called through ctypes: it hashes a tensor in place (the
    Python binding accepts only bytes, a copy) at hardware speed, without the GIL."""
    try:
        import google_crc32c

        libs = Path(google_crc32c.__file__).parent.with_name("google_crc32c.libs")
        lib = ctypes.CDLL(str(next(libs.glob("libcrc32c*.so*"))))
        lib.crc32c_extend.argtypes = [ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t]
        lib.crc32c_extend.restype = ctypes.c_uint32
        return lib.crc32c_extend
    except (ImportError, StopIteration, OSError, AttributeError):
        return None


_CRC32C_EXTEND = _crc32c_library()


def checksum(tensor: torch.Tensor) -> int:
    """A checksum of a contiguous CPU tensor's bytes (CRC32C, or zlib's CRC32 without the library)."""
    nbytes = tensor.numel() * tensor.element_size()
    if _CRC32C_EXTEND is not None and nbytes:
        return int(_CRC32C_EXTEND(0, tensor.data_ptr(), nbytes))
    return zlib.crc32(tensor_bytes(tensor))


def empty_tensor(dtype: str, shape: tuple[int, ...]) -> torch.Tensor:
    import torch

    return torch.empty(shape, dtype=torch_dtype(dtype))


def whole_chunk(tensor: torch.Tensor) -> Chunk:
    return Chunk(offsets=(0,) * tensor.dim(), sizes=tuple(tensor.shape), tensor=tensor)


def assemble(meta: TensorMeta, chunks: Iterator[Chunk]) -> Chunk:
    """Joins a tensor's chunks into one; refuses gaps (a chunk missing from the source)."""
    first = next(chunks, None)
    if first is not None and first.sizes == meta.shape:
        return first
    out = empty_tensor(meta.dtype, meta.shape)
    covered = 0
    for chunk in [first, *chunks] if first is not None else []:
        box = tuple(slice(o, o + s) for o, s in zip(chunk.offsets, chunk.sizes, strict=True))
        out[box].copy_(chunk.tensor.reshape(chunk.sizes))
        covered += math.prod(chunk.sizes)
    if covered != meta.numel:
        raise ConvertError(f"tensor {meta.name}: chunks cover {covered} of {meta.numel} elements")
    return whole_chunk(out)
