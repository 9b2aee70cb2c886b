"""The `kedge` command line: `coordinator`, `agent`, `status`, `demo`.

It lives in the coordinator package because that is the control plane every other command talks
to; `kedge agent ...` is loaded lazily by module name (`kedge.agent.cli`) so the coordinator never
imports the agent's code and `--help` imports neither torch nor grpc.
"""

from __future__ import annotations

import importlib
import sys

import click

NOT_IMPLEMENTED_EXIT = 2


def not_implemented(what: str) -> None:
    """Says that a subcommand is a skeleton and exits 2, so nothing claims it as done."""
    click.echo(f"kedge {what}: not implemented yet", err=True)
    sys.exit(NOT_IMPLEMENTED_EXIT)


class LazyGroup(click.Group):
    """A group whose listed subcommands are imported only when they are invoked (or asked for help)."""

    def __init__(self, *args: object, lazy_subcommands: dict[str, str] | None = None, **kwargs: object):
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.lazy_subcommands = lazy_subcommands or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy_subcommands])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = self.lazy_subcommands.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        module_name, attr = target.split(":")
        command = getattr(importlib.import_module(module_name), attr)
        assert isinstance(command, click.Command), target
        return command


@click.group(
    cls=LazyGroup,
    lazy_subcommands={"agent": "kedge.agent.cli:agent"},
    context_settings={"help_option_names": ["-h", "--help"]},
)
def main() -> None:
    """kedge: find the bad rank or node of a training job within seconds, recover it, and checkpoint
    without stalling training.

    \b
    kedge coordinator serve   run the job control plane
    kedge agent run|serve     run the per-node agent (launcher or sidecar)
    kedge status              jobs, nodes, ranks, diagnoses and actions
    kedge demo                the end-to-end demo (CPU with gloo when there is no GPU)
    """


@main.group()
def coordinator() -> None:
    """The job control plane: membership, diagnosis, policy, restart and shrink."""


@coordinator.command("serve")
@click.option("--listen", default="127.0.0.1:7070", show_default=True, help="gRPC address to listen on.")
@click.option(
    "--store",
    default="sqlite:///kedge-coordinator.db",
    show_default=True,
    help="State store: sqlite:///PATH or etcd://HOST:PORT[,HOST:PORT...].",
)
def coordinator_serve(listen: str, store: str) -> None:
    """Serve the coordinator's agent and admin gRPC services."""
    not_implemented("coordinator serve")


@main.command()
@click.option("--coordinator", "coordinator_addr", default="127.0.0.1:7070", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def status(coordinator_addr: str, as_json: bool) -> None:
    """Show jobs, nodes, ranks (step, step time, state), recent diagnoses and actions."""
    not_implemented("status")


@main.command()
def demo() -> None:
    """Run the end-to-end demo: coordinator, two agents, a small training job, injected faults,
    detection, recovery and a resharded resume."""
    not_implemented("demo")
