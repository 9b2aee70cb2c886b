"""Chunk codecs and CRC32C; thread-safe, torch-free.

Codecs (the exact byte layout is specified in docs/FORMAT.md):
- `raw`: the tensor's bytes as they lie in memory (little-endian, row-major).
- `zstd`: one zstd frame of the raw bytes.
- `bgzstd`: byte-grouped zstd. The raw bytes of n elements of `itemsize` bytes are regrouped so that
  byte j of every element comes together (group 0 = least significant byte of each element, ...,
  group itemsize-1 = most significant), groups concatenated in that order, then one zstd frame. Sign and
  exponent bytes of floats repeat a lot, so they compress far better grouped.
zstandard releases the GIL, and CRC32C runs through ctypes (see `_native_extend`), so encoding in a
thread pool runs in parallel with training.
"""

from __future__ import annotations

import threading
from typing import Any

import google_crc32c
import zstandard
from kedge.ckpt.errors import FormatError

CODECS = ("raw", "zstd", "bgzstd")
ZSTD_LEVEL = 1  # fast: checkpoints are written often and read rarely
_local = threading.local()

try:  # numpy regroups bytes without holding the GIL; the slicing fallback is plain Python
    import numpy as _np
except ImportError:  # pragma: no cover - numpy comes with torch in practice
    _np = None  # type: ignore[assignment]


def _native_extend() -> Any:
    """crc32c_extend of the libcrc32c bundled with google-crc32c, through ctypes (None if absent).

    The package's Python extension holds the GIL while it checksums and takes only `bytes`, so a
    checkpoint's gigabytes were copied and checksummed with the GIL held, stalling the training
    thread; a ctypes call releases the GIL and reads the buffer in place.
    """
    import ctypes
    import glob
    import os

    site = os.path.dirname(os.path.dirname(os.path.abspath(google_crc32c.__file__)))
    for path in sorted(glob.glob(os.path.join(site, "google_crc32c.libs", "libcrc32c*.so*"))):
        try:
            extend = ctypes.CDLL(path).crc32c_extend
        except (OSError, AttributeError):
            continue
        extend.restype = ctypes.c_uint32
        extend.argtypes = [ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t]
        return extend
    return None


_EXTEND = _native_extend()


def _address(data: bytes | bytearray | memoryview) -> int | None:
    """The address of data's bytes without a copy, or None when ctypes cannot take it."""
    import ctypes

    if isinstance(data, bytes):
        return ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value
    view = data if isinstance(data, memoryview) else memoryview(data)
    if view.readonly or not view.c_contiguous or view.nbytes == 0:
        return None
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """CRC32C (Castagnoli) of data, as an unsigned 32-bit int; the GIL is released while it runs."""
    nbytes = len(data) if isinstance(data, bytes) else memoryview(data).nbytes
    address = _address(data) if _EXTEND is not None and nbytes else None
    if address is not None:
        return int(_EXTEND(0, address, nbytes))
    if not isinstance(data, bytes):
        data = bytes(data)  # the Python extension accepts only buffers that need no release (bytes)
    return int(google_crc32c.value(data))


def _compressor() -> Any:
    comp = getattr(_local, "compressor", None)
    if comp is None:
        comp = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        _local.compressor = comp
    return comp


def _decompressor() -> Any:
    dec = getattr(_local, "decompressor", None)
    if dec is None:
        dec = zstandard.ZstdDecompressor()
        _local.decompressor = dec
    return dec


def byte_group(data: bytes | bytearray | memoryview, itemsize: int) -> bytes:
    """Regroups bytes by significance within each element (see module docstring)."""
    if itemsize <= 1:
        return bytes(data)
    if len(data) % itemsize:
        raise ValueError(f"byte_group: length {len(data)} is not a multiple of itemsize {itemsize}")
    if _np is not None:
        arr = _np.frombuffer(data, dtype=_np.uint8).reshape(-1, itemsize)
        return bytes(arr.T.tobytes())
    raw = bytes(data)
    return b"".join(raw[j::itemsize] for j in range(itemsize))


def byte_ungroup(data: bytes | bytearray | memoryview, itemsize: int) -> bytes:
    """Inverse of byte_group."""
    if itemsize <= 1:
        return bytes(data)
    if len(data) % itemsize:
        raise FormatError(f"byte-grouped length {len(data)} is not a multiple of itemsize {itemsize}")
    if _np is not None:
        arr = _np.frombuffer(data, dtype=_np.uint8).reshape(itemsize, -1)
        return bytes(arr.T.tobytes())
    out = bytearray(len(data))
    n = len(data) // itemsize
    for j in range(itemsize):
        out[j::itemsize] = data[j * n : (j + 1) * n]
    return bytes(out)


def encode(data: memoryview | bytes, codec: str, itemsize: int) -> bytes | memoryview:
    """Encodes raw chunk bytes with codec (`raw` returns the input itself, without a copy)."""
    if codec == "raw":
        return data
    if codec == "zstd":
        return bytes(_compressor().compress(data))
    if codec == "bgzstd":
        return bytes(_compressor().compress(byte_group(data, itemsize)))
    raise ValueError(f"unknown codec {codec!r}; want one of {', '.join(CODECS)}")


def decode(data: bytes | bytearray | memoryview, codec: str, itemsize: int, raw_length: int) -> bytes:
    """Decodes stored chunk bytes back to raw_length raw bytes; FormatError on a bad frame."""
    if codec == "raw":
        out = bytes(data) if not isinstance(data, bytes) else data
    elif codec in ("zstd", "bgzstd"):
        try:
            out = bytes(_decompressor().decompress(data, max_output_size=raw_length))
        except zstandard.ZstdError as exc:
            raise FormatError(f"zstd frame does not decode: {exc}") from exc
        if codec == "bgzstd":
            out = byte_ungroup(out, itemsize)
    else:
        raise FormatError(f"unknown codec {codec!r}")
    if len(out) != raw_length:
        raise FormatError(f"decoded {len(out)} bytes, manifest says {raw_length}")
    return out
