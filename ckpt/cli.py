"""The `ckpt` command line: list, inspect, verify and convert checkpoints.

Exit status: 0 success; 1 corruption found by verify; 2 bad input (missing path, not a checkpoint,
truncated manifest, newer format version, no credentials), always as one line on stderr.
Nothing here imports torch (convert loads it only when it runs).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

BAD_INPUT_EXIT = 2
CORRUPT_EXIT = 1
# convert: a failure while writing the output (full disk, permissions), as opposed to bad input.
FAILED_EXIT = 1


@contextmanager
def _one_line_errors(command: str) -> Iterator[None]:
    """Turns kedge.ckpt errors into one line on stderr and exit 2 (exit 1 for corruption)."""
    from kedge.ckpt.errors import CkptError, IntegrityError

    try:
        yield
    except IntegrityError as exc:
        click.echo(f"ckpt {command}: corrupt: {exc}", err=True)
        sys.exit(CORRUPT_EXIT)
    except CkptError as exc:
        click.echo(f"ckpt {command}: {exc}", err=True)
        sys.exit(BAD_INPUT_EXIT)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Inspect and convert kedge checkpoints (any fsspec URL: a path, file://, s3://, ...)."""


@main.command("ls")
@click.argument("url")
def ls(url: str) -> None:
    """List the checkpoints under URL: step, size, world size at save, committed or partial."""
    from kedge.ckpt.inspection import list_steps, open_root

    with _one_line_errors("ls"):
        rows = list_steps(open_root(url))
    click.echo(f"{'step':>12}  {'state':<9}  {'world':>5}  {'size':>10}")
    for r in rows:
        world = str(r.world_size) if r.world_size is not None else "?"
        state = "committed" if r.committed else "partial"
        click.echo(f"{r.step:>12}  {state:<9}  {world:>5}  {_human(r.size_bytes):>10}")


@main.command()
@click.argument("url")
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
def inspect(url: str, as_json: bool) -> None:
    """Show a checkpoint's tensors: name, dtype, global shape, chunks, bytes, compression ratio.

    URL is a checkpoint root (its latest committed step) or one step-NNNNNNNNNNNN directory.
    """
    from kedge.ckpt.inspection import open_step

    with _one_line_errors("inspect"):
        _, m = open_step(url)
    rows: list[dict[str, Any]] = [
        {"name": t.name, "dtype": t.dtype, "shape": list(t.shape), "chunks": len(t.chunks),
         "raw_bytes": t.raw_bytes, "stored_bytes": t.stored_bytes,
         "ratio": round(t.raw_bytes / t.stored_bytes, 3) if t.stored_bytes else 1.0}
        for t in m.tensors.values()
    ]  # fmt: skip
    if as_json:
        doc = {"format_version": m.format_version, "step": m.step, "world_size": m.world_size,
               "created_unix_s": m.created_unix_s, "tensors": rows, "values": sorted(m.values)}  # fmt: skip
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo(f"step {m.step}  world_size {m.world_size}  format v{m.format_version}  tensors {len(rows)}")
    width = max([len(r["name"]) for r in rows] + [4])
    click.echo(f"{'name':<{width}}  {'dtype':<9}  {'shape':<18}  {'chunks':>6}  {'bytes':>10}  {'ratio':>6}")
    for r in rows:
        shape = "x".join(map(str, r["shape"])) or "scalar"
        click.echo(
            f"{r['name']:<{width}}  {r['dtype']:<9}  {shape:<18}  {r['chunks']:>6}  "
            f"{_human(r['raw_bytes']):>10}  {r['ratio']:>6.2f}"
        )
    if m.values:
        click.echo(f"values: {', '.join(sorted(m.values))}")


@main.command()
@click.argument("url")
def verify(url: str) -> None:
    """Read every chunk and check its CRC32C; exit 1 on corruption."""
    from kedge.ckpt.inspection import open_step
    from kedge.ckpt.inspection import verify as verify_step
    from tqdm import tqdm

    with _one_line_errors("verify"):
        storage, m = open_step(url)
        total = sum(t.stored_bytes for t in m.tensors.values())
        with tqdm(
            total=total, unit="B", unit_scale=True, desc=f"verify step {m.step}", file=sys.stderr
        ) as bar:
            problems = verify_step(storage, m, progress=bar.update)
    for line in problems:
        click.echo(f"ckpt verify: corrupt: {line}", err=True)
    if problems:
        sys.exit(CORRUPT_EXIT)
    click.echo(f"ok: step {m.step}, {len(m.tensors)} tensors, {total} bytes checked")


_CONVERT_HELP = """Convert between kedge, PyTorch DCP, torch.save and safetensors.

\b
Formats (--from is detected from SRC when absent; --to from DST's suffix,
.safetensors or .pt/.pth/.bin, else required):
  kedge        a kedge checkpoint root (any fsspec URL; --step picks the input step)
  dcp          a torch.distributed.checkpoint directory (.metadata + *.distcp, zstd too)
  torch        a torch.save file, read with weights_only=True unless --unsafe-pickle
  safetensors  one file, or a directory / index with model.safetensors.index.json

DCP's .metadata is a pickle: it is read only for DCP input, and only through a restricted
unpickler that admits DCP's metadata classes and nothing else. Output is written under a
temporary name, read back and checked, then renamed into place.
"""


@main.command(help=_CONVERT_HELP)
@click.argument("src")
@click.argument("dst")
@click.option("--from", "src_format", default=None, help="Input format: kedge, dcp, torch, safetensors.")
@click.option("--to", "dst_format", default=None, help="Output format: kedge, dcp, torch, safetensors.")
@click.option("--select", multiple=True, metavar="GLOB", help="Keep only names matching GLOB (repeatable).")
@click.option(
    "--rename", multiple=True, metavar="REGEX=REPL", help="Rename with re.sub (repeatable, in order)."
)
@click.option("--dtype", default=None, metavar="bf16|fp16|fp32", help="Cast floating-point tensors.")
@click.option("--step", type=int, default=None, help="kedge input: step to read (default: latest).")
@click.option(
    "--out-step", type=int, default=None, help="kedge output: step to write (default: input's or 0)."
)
@click.option("--codec", default="zstd", help="kedge output codec: raw, zstd, bgzstd.")
@click.option(
    "--max-shard-size", default=None, metavar="SIZE", help="safetensors directory output (e.g. 5GB)."
)
@click.option(
    "--unsafe-pickle", is_flag=True, help="torch input: allow code in the pickle (trusted files only)."
)
@click.option("--dry-run", is_flag=True, help="Print the plan (tensors, sizes, output files); write nothing.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@click.option("--no-verify", is_flag=True, help="Skip reading back and checking every written chunk.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def convert(src: str, dst: str, **opts: Any) -> None:
    from kedge.ckpt.convert.base import ConvertError, OutputError

    try:
        _convert(src, dst, **opts)
    except OutputError as e:
        click.echo(f"ckpt convert: {e}", err=True)
        sys.exit(FAILED_EXIT)
    except ConvertError as e:
        click.echo(f"ckpt convert: {e}", err=True)
        sys.exit(BAD_INPUT_EXIT)
    except OSError as e:
        click.echo(f"ckpt convert: {e.filename or dst}: {e.strerror or e}", err=True)
        sys.exit(FAILED_EXIT)


def _convert(src: str, dst: str, **opts: Any) -> None:
    from kedge.ckpt.convert import formats, pipeline, safetensors_file

    src_format = opts["src_format"] or formats.detect_source(src)
    formats.check_format(src_format, formats.SOURCE_FORMATS, "--from")
    dst_format = formats.check_format(
        opts["dst_format"] or formats.detect_sink(dst), formats.SINK_FORMATS, "--to"
    )
    options = pipeline.Options(
        select=tuple(opts["select"]),
        renames=tuple(pipeline.parse_rename(r) for r in opts["rename"]),
        dtype=pipeline.parse_dtype(opts["dtype"]),
        verify=not opts["no_verify"],
        progress=not opts["quiet"],
    )
    max_shard = opts["max_shard_size"]
    source = formats.open_source(
        src_format, src, formats.SourceOptions(step=opts["step"], unsafe_pickle=opts["unsafe_pickle"])
    )
    try:
        plan = pipeline.make_plan(source, options)
        sink_options = formats.SinkOptions(
            overwrite=opts["overwrite"],
            max_shard_bytes=safetensors_file.parse_size(max_shard) if max_shard else None,
            codec=opts["codec"],
            step=opts["out_step"] if opts["out_step"] is not None else getattr(source, "step", None),
        )
        if opts["dry_run"]:
            files = formats.open_sink(dst_format, dst, sink_options).plan_files(
                [e.target for e in plan.tensors]
            )
            pipeline.describe_plan(plan, files, sys.stdout)
            return
        sink = formats.open_sink(dst_format, dst, sink_options)
        report = pipeline.convert(source, sink, plan, options, dst)
    finally:
        source.close()
    rate = report.bytes_written / max(report.seconds, 1e-9) / 1e6
    click.echo(
        f"{dst}: {report.tensors} tensors, {report.bytes_written} B in {report.seconds:.2f} s ({rate:.0f} MB/s)"
    )
