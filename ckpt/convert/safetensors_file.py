"""safetensors in and out: one file, or Hugging Face sharded weights with `model.safetensors.index.json`.

The file format is simple enough to stream without the safetensors library: an 8-byte little-endian
header length, a JSON header (name -> dtype, shape, data_offsets relative to the data section), then
the raw little-endian tensor bytes. Reading range-reads one tensor into its destination buffer;
writing emits the header (computed from the metadata alone) and then each tensor's bytes in order.
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import re
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

from kedge.ckpt.convert.base import (
    DTYPE_ITEMSIZE,
    Chunk,
    ConvertError,
    TensorMeta,
    TensorSource,
    drop_pages,
    empty_tensor,
    tensor_bytes,
    torch_dtype,
    whole_chunk,
)
from kedge.ckpt.convert.staging import StagedPath

if TYPE_CHECKING:
    import torch

INDEX_NAME = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9
# A header beyond this is not a real safetensors file; refuse before allocating for it.
MAX_HEADER_BYTES = 100 << 20
_HEADER_ALIGN = 8

SAFETENSORS_DTYPES = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "uint16": "U16",
    "uint32": "U32",
    "uint64": "U64",
    "bool": "BOOL",
    "complex64": "C64",
}
_FROM_SAFETENSORS = {code: name for name, code in SAFETENSORS_DTYPES.items()}
_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_SIZE_UNITS |= {"KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40}


def parse_size(text: str) -> int:
    """'5GB' (decimal, as Hugging Face), '512MiB' (binary) or plain bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*", text.upper())
    if not match or match.group(2) not in _SIZE_UNITS:
        raise ConvertError(f"bad size {text!r}: use bytes or a unit such as 500MB, 5GB, 1GiB")
    size = int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])
    if size <= 0:
        raise ConvertError(f"bad size {text!r}: must be positive")
    return size


def is_safetensors_file(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            head = f.read(9)
    except OSError:
        return False
    if len(head) < 9:
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return 0 < length <= MAX_HEADER_BYTES and head[8:9] == b"{"


def find_index(path: Path) -> Path | None:
    if path.is_dir():
        candidates = sorted(path.glob("*.safetensors.index.json"))
        return candidates[0] if candidates else None
    return path if path.name.endswith(".index.json") else None


# ----------------------------------------------------------------------------------- reading
class _FileHeader:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            size_bytes = path.stat().st_size
            with path.open("rb") as f:
                raw_len = f.read(8)
                if len(raw_len) < 8:
                    raise ConvertError(f"{path}: truncated safetensors file (no header)")
                (length,) = struct.unpack("<Q", raw_len)
                if length > MAX_HEADER_BYTES or 8 + length > size_bytes:
                    raise ConvertError(f"{path}: truncated or corrupted safetensors header")
                header = json.loads(f.read(length))
        except (OSError, ValueError, UnicodeDecodeError) as e:
            raise ConvertError(f"{path}: not a readable safetensors file ({e})") from e
        if not isinstance(header, dict):
            raise ConvertError(f"{path}: corrupted safetensors header")
        self.data_start = 8 + length
        self.metadata = header.pop("__metadata__", None)
        self.entries: dict[str, tuple[TensorMeta, int]] = {}
        for name, entry in header.items():
            self.entries[name] = self._entry(name, entry, size_bytes - self.data_start)

    def _entry(self, name: str, entry: Any, data_bytes: int) -> tuple[TensorMeta, int]:
        try:
            dtype = _FROM_SAFETENSORS[entry["dtype"]]
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise ConvertError(f"{self.path}: bad header entry for {name!r}") from e
        meta = TensorMeta(name=name, dtype=dtype, shape=shape)
        if min(shape, default=0) < 0 or not 0 <= begin <= end or end - begin != meta.nbytes:
            raise ConvertError(f"{self.path}: header entry {name!r} is inconsistent")
        if end > data_bytes:
            raise ConvertError(f"{self.path}: truncated (tensor {name!r} ends past the file end)")
        return meta, self.data_start + begin


class SafetensorsSource:
    """One .safetensors file, or a sharded set through its index (a directory or the index file)."""

    def __init__(self, path: Path) -> None:
        index = find_index(path)
        files = self._files_from_index(index) if index else [path]
        self._where: dict[str, tuple[TensorMeta, Path, int]] = {}
        for file in files:
            header = _FileHeader(file)
            for name, (meta, offset) in header.entries.items():
                self._where[name] = (meta, file, offset)
        self._handles: dict[Path, io.BufferedReader] = {}
        self._maps: dict[Path, torch.UntypedStorage] = {}

    @staticmethod
    def _files_from_index(index: Path) -> list[Path]:
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            names = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConvertError(f"{index}: not a readable safetensors index ({e})") from e
        files = []
        for name in names:
            file = index.parent / name
            if os.sep in name or name.startswith(".") or not file.is_file():
                raise ConvertError(f"{index}: shard {name!r} is missing")
            files.append(file)
        return files

    def tensors(self) -> list[TensorMeta]:
        return [meta for meta, _, _ in self._where.values()]

    def values(self) -> dict[str, Any]:
        return {}

    def read(self, meta: TensorMeta) -> Iterator[Chunk]:
        _, file, offset = self._where[meta.name]
        if meta.nbytes and offset % DTYPE_ITEMSIZE[meta.dtype] == 0:
            # Memory-mapped: no copy into a fresh buffer; the pages are dropped after the write.
            tensor = self._mapped_tensor(file, offset, meta)
            try:
                yield Chunk((0,) * len(meta.shape), meta.shape, tensor, file_range=(str(file), offset))
            finally:
                drop_pages(tensor)
            return
        yield self._read_copy(file, offset, meta)

    def _mapped_tensor(self, file: Path, offset: int, meta: TensorMeta) -> torch.Tensor:
        import torch

        if file not in self._maps:
            size = file.stat().st_size
            mapped = torch.UntypedStorage.from_file(str(file), shared=False, nbytes=size)
            self._maps[file] = cast("torch.UntypedStorage", mapped)
        storage = self._maps[file]
        itemsize = DTYPE_ITEMSIZE[meta.dtype]
        stride = [1] * len(meta.shape)
        for dim in range(len(meta.shape) - 2, -1, -1):
            stride[dim] = stride[dim + 1] * max(meta.shape[dim + 1], 1)
        empty = torch.empty(0, dtype=torch_dtype(meta.dtype))
        return empty.set_(storage, offset // itemsize, meta.shape, tuple(stride))

    def _read_copy(self, file: Path, offset: int, meta: TensorMeta) -> Chunk:
        handle = self._handles.get(file)
        if handle is None:
            handle = self._handles[file] = file.open("rb")
        tensor = empty_tensor(meta.dtype, meta.shape)
        handle.seek(offset)
        if handle.readinto(tensor_bytes(tensor)) != meta.nbytes:
            raise ConvertError(f"{file}: truncated while reading tensor {meta.name!r}")
        return whole_chunk(tensor)

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()
        self._maps.clear()


# ----------------------------------------------------------------------------------- writing
def _header_bytes(metas: list[TensorMeta]) -> bytes:
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for meta in metas:
        header[meta.name] = {
            "dtype": SAFETENSORS_DTYPES[meta.dtype],
            "shape": list(meta.shape),
            "data_offsets": [offset, offset + meta.nbytes],
        }
        offset += meta.nbytes
    body = json.dumps(header, separators=(",", ":")).encode()
    body += b" " * (-len(body) % _HEADER_ALIGN)
    return struct.pack("<Q", len(body)) + body


def plan_shards(metas: list[TensorMeta], max_shard_bytes: int) -> list[list[TensorMeta]]:
    """Greedy, in order: a new shard starts when the next tensor would overflow the current one."""
    shards: list[list[TensorMeta]] = [[]]
    used = 0
    for meta in metas:
        if shards[-1] and used + meta.nbytes > max_shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(meta)
        used += meta.nbytes
    return shards


def shard_name(index: int, count: int) -> str:
    return f"model-{index + 1:05d}-of-{count:05d}.safetensors"


class SafetensorsSink:
    """Writes one file (DST ends in .safetensors) or a sharded directory with an index."""

    whole_tensors = True

    def __init__(self, dst: Path, *, overwrite: bool, max_shard_bytes: int | None) -> None:
        self._sharded = dst.suffix != ".safetensors"
        self._max_shard_bytes = max_shard_bytes or DEFAULT_MAX_SHARD_BYTES
        self._staged = StagedPath(dst, overwrite=overwrite, is_dir=self._sharded)
        self._file_of: dict[str, Path] = {}
        self._handle: IO[bytes] | None = None
        self._current: Path | None = None

    def _layout(self, metas: list[TensorMeta]) -> list[tuple[Path, list[TensorMeta]]]:
        if not self._sharded:
            return [(self._staged.path, metas)]
        shards = plan_shards(metas, self._max_shard_bytes)
        return [(self._staged.path / shard_name(i, len(shards)), s) for i, s in enumerate(shards)]

    def plan_files(self, metas: list[TensorMeta]) -> list[str]:
        if not self._sharded:
            return [str(self._staged.final)]
        names = [path.name for path, _ in self._layout(metas)]
        return [str(self._staged.final / n) for n in [*names, INDEX_NAME]]

    def begin(self, metas: list[TensorMeta], values: dict[str, Any]) -> None:
        for meta in metas:
            if meta.dtype not in SAFETENSORS_DTYPES:
                raise ConvertError(f"tensor {meta.name!r}: dtype {meta.dtype} has no safetensors code")
        self._staged.create()
        layout = self._layout(metas)
        for path, shard in layout:
            with path.open("wb") as f:
                f.write(_header_bytes(shard))
            self._file_of.update((meta.name, path) for meta in shard)
        if self._sharded:
            self._write_index(layout)

    def _write_index(self, layout: list[tuple[Path, list[TensorMeta]]]) -> None:
        total = sum(m.nbytes for _, shard in layout for m in shard)
        weight_map = {m.name: path.name for path, shard in layout for m in shard}
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (self._staged.path / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")

    def write(self, meta: TensorMeta, chunk: Chunk) -> None:
        path = self._file_of[meta.name]
        if path != self._current:
            self._close_handle()
            self._handle = path.open("r+b")  # not "ab": copy_file_range refuses O_APPEND
            self._handle.seek(0, os.SEEK_END)
            self._current = path
        assert self._handle is not None
        assert chunk.sizes == meta.shape and math.prod(chunk.sizes) == meta.numel
        if chunk.file_range is not None and meta.nbytes:
            self._copy_range(chunk.file_range, meta.nbytes)
        else:
            self._handle.write(tensor_bytes(chunk.tensor))

    def _copy_range(self, file_range: tuple[str, int], nbytes: int) -> None:
        """In-kernel copy (as cp does): no page of the tensor passes through this process."""
        assert self._handle is not None
        self._handle.flush()
        path, offset = file_range
        with open(path, "rb") as src:
            done = 0
            while done < nbytes:
                try:
                    copied = os.copy_file_range(
                        src.fileno(), self._handle.fileno(), nbytes - done, offset + done
                    )
                except OSError as e:
                    if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL) or done:
                        raise
                    copied = 0
                if copied == 0:  # not supported here (or source shorter): plain copy of the rest
                    src.seek(offset + done)
                    self._handle.write(src.read(nbytes - done))
                    self._handle.flush()
                    return
                done += copied

    def _close_handle(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def end(self) -> None:
        self._close_handle()

    def staged_source(self) -> TensorSource:
        return SafetensorsSource(self._staged.path)

    def commit(self) -> None:
        self._staged.commit()

    def abort(self) -> None:
        self._close_handle()
        self._staged.abort()
