"""systemd notification protocol (READY, WATCHDOG, STOPPING) with the standard library only."""

from __future__ import annotations

import contextlib
import os
import socket
import time


class Notifier:
    """Writes datagrams to $NOTIFY_SOCKET; a no-op when not run by systemd with Type=notify."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        e = os.environ if env is None else env
        self._address = e.get("NOTIFY_SOCKET", "")
        usec = int(e.get("WATCHDOG_USEC", "0") or 0)
        # Ping at half the watchdog period, as sd_watchdog_enabled(3) recommends.
        self.watchdog_interval_s = usec / 2e6 if usec else 0.0
        self._next_ping_s = 0.0

    def _send(self, message: str) -> None:
        if not self._address:
            return
        address = self._address
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract socket namespace
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, contextlib.suppress(OSError):
            sock.sendto(message.encode(), address)

    def ready(self, status: str = "") -> None:
        self._send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def watchdog(self) -> None:
        """Pings the watchdog when due (call it every supervision tick)."""
        if not self.watchdog_interval_s:
            return
        now = time.monotonic()
        if now >= self._next_ping_s:
            self._next_ping_s = now + self.watchdog_interval_s
            self._send("WATCHDOG=1")

    def stopping(self) -> None:
        self._send("STOPPING=1")
