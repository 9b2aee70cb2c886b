"""Moves tensors from a source to a sink one chunk at a time: select, rename, cast, verify, commit.

Verification (on unless `--no-verify`): the checksum (CRC32C) of every chunk's bytes is recorded
as it is written, on a second thread; after `sink.end()` the staged output is opened with the same format's reader and every
chunk is read back and compared (names, dtypes, shapes, bytes). Only then is the output committed
(made visible); on any failure the sink removes everything it wrote.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import math
import re
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TextIO

from kedge.ckpt.convert.base import (
    FLOAT_DTYPES,
    Chunk,
    ConvertError,
    OutputError,
    TensorMeta,
    TensorSink,
    TensorSource,
    assemble,
    checksum,
    describe_os_error,
    torch_dtype,
)
from tqdm import tqdm

logger = logging.getLogger(__name__)

DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


@dataclass(kw_only=True, slots=True)
class Options:
    """What to move and how."""

    select: tuple[str, ...] = ()
    """Glob patterns over source names; a tensor or value is kept if any matches (all if empty)."""
    renames: tuple[tuple[re.Pattern[str], str], ...] = ()
    """(regex, replacement) pairs applied in order to every kept name."""
    dtype: str | None = None
    """Cast floating-point tensors to this dtype (torch name); integer tensors are left alone."""
    verify: bool = True
    """Read back every written chunk and compare its checksum before committing."""
    progress: bool = True
    """Show a progress bar (bytes and rate) on stderr."""


@dataclass(frozen=True, slots=True)
class PlanEntry:
    source: TensorMeta
    target: TensorMeta


@dataclass(slots=True)
class Plan:
    tensors: list[PlanEntry]
    values: dict[str, Any]

    @property
    def total_bytes(self) -> int:
        return sum(e.target.nbytes for e in self.tensors)


@dataclass(frozen=True, slots=True)
class Report:
    tensors: int
    bytes_written: int
    seconds: float


def parse_rename(text: str) -> tuple[re.Pattern[str], str]:
    pattern, sep, replacement = text.partition("=")
    if not sep or not pattern:
        raise ConvertError(f"bad --rename {text!r}: expected REGEX=REPLACEMENT")
    try:
        return re.compile(pattern), replacement
    except re.error as e:
        raise ConvertError(f"bad --rename regex {pattern!r}: {e}") from e


def parse_dtype(text: str | None) -> str | None:
    if text is None:
        return None
    dtype = DTYPE_ALIASES.get(text.lower(), text.lower())
    if dtype not in FLOAT_DTYPES:
        raise ConvertError(f"bad --dtype {text!r}: use one of bf16, fp16, fp32")
    return dtype


def _new_name(name: str, options: Options) -> str:
    for pattern, replacement in options.renames:
        name = pattern.sub(replacement, name)
    return name


def _selected(name: str, options: Options) -> bool:
    return not options.select or any(fnmatch.fnmatchcase(name, p) for p in options.select)


def make_plan(source: TensorSource, options: Options) -> Plan:
    entries, seen = [], set[str]()
    for meta in source.tensors():
        if not _selected(meta.name, options):
            continue
        name = _new_name(meta.name, options)
        dtype = options.dtype if options.dtype and meta.dtype in FLOAT_DTYPES else meta.dtype
        entries.append(PlanEntry(meta, TensorMeta(name, dtype, meta.shape)))
        seen.add(name)
    values = {}
    for key, value in source.values().items():
        if _selected(key, options):
            values[_new_name(key, options)] = value
    clashes = (len(entries) + len(values)) - len(seen | set(values))
    if clashes or any(not e.target.name for e in entries):
        raise ConvertError("--rename maps two names to one (or to an empty name); names must stay unique")
    if not entries and not values:
        raise ConvertError("nothing to convert: no tensor matches --select")
    return Plan(tensors=entries, values=values)


def describe_plan(plan: Plan, files: list[str], out: TextIO) -> None:
    for e in plan.tensors:
        arrow = f" <- {e.source.name}" if e.source.name != e.target.name else ""
        cast = f" (from {e.source.dtype})" if e.source.dtype != e.target.dtype else ""
        shape = "x".join(map(str, e.target.shape)) or "scalar"
        out.write(f"{e.target.name}{arrow}  {e.target.dtype}{cast}  {shape}  {e.target.nbytes} B\n")
    for key in plan.values:
        out.write(f"{key}  value\n")
    out.write(f"total: {len(plan.tensors)} tensors, {len(plan.values)} values, {plan.total_bytes} B\n")
    for file in files:
        out.write(f"output: {file}\n")


def _cast(chunk: Chunk, target: TensorMeta) -> Chunk:
    if chunk.tensor.dtype == torch_dtype(target.dtype):
        return chunk
    return Chunk(chunk.offsets, chunk.sizes, chunk.tensor.to(torch_dtype(target.dtype)).contiguous())


def _chunks(source: TensorSource, entry: PlanEntry, whole: bool) -> Iterator[Chunk]:
    chunks = source.read(entry.source)
    if not whole:
        yield from chunks
        return
    yield assemble(entry.source, chunks)
    # Closed only now, after the sink wrote the tensor: a source may release the data on close
    # (the torch.save reader drops the memory-mapped pages).
    close = getattr(chunks, "close", None)
    if close is not None:
        close()


@contextlib.contextmanager
def _writing(target: str) -> Iterator[None]:
    try:
        yield
    except ConvertError:
        raise
    except Exception as e:  # any sink failure (OSError, torch's RuntimeError, StorageError) is one line
        logger.debug("event=convert_write_failed target=%s", target, exc_info=True)
        raise OutputError(f"{target}: writing failed: {describe_os_error(e)}") from e


def _move(
    chunk: Chunk,
    target_meta: TensorMeta,
    sink: TensorSink,
    crcs: dict[tuple[str, tuple[int, ...]], int] | None,
    crc_pool: ThreadPoolExecutor,
    target: str,
) -> None:
    """Writes one chunk, hashing it on a second thread meanwhile (the hash runs without the GIL)."""
    chunk = _cast(chunk, target_meta)
    crc = crc_pool.submit(checksum, chunk.tensor) if crcs is not None else None
    with _writing(target):
        sink.write(target_meta, chunk)
    if crc is not None and crcs is not None:
        crcs[(target_meta.name, chunk.offsets)] = crc.result()


def convert(source: TensorSource, sink: TensorSink, plan: Plan, options: Options, target: str) -> Report:
    """Writes the plan into the sink, verifies and commits; on any error the sink is aborted."""
    started = time.monotonic()
    crcs: dict[tuple[str, tuple[int, ...]], int] = {}
    bar = tqdm(total=plan.total_bytes, unit="B", unit_scale=True, unit_divisor=1024,
               desc="convert", disable=not options.progress, file=sys.stderr)  # fmt: skip
    try:
        with _writing(target):
            sink.begin([e.target for e in plan.tensors], plan.values)
        with ThreadPoolExecutor(1, thread_name_prefix="convert-crc") as crc_pool:
            for entry in plan.tensors:
                for chunk in _chunks(source, entry, sink.whole_tensors):
                    _move(chunk, entry.target, sink, crcs if options.verify else None, crc_pool, target)
                    bar.update(entry.target.nbytes * math.prod(chunk.sizes) // max(entry.target.numel, 1))
                    del chunk  # before the next read: only one chunk is alive at a time
        with _writing(target):
            sink.end()
        bar.close()
        if options.verify:
            _verify(sink, plan, crcs, options)
        with _writing(target):
            sink.commit()
    except BaseException:
        bar.close()
        sink.abort()
        raise
    return Report(len(plan.tensors), plan.total_bytes, time.monotonic() - started)


def _verify(
    sink: TensorSink, plan: Plan, crcs: dict[tuple[str, tuple[int, ...]], int], options: Options
) -> None:
    staged = sink.staged_source()
    bar = tqdm(total=plan.total_bytes, unit="B", unit_scale=True, unit_divisor=1024,
               desc="verify", disable=not options.progress, file=sys.stderr)  # fmt: skip
    try:
        written = {m.name: m for m in staged.tensors()}
        expected = {e.target.name: e.target for e in plan.tensors}
        if written != expected:
            missing = sorted(set(expected) - set(written)) or sorted(set(written) - set(expected))
            raise ConvertError(
                f"read-back differs from what was written (tensor {missing[:1]} or its metadata)"
            )
        seen = 0
        for meta in expected.values():
            for chunk in staged.read(meta):
                if crcs.get((meta.name, chunk.offsets)) != checksum(chunk.tensor):
                    raise ConvertError(
                        f"read-back of tensor {meta.name!r} at {chunk.offsets} differs (checksum)"
                    )
                seen += 1
                bar.update(chunk.tensor.numel() * chunk.tensor.element_size())
                del chunk  # before the next read: only one chunk is alive at a time
        if seen != len(crcs):
            raise ConvertError(f"read-back found {seen} chunks, {len(crcs)} were written")
    finally:
        bar.close()
        staged.close()
