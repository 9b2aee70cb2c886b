"""The format registry: detection from a path, and construction of sources and sinks.

Adding a format: write its module (a source and/or sink class), then add its name to the tuples
below, a detection rule and a branch in `open_source` / `open_sink`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from kedge.ckpt.convert.base import ConvertError, TensorSink, TensorSource

SOURCE_FORMATS = ("kedge", "dcp", "torch", "safetensors")
SINK_FORMATS = ("kedge", "dcp", "torch", "safetensors")
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".tar")
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


@dataclass(kw_only=True, slots=True)
class SourceOptions:
    """How to open an input."""

    step: int | None = None
    """kedge input: the step to read (latest committed when None)."""
    unsafe_pickle: bool = False
    """torch input: allow arbitrary code in the pickle (never for files you do not trust)."""


@dataclass(kw_only=True, slots=True)
class SinkOptions:
    """How to write an output."""

    overwrite: bool = False
    """Replace an existing output (otherwise it is refused)."""
    max_shard_bytes: int | None = None
    """safetensors output into a directory: the largest shard."""
    codec: str = "zstd"
    """kedge output: the chunk codec (raw, zstd, bgzstd)."""
    step: int | None = None
    """kedge output: the step to write (the input's step for kedge input, else 0)."""


def _local(src: str) -> Path | None:
    if src.startswith("file://"):
        return Path(src.removeprefix("file://"))
    return None if _URL.match(src) else Path(src)


def detect_source(src: str) -> str:
    """The input format, from what is at SRC; a one-line error lists the supported ones otherwise."""
    from kedge.ckpt.convert import dcp, kedge_format, safetensors_file, torch_file

    path = _local(src)
    if path is None or kedge_format.is_kedge_root(src):
        return "kedge"
    if not path.exists():
        raise ConvertError(f"{src}: no such file or directory")
    if dcp.is_dcp_dir(path):
        return "dcp"
    if safetensors_file.find_index(path) is not None or safetensors_file.is_safetensors_file(path):
        return "safetensors"
    if path.is_file() and torch_file.is_torch_file(path):
        return "torch"
    raise ConvertError(
        f"{src}: unknown checkpoint format (supported: {', '.join(SOURCE_FORMATS)}; use --from)"
    )


def detect_sink(dst: str) -> str:
    if _local(dst) is None:
        return "kedge"
    path = Path(dst)
    if path.suffix == ".safetensors":
        return "safetensors"
    if path.suffix in TORCH_SUFFIXES:
        return "torch"
    raise ConvertError(f"{dst}: cannot tell the output format; pass --to ({', '.join(SINK_FORMATS)})")


def check_format(name: str, supported: tuple[str, ...], flag: str) -> str:
    if name not in supported:
        raise ConvertError(f"unknown format {name!r} for {flag} (supported: {', '.join(supported)})")
    return name


def open_source(fmt: str, src: str, options: SourceOptions) -> TensorSource:
    from kedge.ckpt.convert import dcp, kedge_format, safetensors_file, torch_file

    path = _local(src)
    if fmt == "kedge":
        return kedge_format.KedgeSource(src, step=options.step)
    if path is None:
        raise ConvertError(f"{src}: {fmt} input must be a local path")
    if not path.exists():
        raise ConvertError(f"{src}: no such file or directory")
    if fmt == "dcp":
        return dcp.DcpSource(path)
    if fmt == "torch":
        return torch_file.TorchFileSource(path, unsafe_pickle=options.unsafe_pickle)
    return safetensors_file.SafetensorsSource(path)


def open_sink(fmt: str, dst: str, options: SinkOptions) -> TensorSink:
    from kedge.ckpt.convert import dcp, kedge_format, safetensors_file, torch_file

    if fmt == "kedge":
        return kedge_format.KedgeSink(
            dst, overwrite=options.overwrite, codec=options.codec, step=options.step
        )
    path = _local(dst)
    if path is None:
        raise ConvertError(f"{dst}: {fmt} output must be a local path")
    path = path.absolute()
    if fmt == "dcp":
        return dcp.DcpSink(path, overwrite=options.overwrite)
    if fmt == "torch":
        return torch_file.TorchFileSink(path, overwrite=options.overwrite)
    return safetensors_file.SafetensorsSink(
        path, overwrite=options.overwrite, max_shard_bytes=options.max_shard_bytes
    )
