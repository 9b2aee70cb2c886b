"""The `ckpt` command line: list, inspect, verify and convert checkpoints."""

from __future__ import annotations

import sys

import click

NOT_IMPLEMENTED_EXIT = 2


def _not_implemented(what: str) -> None:
    click.echo(f"ckpt {what}: not implemented yet", err=True)
    sys.exit(NOT_IMPLEMENTED_EXIT)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Inspect and convert kedge checkpoints (any fsspec URL: a path, file://, s3://, ...)."""


@main.command("ls")
@click.argument("url")
def ls(url: str) -> None:
    """List the checkpoints under URL: step, size, world size at save, committed or partial."""
    _not_implemented("ls")


@main.command()
@click.argument("url")
@click.option("--json", "as_json", is_flag=True)
def inspect(url: str, as_json: bool) -> None:
    """Show a checkpoint's tensors: name, dtype, global shape, chunks, bytes, compression ratio."""
    _not_implemented("inspect")


@main.command()
@click.argument("url")
def verify(url: str) -> None:
    """Read every chunk and check its CRC32C; exit 1 on corruption."""
    _not_implemented("verify")


@main.command()
@click.argument("src")
@click.argument("dst")
@click.option("--from", "src_format", default=None)
@click.option("--to", "dst_format", default=None)
def convert(src: str, dst: str, src_format: str | None, dst_format: str | None) -> None:
    """Convert between kedge, PyTorch DCP, torch.save and safetensors."""
    _not_implemented("convert")
