"""kedge checkpoints in and out, through the format's own reader, writer and storage.

Input: any committed step of a kedge root (`--step`, latest by default), any fsspec URL. Chunks
are read one at a time (decoded and CRC-checked by `kedge.ckpt.reader.read_chunk`).

Output commit: for a local root, the whole root is written under a temporary name and renamed
into place after read-back (see `staging`). For a remote URL, kedge's own commit protocol applies
(data files, then the manifest last; a step without its manifest is never listed as loadable), and
a failed conversion removes the step it started.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kedge.ckpt.convert.base import (
    Chunk,
    ConvertError,
    TensorMeta,
    TensorSource,
    check_dtype,
    empty_tensor,
    tensor_bytes,
)
from kedge.ckpt.convert.staging import StagedPath

logger = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step-(\d+)$")
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
COMMIT_TIMEOUT_S = 60.0


def is_kedge_root(src: str) -> bool:
    """A local directory holding `step-<n>` directories (or one such step directory)."""
    path = Path(src.removeprefix("file://"))
    if not path.is_dir():
        return False
    return bool(_STEP_DIR.match(path.name)) or any(_STEP_DIR.match(p.name) for p in path.iterdir())


def _root_and_step(src: str, step: int | None) -> tuple[str, int | None]:
    """`root/step-000000000100` is accepted for `root --step 100`."""
    if _URL.match(src) and not src.startswith("file://"):
        return src, step
    path = Path(src.removeprefix("file://"))
    match = _STEP_DIR.match(path.name)
    if match and step is None:
        return str(path.parent), int(match.group(1))
    return src, step


def _json_value(key: str, value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        logger.warning(
            "event=convert_value_dropped key=%s type=%s reason=not_json", key, type(value).__name__
        )
        return False
    return True


class KedgeSource:
    """One committed step of a kedge checkpoint root."""

    def __init__(self, src: str, *, step: int | None = None) -> None:
        from kedge.ckpt import reader
        from kedge.ckpt.errors import CkptError
        from kedge.ckpt.storage import Storage

        root, step = _root_and_step(src, step)
        try:
            self._storage = Storage(root)
            steps = self._storage.committed_steps()
            if not steps:
                raise ConvertError(f"{src}: no committed kedge checkpoint there")
            if step is not None and step not in steps:
                raise ConvertError(f"{src}: step {step} is not committed (committed: {steps[-5:]})")
            self.step = step if step is not None else max(steps)
            self._manifest = reader.open_manifest(self._storage, self.step)
        except CkptError as e:
            raise ConvertError(f"{src}: {e}") from e
        self._src = src

    def tensors(self) -> list[TensorMeta]:
        return [
            TensorMeta(r.name, check_dtype(r.dtype, f"{self._src}: tensor {r.name!r}"), tuple(r.shape))
            for r in self._manifest.tensors.values()
        ]

    def values(self) -> dict[str, Any]:
        return dict(self._manifest.values)

    def read(self, meta: TensorMeta) -> Iterator[Chunk]:
        from kedge.ckpt import reader
        from kedge.ckpt.errors import CkptError

        record = self._manifest.tensors[meta.name]
        for chunk in record.chunks:
            try:
                data = reader.read_chunk_raw(self._storage, chunk, record)
            except CkptError as e:
                raise ConvertError(f"{self._src}: {e}") from e
            tensor = empty_tensor(meta.dtype, tuple(chunk.sizes))
            view = tensor_bytes(tensor)
            if len(data) != len(view):
                raise ConvertError(f"{self._src}: chunk of {meta.name!r} in {chunk.file} has the wrong size")
            view[:] = data
            del data
            yield Chunk(offsets=tuple(chunk.offsets), sizes=tuple(chunk.sizes), tensor=tensor)
            del tensor, view  # before the next chunk is read

    def close(self) -> None:
        pass


class KedgeSink:
    """Writes one step (world size 1, chunks kept as given) of a new kedge root."""

    whole_tensors = False

    def __init__(self, dst: str, *, overwrite: bool, codec: str, step: int | None) -> None:
        from kedge.ckpt import codec as codecs
        from kedge.ckpt import reader  # noqa: F401  (imported now: verification opens the output)
        from kedge.ckpt.storage import Storage

        if codec not in codecs.CODECS:
            raise ConvertError(f"unknown codec {codec!r} for --codec (supported: {', '.join(codecs.CODECS)})")

        self._step = step or 0
        self._codec = codec
        self._staged: StagedPath | None = None
        if _URL.match(dst) and not dst.startswith("file://"):
            self._url = dst
            self._storage = Storage(dst)
        else:
            self._staged = StagedPath(
                Path(dst.removeprefix("file://")).absolute(), overwrite=overwrite, is_dir=True
            )
            self._url = str(self._staged.path)
            self._storage = Storage(self._url)
        self._writer: Any = None
        self._overwrite = overwrite
        self._started = False

    def _check_remote(self, overwrite: bool) -> None:
        step_dir = self._storage.step_dir(self._step)
        if self._storage.exists(step_dir):
            if not overwrite:
                raise ConvertError(f"{self._url}: step {self._step} exists (pass --overwrite to replace it)")
            self._storage.remove_tree(step_dir)

    def plan_files(self, metas: list[TensorMeta]) -> list[str]:
        final = str(self._staged.final) if self._staged else self._url
        return [f"{final.rstrip('/')}/{self._storage.step_dir(self._step)}/"]

    def begin(self, metas: list[TensorMeta], values: dict[str, Any]) -> None:
        from kedge.ckpt.writer import RankWriter

        if self._staged is not None:
            self._staged.create()
        else:
            self._check_remote(self._overwrite)
            self._started = True  # from here on, the step under construction is ours to remove
        self._values = {k: v for k, v in values.items() if _json_value(k, v)}
        self._writer = RankWriter(self._storage, self._step, 0, self._codec)

    def write(self, meta: TensorMeta, chunk: Chunk) -> None:
        self._writer.add_chunk(
            meta.name, meta.dtype, meta.shape, chunk.offsets, chunk.sizes, tensor_bytes(chunk.tensor)
        )

    def end(self) -> None:
        from kedge.ckpt.writer import commit_step

        self._writer.finish(self._values)
        commit_step(self._storage, self._step, 1, timeout_s=COMMIT_TIMEOUT_S, extra={"converted": True})

    def staged_source(self) -> TensorSource:
        return KedgeSource(self._url, step=self._step)

    def commit(self) -> None:
        if self._staged is not None:
            self._staged.commit()

    def abort(self) -> None:
        if self._staged is not None:
            self._staged.abort()
            return
        if not self._started:
            return  # refused before writing: an existing step is not ours to remove
        try:
            self._storage.remove_tree(self._storage.step_dir(self._step))
        except Exception as e:  # best effort: the step has no manifest, so it is not loadable anyway
            logger.warning("event=convert_cleanup_failed url=%s error=%s", self._url, e)
