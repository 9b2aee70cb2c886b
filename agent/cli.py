"""`kedge agent`: the per-node daemon's command line (launcher and sidecar modes)."""

from __future__ import annotations

import logging
import sys

import click

BAD_INPUT_EXIT = 2


@click.group()
def agent() -> None:
    """The per-node agent: launches or adopts the node's ranks, watches them and the GPUs, and
    relays verdicts to the coordinator."""


def _common(fn: click.decorators.FC) -> click.decorators.FC:
    options = [
        click.option("--coordinator", "coordinator", default=None, help="Coordinator address HOST:PORT."),
        click.option("--node-id", default=None, help="Stable id of this node (default: the hostname)."),
        click.option("--job-id", default=None, help="Job id (default: 'default')."),
        click.option("--run-dir", default=None, help="Socket and progress-page directory (tmpfs)."),
        click.option("--socket", "socket_path", default=None, help="Unix socket path for the ranks."),
        click.option(
            "--metrics-addr", default=None, help="Prometheus HOST:PORT (default 127.0.0.1:0; '' off)."
        ),
        click.option("--nvml", default=None, help="auto | real | off | fake:SCRIPT.json"),
        click.option("--verdict-log", default=None, help="Append verdicts as JSON lines to this file."),
        click.option("--log-level", default="INFO", show_default=True),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _run(overrides: dict[str, object], command: tuple[str, ...] | None, log_level: str) -> None:
    from kedge.agent.config import Config
    from kedge.agent.supervisor import main_outcome

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr
    )
    coordinator = overrides.get("coordinator")
    if coordinator is not None and ":" not in str(coordinator):
        click.echo(f"kedge agent: --coordinator must be HOST:PORT, got {coordinator!r}", err=True)
        sys.exit(BAD_INPUT_EXIT)
    try:
        config = Config.from_env(overrides)
    except (TypeError, ValueError) as exc:
        click.echo(f"kedge agent: bad setting: {exc}", err=True)
        sys.exit(BAD_INPUT_EXIT)
    sys.exit(main_outcome(config, command))


@agent.command("run", context_settings={"ignore_unknown_options": True})
@_common
@click.option("--nproc-per-node", type=click.IntRange(min=1), default=1, show_default=True)
@click.option(
    "--max-restarts", type=click.IntRange(min=0), default=None, help="Standalone restarts (default 0)."
)
@click.option("--master-addr", default=None, help="Standalone MASTER_ADDR (default 127.0.0.1).")
@click.option("--master-port", type=int, default=None, help="Standalone MASTER_PORT (default: a free port).")
@click.argument("command", nargs=-1, type=click.UNPROCESSED, required=True)
def run(command: tuple[str, ...], log_level: str, **options: object) -> None:
    """Launch COMMAND as NPROC_PER_NODE ranks with the torchrun environment and supervise them.

    Without --coordinator it behaves like torchrun: a failed rank stops the others, all restart up to
    --max-restarts times, then the agent exits 1 naming the rank and its signal or exit code."""
    _run(options, command, log_level)


@agent.command("serve")
@_common
def serve(log_level: str, **options: object) -> None:
    """Sidecar mode: ranks started by someone else register through the agent's Unix socket."""
    _run(options, None, log_level)
