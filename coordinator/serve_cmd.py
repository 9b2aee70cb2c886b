"""`kedge coordinator serve`: open the store, serve until SIGTERM/SIGINT, stop within bounds."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Mapping
from typing import Any

from kedge.coordinator.errors import CoordinatorError
from kedge.coordinator.settings import ConfigError, load_config
from kedge.coordinator.store import open_store

log = logging.getLogger(__name__)


def run_server(
    listen: str, store_url: str, config_file: str | None, overrides: Mapping[str, Any], verbose: bool
) -> int:
    """Exit code: 0 after a clean stop, 2 on bad input (one line on stderr)."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    try:
        config = load_config(config_file, overrides)
        store = open_store(store_url)
    except (ConfigError, CoordinatorError) as exc:
        print(f"kedge coordinator serve: {exc}", file=sys.stderr)
        return 2
    from kedge.coordinator.server import serve

    try:
        server = serve(listen, store, config)
    except (OSError, RuntimeError) as exc:
        store.close()
        print(f"kedge coordinator serve: cannot listen on {listen}: {exc}", file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: server._stopping.set())
    print(f"kedge coordinator listening on {server.address} store={store_url}", flush=True)
    server.wait()
    server.stop()
    return 0
