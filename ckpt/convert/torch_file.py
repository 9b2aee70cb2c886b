"""`torch.save` files in and out.

Reading uses `torch.load(weights_only=True)` (no code runs) unless the user passes `--unsafe-pickle`,
and memory-maps zip-format files so only the tensor being moved is resident: after a tensor is
written its pages are dropped again (madvise), so resident memory stays near one tensor.

Writing streams: the pickle (`data.pkl`) of a flat name -> tensor dict is built from the metadata
alone, with each tensor pickled as torch's own `_rebuild_tensor_v2` over a persistent storage
reference, exactly the records `torch.save` emits. Then each tensor's bytes are written as its
storage record through torch's zip writer, one tensor at a time. `torch.load` reads the result
with `weights_only=True`.
"""

from __future__ import annotations

import collections
import io
import pickle
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any, cast

from kedge.ckpt.convert.base import (
    Chunk,
    ConvertError,
    TensorMeta,
    TensorSource,
    drop_pages,
    dtype_name,
    torch_dtype,
    whole_chunk,
)
from kedge.ckpt.convert.staging import StagedPath

ZIP_MAGIC = b"PK\x03\x04"
# Legacy (pre-1.6) torch.save files start with a pickled magic number (protocol 2).
LEGACY_MAGIC = b"\x80\x02\x8a\x0a"


def is_torch_file(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head in (ZIP_MAGIC, LEGACY_MAGIC)


def flatten(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Nested dicts/lists become dotted names (as DCP flattens state dicts); other objects are leaves."""
    if isinstance(obj, Mapping) and obj:
        for key, value in obj.items():
            yield from flatten(value, f"{prefix}{key}.")
    elif isinstance(obj, (list, tuple)) and obj and not hasattr(obj, "_fields"):
        for i, value in enumerate(obj):
            yield from flatten(value, f"{prefix}{i}.")
    else:
        yield prefix[:-1], obj


def _load(path: Path, *, unsafe_pickle: bool) -> Any:
    import torch

    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=not unsafe_pickle, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            # Legacy (non-zip) format cannot be memory-mapped.
            return torch.load(path, map_location="cpu", weights_only=not unsafe_pickle)
    except pickle.UnpicklingError as e:
        if unsafe_pickle:
            raise ConvertError(f"{path}: corrupted torch.save file ({_first_line(e)})") from e
        raise ConvertError(
            f"{path}: loading needs code beyond plain tensors ({_first_line(e)}); "
            "pass --unsafe-pickle only if you trust the file"
        ) from e
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise ConvertError(f"{path}: corrupted or truncated torch.save file ({_first_line(e)})") from e


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0][:200] if lines else type(error).__name__


class TorchFileSource:
    """A `torch.save` file; nested dicts/lists are flattened to dotted names."""

    def __init__(self, path: Path, *, unsafe_pickle: bool = False) -> None:
        import torch

        if not path.is_file():
            raise ConvertError(f"{path}: no such file")
        self._path = path
        obj = _load(path, unsafe_pickle=unsafe_pickle)
        self._tensors: dict[str, torch.Tensor] = {}
        self._values: dict[str, Any] = {}
        for name, leaf in flatten(obj):
            if isinstance(leaf, torch.Tensor):
                self._tensors[name] = leaf
            else:
                self._values[name] = leaf
        self._mapped = True

    def tensors(self) -> list[TensorMeta]:
        return [TensorMeta(n, dtype_name(t.dtype), tuple(t.shape)) for n, t in self._tensors.items()]

    def values(self) -> dict[str, Any]:
        return dict(self._values)

    def read(self, meta: TensorMeta) -> Iterator[Chunk]:
        tensor = self._tensors[meta.name]
        try:
            yield whole_chunk(tensor.contiguous())
        finally:
            drop_pages(tensor)

    def close(self) -> None:
        self._tensors.clear()


# ----------------------------------------------------------------------------------- writing
class _StorageRef:
    def __init__(self, key: str, meta: TensorMeta) -> None:
        self.key = key
        self.meta = meta


class _TensorRef:
    def __init__(self, storage: _StorageRef) -> None:
        self.storage = storage


def _contiguous_stride(shape: tuple[int, ...]) -> tuple[int, ...]:
    stride, acc = [], 1
    for dim in reversed(shape):
        stride.append(acc)
        acc *= max(dim, 1)
    return tuple(reversed(stride))


class _Pickler(pickle.Pickler):
    """Pickles _TensorRef as torch.save pickles a contiguous tensor over its own storage."""

    def persistent_id(self, obj: Any) -> Any:
        import torch

        if isinstance(obj, _StorageRef):
            storage_type = getattr(
                torch, torch.storage._dtype_to_storage_type_map()[torch_dtype(obj.meta.dtype)]
            )
            return ("storage", storage_type, obj.key, "cpu", obj.meta.numel)
        return None

    def reducer_override(self, obj: Any) -> Any:
        import torch

        if isinstance(obj, _TensorRef):
            meta = obj.storage.meta
            args: tuple[Any, ...] = (
                obj.storage,
                0,
                meta.shape,
                _contiguous_stride(meta.shape),
                False,
                collections.OrderedDict(),
            )
            return torch._utils._rebuild_tensor_v2, args
        return NotImplemented


def data_pickle(metas: list[TensorMeta], values: dict[str, Any]) -> bytes:
    state: dict[str, Any] = {m.name: _TensorRef(_StorageRef(str(i), m)) for i, m in enumerate(metas)}
    state.update((k, v) for k, v in values.items() if k not in state)
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(state)
    return buf.getvalue()


class _LatchedFile:
    """A file whose first write error is latched and later writes dropped.

    torch's zip writer finalises the archive in its destructor, and a failed write there would
    abort the process (an exception thrown from a C++ destructor); so writes never fail under it,
    and the error is raised by `check()` after each record instead.
    """

    def __init__(self, path: Path) -> None:
        self._file = path.open("wb")
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        size = len(memoryview(data))
        if self.error is None:
            try:
                self._file.write(data)
            except OSError as e:
                self.error = e
        return size

    def flush(self) -> None:
        if self.error is None:
            try:
                self._file.flush()
            except OSError as e:
                self.error = e

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        try:
            self._file.close()
        except OSError as e:
            self.error = self.error or e


class TorchFileSink:
    """Writes a flat name -> tensor (and plain values) dict loadable by `torch.load(weights_only=True)`."""

    whole_tensors = True

    def __init__(self, dst: Path, *, overwrite: bool) -> None:
        self._staged = StagedPath(dst, overwrite=overwrite, is_dir=False)
        self._keys: dict[str, str] = {}
        self._writer: Any = None
        self._file: _LatchedFile | None = None

    def plan_files(self, metas: list[TensorMeta]) -> list[str]:
        return [str(self._staged.final)]

    def begin(self, metas: list[TensorMeta], values: dict[str, Any]) -> None:
        import sys

        import torch

        self._staged.create()
        self._keys = {m.name: str(i) for i, m in enumerate(metas)}
        self._file = _LatchedFile(self._staged.path)
        self._writer = torch._C.PyTorchFileWriter(cast(IO[bytes], self._file))
        data = data_pickle(metas, values)
        self._writer.write_record("data.pkl", data, len(data))
        self._writer.write_record(".format_version", "1", 1)
        self._writer.write_record(".storage_alignment", "64", 2)
        self._writer.write_record("byteorder", sys.byteorder, len(sys.byteorder))
        self._file.check()

    def write(self, meta: TensorMeta, chunk: Chunk) -> None:
        tensor = chunk.tensor
        nbytes = tensor.numel() * tensor.element_size()
        if tensor.storage_offset() != 0 or tensor.untyped_storage().nbytes() != nbytes:
            tensor = tensor.clone()  # the record is the whole storage, so it must be exactly this tensor
        self._writer.write_record(f"data/{self._keys[meta.name]}", tensor.untyped_storage(), nbytes)
        assert self._file is not None
        self._file.check()

    def end(self) -> None:
        if self._writer is not None and self._file is not None:
            self._writer.write_end_of_file()
            self._writer = None
            self._file.close()
            self._file.check()

    def staged_source(self) -> TensorSource:
        return TorchFileSource(self._staged.path)

    def commit(self) -> None:
        self._staged.commit()

    def abort(self) -> None:
        self._writer = None  # its destructor finishes into the latched file, which drops writes
        if self._file is not None:
            self._file.error = self._file.error or OSError("aborted")
            self._file.close()
        self._staged.abort()
