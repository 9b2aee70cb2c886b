"""`kedge agent`: the per-node daemon's command line (launcher and sidecar modes)."""

from __future__ import annotations

import sys

import click

NOT_IMPLEMENTED_EXIT = 2


@click.group()
def agent() -> None:
    """The per-node agent: launches or adopts the node's ranks, watches them and the GPUs, and
    relays verdicts to the coordinator."""


@agent.command("run", context_settings={"ignore_unknown_options": True})
@click.option("--coordinator", "coordinator_addr", default=None, help="Coordinator address HOST:PORT.")
@click.option("--nproc-per-node", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--node-id", default=None, help="Stable id of this node (default: the hostname).")
@click.argument("command", nargs=-1, type=click.UNPROCESSED, required=True)
def run(
    coordinator_addr: str | None, nproc_per_node: int, node_id: str | None, command: tuple[str, ...]
) -> None:
    """Launch COMMAND as NPROC_PER_NODE ranks with the torchrun environment and supervise them."""
    click.echo("kedge agent run: not implemented yet", err=True)
    sys.exit(NOT_IMPLEMENTED_EXIT)


@agent.command("serve")
@click.option("--coordinator", "coordinator_addr", default=None, help="Coordinator address HOST:PORT.")
def serve(coordinator_addr: str | None) -> None:
    """Sidecar mode: ranks started by someone else register through the agent's Unix socket."""
    click.echo("kedge agent serve: not implemented yet", err=True)
    sys.exit(NOT_IMPLEMENTED_EXIT)
