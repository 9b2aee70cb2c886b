"""The `kedge` command line: `coordinator`, `agent`, `status`, `demo`.

It lives in the coordinator package because that is the control plane every other command talks
to; `kedge agent ...` is loaded lazily by module name (`kedge.agent.cli`) so the coordinator never
imports the agent's code and `--help` imports neither torch nor grpc.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

import click


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


# -- security options (issue 12; kedge.coordinator.auth, imported only when a command runs) ----------
def _tls_options(env: str, who: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """--tls-cert/--tls-key/--tls-ca: this side's certificate and key, and the CA it trusts."""
    options = [
        click.option("--tls-cert", envvar=f"{env}_TLS_CERT", help=f"PEM certificate of {who}."),
        click.option("--tls-key", envvar=f"{env}_TLS_KEY", help=f"PEM private key of {who}."),
        click.option("--tls-ca", envvar=f"{env}_TLS_CA", help="PEM CA bundle that signs the peers."),
    ]

    def apply(fn: Callable[..., None]) -> Callable[..., None]:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return apply


def _tls_files(tls_cert: str | None, tls_key: str | None, tls_ca: str | None, what: str) -> Any:
    """auth.TlsFiles, None when no option is given; exits 2 when only some are."""
    given = [v for v in (tls_cert, tls_key, tls_ca) if v]
    if not given:
        return None
    if len(given) != 3:
        click.echo(f"kedge {what}: --tls-cert, --tls-key and --tls-ca go together", err=True)
        sys.exit(2)
    from kedge.coordinator.auth import TlsFiles

    return TlsFiles(cert=str(tls_cert), key=str(tls_key), ca=str(tls_ca))


def _server_security(
    tls: Any, agent_token_file: str | None, admin_token_file: str | None, insecure: bool
) -> Any:
    from kedge.coordinator.auth import Config as SecurityConfig

    tokens = {r: f for r, f in (("agent", agent_token_file), ("admin", admin_token_file)) if f}
    return SecurityConfig(tls=tls, token_files=tokens, insecure=insecure)


@main.group()
def coordinator() -> None:
    """The job control plane: membership, diagnosis, policy, restart and shrink."""


@coordinator.command("serve")
@click.option(
    "--listen",
    default="127.0.0.1:7070",
    show_default=True,
    envvar="KEDGE_COORDINATOR_LISTEN",
    help="gRPC address to listen on (port 0: any free port, printed on start).",
)
@click.option(
    "--store",
    default="sqlite://kedge-coordinator.db",
    show_default=True,
    envvar="KEDGE_COORDINATOR_STORE",
    help="State store: sqlite:///ABS/PATH, sqlite://REL/PATH or etcd://HOST:PORT[,HOST:PORT...].",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    envvar="KEDGE_COORDINATOR_CONFIG",
    help="TOML file with [coordinator], [diagnosis], [policy], [executor] tables.",
)
@click.option(
    "--lease-ttl-s",
    type=float,
    envvar="KEDGE_COORDINATOR_LEASE_TTL_S",
    help="Seconds without heartbeat before a node is lost.",
)
@click.option(
    "--min-nodes",
    type=int,
    envvar="KEDGE_COORDINATOR_MIN_NODES",
    help="Nodes that must register before a job starts.",
)
@click.option(
    "--master-port",
    type=int,
    envvar="KEDGE_COORDINATOR_MASTER_PORT",
    help="Rendezvous port on rank 0's node (0: a free port of this host, single-host only).",
)
@click.option(
    "--min-world-size",
    type=int,
    envvar="KEDGE_COORDINATOR_MIN_WORLD_SIZE",
    help="A shrink never goes below this many ranks.",
)
@click.option(
    "--world-multiple",
    type=int,
    envvar="KEDGE_COORDINATOR_WORLD_MULTIPLE",
    help="World sizes are a multiple of this (tensor x pipeline parallel).",
)
@click.option(
    "--restart-budget",
    type=int,
    envvar="KEDGE_COORDINATOR_RESTART_BUDGET",
    help="Recoveries allowed per budget window before the job is stopped.",
)
@_tls_options("KEDGE_COORDINATOR", "the coordinator")
@click.option(
    "--agent-token-file",
    envvar="KEDGE_COORDINATOR_AGENT_TOKEN_FILE",
    help="File with the bearer token agents must present (Coordinator service).",
)
@click.option(
    "--admin-token-file",
    envvar="KEDGE_COORDINATOR_ADMIN_TOKEN_FILE",
    help="File with the bearer token `kedge status` must present (Admin service).",
)
@click.option(
    "--insecure",
    is_flag=True,
    envvar="KEDGE_COORDINATOR_INSECURE",
    help="Allow a non-loopback --listen without TLS and tokens (logged as a warning at every start).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log every event, not only verdicts and actions.")
def coordinator_serve(
    listen: str,
    store: str,
    config_file: str | None,
    lease_ttl_s: float | None,
    min_nodes: int | None,
    master_port: int | None,
    min_world_size: int | None,
    world_multiple: int | None,
    restart_budget: int | None,
    tls_cert: str | None,
    tls_key: str | None,
    tls_ca: str | None,
    agent_token_file: str | None,
    admin_token_file: str | None,
    insecure: bool,
    verbose: bool,
) -> None:
    """Serve the coordinator's agent and admin gRPC services until SIGTERM or Ctrl-C."""
    from kedge.coordinator.serve_cmd import run_server

    overrides = {
        "lease_ttl_s": lease_ttl_s,
        "start_min_nodes": min_nodes,
        "executor.master_port": master_port,
        "policy.min_world_size": min_world_size,
        "policy.world_multiple": world_multiple,
        "policy.restart_budget": restart_budget,
    }
    tls = _tls_files(tls_cert, tls_key, tls_ca, "coordinator serve")
    security = _server_security(tls, agent_token_file, admin_token_file, insecure)
    sys.exit(run_server(listen, store, config_file, overrides, verbose, security))


@main.command()
@click.option(
    "--coordinator",
    "coordinator_addr",
    default="127.0.0.1:7070",
    show_default=True,
    envvar="KEDGE_COORDINATOR",
)
@click.option("--job", "job_id", default="", help="Only this job.")
@click.option("--recent", default=10, show_default=True, help="Recent diagnoses and actions to show.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@_tls_options("KEDGE_ADMIN", "this admin client")
@click.option("--token-file", envvar="KEDGE_ADMIN_TOKEN_FILE", help="File with the admin bearer token.")
def status(
    coordinator_addr: str,
    job_id: str,
    recent: int,
    as_json: bool,
    tls_cert: str | None,
    tls_key: str | None,
    tls_ca: str | None,
    token_file: str | None,
) -> None:
    """Show jobs, nodes, ranks (step, step time, state), recent diagnoses and actions."""
    import json

    from kedge.coordinator.admin_client import get_status
    from kedge.coordinator.auth import AuthConfigError
    from kedge.coordinator.errors import CoordinatorUnreachable
    from kedge.coordinator.status_view import render

    tls = _tls_files(tls_cert, tls_key, tls_ca, "status")
    try:
        result = get_status(coordinator_addr, job_id, recent, tls=tls, token_file=token_file)
    except (CoordinatorUnreachable, AuthConfigError) as exc:
        click.echo(f"kedge status: {exc}", err=True)
        sys.exit(2)
    click.echo(json.dumps(result, indent=2) if as_json else render(result))


@main.command()
@click.option(
    "--workdir",
    type=click.Path(file_okay=False),
    help="Keep logs and checkpoints here (default: a temp dir).",
)
def demo(workdir: str | None) -> None:
    """Run the end-to-end demo: coordinator, two agents, a small training job, injected faults,
    detection, recovery and a resharded resume."""
    import logging
    from pathlib import Path

    from kedge.coordinator.demo import run_demo

    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s %(message)s")
    sys.exit(run_demo(Path(workdir) if workdir else None, echo=click.echo))
