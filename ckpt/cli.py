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

NOT_IMPLEMENTED_EXIT = 2
BAD_INPUT_EXIT = 2
CORRUPT_EXIT = 1


def _not_implemented(what: str) -> None:
    click.echo(f"ckpt {what}: not implemented yet", err=True)
    sys.exit(NOT_IMPLEMENTED_EXIT)


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


@main.command()
@click.argument("src")
@click.argument("dst")
@click.option("--from", "src_format", default=None)
@click.option("--to", "dst_format", default=None)
def convert(src: str, dst: str, src_format: str | None, dst_format: str | None) -> None:
    """Convert between kedge, PyTorch DCP, torch.save and safetensors."""
    _not_implemented("convert")
