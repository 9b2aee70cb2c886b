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


# Security (issue 12, docs/SECURITY.md); each also reads KEDGE_AGENT_<NAME> through Config.from_env.
_SECURITY_OPTIONS = [
    click.option("--tls-cert", default=None, help="PEM client certificate presented to the coordinator."),
    click.option("--tls-key", default=None, help="PEM private key of --tls-cert."),
    click.option("--tls-ca", default=None, help="PEM CA bundle that signs the coordinator's certificate."),
    click.option("--token-file", default=None, help="File with the agent bearer token (signs commands too)."),
    click.option("--socket-group", default=None, help="Group given access to the socket (0750/0660)."),
    click.option("--socket-allow-uids", default=None, help="Extra uids allowed on the socket (comma list)."),
    click.option("--socket-allow-gids", default=None, help="Gids allowed on the socket (comma list)."),
]


def _common(fn: click.decorators.FC) -> click.decorators.FC:
    options = [
        click.option(
            "--coordinator",
            "coordinator",
            default=None,
            help="Coordinator address HOST:PORT, or several HOST:PORT,HOST:PORT (HA: the agent fails over).",
        ),
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
        *_SECURITY_OPTIONS,
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _run(overrides: dict[str, object], command: tuple[str, ...] | None, log_level: str) -> None:
    from kedge.agent.config import Config
    from kedge.agent.supervisor import agent_security, main_outcome

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr
    )
    coordinator = overrides.get("coordinator")
    if coordinator is not None and not all(":" in part for part in str(coordinator).split(",")):
        click.echo(
            f"kedge agent: --coordinator must be HOST:PORT[,HOST:PORT...], got {coordinator!r}", err=True
        )
        sys.exit(BAD_INPUT_EXIT)
    try:
        config = Config.from_env(overrides)
        agent_security(config)  # bad certificate/token/socket settings: exit 2 before anything starts
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
