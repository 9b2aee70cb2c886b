"""Bounded retries with exponential backoff for remote-level operations."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

_log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(kw_only=True, slots=True, frozen=True)
class RetryPolicy:
    """How often and how patiently a failing remote operation is retried."""

    attempts: int = 4
    """Tries in total (the first one included); at least 1."""
    backoff_s: float = 0.5
    """Delay before the second try; doubled before each next one."""
    max_backoff_s: float = 8.0
    """Upper bound of one delay."""


def with_retries(
    operation: Callable[[], T],
    *,
    policy: RetryPolicy,
    what: str,
    stop: threading.Event,
    on_retry: Callable[[BaseException], None] | None = None,
) -> T:
    """Runs operation; on an exception retries up to policy.attempts in total, then re-raises.

    A set stop event ends the backoff early and re-raises the last error (close() must stay bounded).
    """
    delay_s = policy.backoff_s
    for attempt in range(1, max(1, policy.attempts) + 1):
        try:
            return operation()
        except Exception as exc:
            if attempt >= policy.attempts or stop.is_set():
                raise
            _log.warning(
                "event=ckpt_retry what=%s attempt=%d delay_s=%.2f error=%r", what, attempt, delay_s, exc
            )
            if on_retry is not None:
                on_retry(exc)
            if stop.wait(delay_s):
                raise
            delay_s = min(delay_s * 2, policy.max_backoff_s)
    raise AssertionError("unreachable")  # the loop returns or raises
