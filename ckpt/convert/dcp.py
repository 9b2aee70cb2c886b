"""PyTorch distributed checkpoints (DCP) in and out: `.metadata` plus `__<rank>_<n>.distcp` files.

DCP stores each chunk (one rank's box of a tensor) as a self-contained `torch.save` record at a byte
range of a `.distcp` file, optionally through a zstd stream (`transform_descriptors` =
["stream.zstd/1"], what `FileSystemWriter(_extensions=[ZStandard()])` writes). The index is a
pickled `Metadata` object. That pickle is the only one kedge reads without `weights_only`, and
only through `RestrictedUnpickler`, which admits DCP's own metadata classes and nothing else.

Reading opens one chunk at a time (`torch.load(weights_only=True)` over the file slice, which reads
only that range). Writing appends each chunk as DCP does, then writes `.metadata` last; the
directory is renamed into place only after read-back, so `dcp.load` on any world size reads it.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from kedge.ckpt.convert.base import (
    Chunk,
    ConvertError,
    TensorMeta,
    TensorSource,
    check_dtype,
    dtype_name,
)
from kedge.ckpt.convert.staging import StagedPath

METADATA_NAME = ".metadata"
DATA_FILE = "__0_0.distcp"
ZSTD_DESCRIPTOR = "stream.zstd/1"
# A .metadata larger than this is not from DCP; refuse before unpickling it.
MAX_METADATA_BYTES = 1 << 30

_ALLOWED_METADATA = {
    "Metadata",
    "TensorStorageMetadata",
    "TensorProperties",
    "_MEM_FORMAT_ENCODING",
    "ChunkStorageMetadata",
    "BytesStorageMetadata",
    "MetadataIndex",
    "StorageMeta",
}
_ALLOWED_GLOBALS = {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.distributed.checkpoint.filesystem", "_StoragePrefix"),
    ("torch.serialization", "_get_layout"),
    ("torch", "Size"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PureWindowsPath"),
    ("collections", "OrderedDict"),
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles DCP `.metadata`: only DCP's metadata classes, torch dtypes/Size, paths."""

    def find_class(self, module: str, name: str) -> Any:
        import torch

        allowed = (module, name) in _ALLOWED_GLOBALS or (
            module == "torch.distributed.checkpoint.metadata" and name in _ALLOWED_METADATA
        )
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            allowed = True
        if not allowed:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in DCP metadata")
        return super().find_class(module, name)


def is_dcp_dir(path: Path) -> bool:
    return path.is_dir() and (path / METADATA_NAME).is_file()


def read_metadata(path: Path) -> Any:
    file = path / METADATA_NAME
    try:
        if file.stat().st_size > MAX_METADATA_BYTES:
            raise ConvertError(f"{file}: too large for DCP metadata")
        with file.open("rb") as f:
            metadata = RestrictedUnpickler(f).load()
    except ConvertError:
        raise
    except Exception as e:  # any unpickling failure means a bad file, named.
        raise ConvertError(f"{file}: corrupted or not DCP metadata ({e})") from e
    if type(metadata).__name__ != "Metadata" or not isinstance(metadata.state_dict_metadata, dict):
        raise ConvertError(f"{file}: not DCP metadata")
    return metadata


class _FileSlice(io.RawIOBase):
    """A seekable read-only window [start, start+length) of an open file."""

    def __init__(self, handle: io.BufferedReader, start: int, length: int) -> None:
        super().__init__()
        self._handle, self._start, self._length, self._pos = handle, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        want = max(0, min(len(view), self._length - self._pos))
        self._handle.seek(self._start + self._pos)
        got = self._handle.readinto(view[:want]) or 0
        self._pos += got
        return got


@dataclass(frozen=True, slots=True)
class _Item:
    file: str
    offset: int
    length: int
    zstd: bool


class DcpSource:
    """A DCP checkpoint directory written by `torch.distributed.checkpoint.save` (any world size)."""

    def __init__(self, path: Path) -> None:
        if not is_dcp_dir(path):
            raise ConvertError(f"{path}: not a DCP directory (no {METADATA_NAME})")
        self._path = path
        metadata = read_metadata(path)
        self._items = self._index_items(metadata.storage_data or {})
        self._metas: dict[str, TensorMeta] = {}
        self._chunks: dict[str, list[tuple[tuple[int, ...], tuple[int, ...]]]] = {}
        self._value_names: list[str] = []
        for fqn, entry in metadata.state_dict_metadata.items():
            if type(entry).__name__ == "TensorStorageMetadata":
                dtype = check_dtype(dtype_name(entry.properties.dtype), f"{path}: tensor {fqn!r}")
                self._metas[fqn] = TensorMeta(fqn, dtype, tuple(int(d) for d in entry.size))
                self._chunks[fqn] = [(tuple(c.offsets), tuple(c.sizes)) for c in entry.chunks]
            else:
                self._value_names.append(fqn)
        self._check_files()
        self._handles: dict[str, io.BufferedReader] = {}

    def _index_items(self, storage_data: dict[Any, Any]) -> dict[tuple[str, tuple[int, ...] | None], _Item]:
        items = {}
        for index, info in storage_data.items():
            descriptors = list(getattr(info, "transform_descriptors", None) or [])
            unknown = [d for d in descriptors if d != ZSTD_DESCRIPTOR]
            if unknown:
                raise ConvertError(f"{self._path}: unsupported DCP stream transform {unknown[0]!r}")
            offset = tuple(index.offset) if index.offset is not None else None
            item = _Item(str(info.relative_path), int(info.offset), int(info.length), bool(descriptors))
            if os.sep in item.file or item.file.startswith(".") or item.offset < 0 or item.length < 0:
                raise ConvertError(f"{self._path}: bad storage entry for {index.fqn!r}")
            items[(index.fqn, offset)] = item
        return items

    def _check_files(self) -> None:
        for file in sorted({item.file for item in self._items.values()}):
            if not (self._path / file).is_file():
                raise ConvertError(f"{self._path / file}: DCP data file is missing")

    def tensors(self) -> list[TensorMeta]:
        return list(self._metas.values())

    def values(self) -> dict[str, Any]:
        return {name: self._load_item(self._item(name, None), name) for name in self._value_names}

    def _item(self, fqn: str, offsets: tuple[int, ...] | None) -> _Item:
        item = self._items.get((fqn, offsets))
        if item is None:
            raise ConvertError(f"{self._path}: no stored data for {fqn!r} at offsets {offsets}")
        return item

    def _load_item(self, item: _Item, what: str) -> Any:
        import torch

        file = self._path / item.file
        handle = self._handles.get(item.file)
        if handle is None:
            handle = self._handles[item.file] = file.open("rb")
        if item.offset + item.length > os.fstat(handle.fileno()).st_size:
            raise ConvertError(f"{file}: truncated (data of {what!r} ends past the file end)")
        stream: IO[bytes] = io.BufferedReader(_FileSlice(handle, item.offset, item.length))
        try:
            if item.zstd:
                stream = _decompress(stream)
            return torch.load(stream, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise ConvertError(f"{file}: {what!r} needs code to load (only weights_only data is read)") from e
        except Exception as e:  # torch.load raises many types on damaged bytes
            raise ConvertError(f"{file}: corrupted data for {what!r} ({str(e).splitlines()[0][:160]})") from e

    def read(self, meta: TensorMeta) -> Iterator[Chunk]:
        import torch

        for offsets, sizes in self._chunks[meta.name]:
            tensor = self._load_item(self._item(meta.name, offsets), meta.name)
            if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != sizes:
                raise ConvertError(f"{self._path}: chunk of {meta.name!r} at {offsets} has the wrong shape")
            if dtype_name(tensor.dtype) != meta.dtype:
                raise ConvertError(f"{self._path}: chunk of {meta.name!r} has dtype {tensor.dtype}")
            yield Chunk(offsets=offsets, sizes=sizes, tensor=tensor.contiguous())
            del tensor  # before the next chunk is loaded

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()


def _decompress(stream: IO[bytes]) -> IO[bytes]:
    import zstandard

    # torch.load needs a seekable stream; one chunk is decompressed at a time.
    with zstandard.ZstdDecompressor().stream_reader(stream) as reader:
        return io.BytesIO(reader.read())


# ----------------------------------------------------------------------------------- writing
class DcpSink:
    """Writes a DCP directory (one data file, chunks kept as given) loadable at any world size."""

    whole_tensors = False

    def __init__(self, dst: Path, *, overwrite: bool) -> None:
        self._staged = StagedPath(dst, overwrite=overwrite, is_dir=True)
        self._handle: IO[bytes] | None = None
        self._metas: list[TensorMeta] = []
        self._values: dict[str, Any] = {}
        self._chunks: dict[str, list[tuple[tuple[int, ...], tuple[int, ...]]]] = {}
        self._storage: dict[tuple[str, tuple[int, ...] | None], tuple[int, int, int | None]] = {}

    def plan_files(self, metas: list[TensorMeta]) -> list[str]:
        return [str(self._staged.final / name) for name in (DATA_FILE, METADATA_NAME)]

    def begin(self, metas: list[TensorMeta], values: dict[str, Any]) -> None:
        import torch

        self._staged.create()
        self._metas, self._values = metas, values
        self._handle = (self._staged.path / DATA_FILE).open("wb")
        for name, value in values.items():
            start = self._handle.tell()
            torch.save(value, self._handle)
            self._storage[(name, None)] = (start, self._handle.tell() - start, None)

    def write(self, meta: TensorMeta, chunk: Chunk) -> None:
        import torch

        assert self._handle is not None
        chunks = self._chunks.setdefault(meta.name, [])
        start = self._handle.tell()
        torch.save(chunk.tensor, self._handle)
        self._storage[(meta.name, chunk.offsets)] = (start, self._handle.tell() - start, len(chunks))
        chunks.append((chunk.offsets, chunk.sizes))

    def end(self) -> None:
        assert self._handle is not None
        self._handle.close()
        self._handle = None
        with (self._staged.path / METADATA_NAME).open("wb") as f:
            pickle.dump(self._metadata(), f)

    def _metadata(self) -> Any:
        import torch.distributed.checkpoint.filesystem as fs
        import torch.distributed.checkpoint.metadata as md
        from kedge.ckpt.convert.base import torch_dtype

        entries: dict[str, Any] = {name: md.BytesStorageMetadata() for name in self._values}
        for meta in self._metas:
            chunks = [
                md.ChunkStorageMetadata(offsets=_size(o), sizes=_size(s)) for o, s in self._chunks[meta.name]
            ]
            props = md.TensorProperties(dtype=torch_dtype(meta.dtype))
            entries[meta.name] = md.TensorStorageMetadata(
                properties=props, size=_size(meta.shape), chunks=chunks
            )
        storage = {
            md.MetadataIndex(fqn, offsets, index): fs._StorageInfo(DATA_FILE, start, length)
            for (fqn, offsets), (start, length, index) in self._storage.items()
        }
        return md.Metadata(
            state_dict_metadata=entries,
            planner_data={name: (name,) for name in entries},
            storage_data=storage,
            storage_meta=md.StorageMeta(),
            version=getattr(fs, "CURRENT_DCP_VERSION", "1.0.0"),
        )

    def staged_source(self) -> TensorSource:
        return DcpSource(self._staged.path)

    def commit(self) -> None:
        self._staged.commit()

    def abort(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        self._staged.abort()


def _size(dims: tuple[int, ...]) -> Any:
    import torch

    return torch.Size(dims)
