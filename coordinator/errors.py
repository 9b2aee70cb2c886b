"""Exceptions of the coordinator.

CoordinatorError
├── StoreError                 the state store failed or was misused
│   ├── StaleIncarnation       a write carried an old fencing token: the world moved on
│   ├── NotFound               the job or node does not exist
│   ├── SchemaMismatch         the store was written by a newer, unknown schema version
│   └── StoreUnavailable       the backend cannot be reached now (retry later)
├── BadStoreUrl                `--store` names no known backend or is malformed
└── CoordinatorUnreachable     an admin/agent client could not reach the coordinator
"""

from __future__ import annotations


class CoordinatorError(Exception):
    """Root of every error the coordinator raises on purpose."""


class StoreError(CoordinatorError):
    """The state store failed or was used against its contract."""


class StaleIncarnation(StoreError):
    """A mutating call carried a fencing token that is not the job's current incarnation."""

    def __init__(self, job_id: str, given: int, current: int) -> None:
        super().__init__(f"stale incarnation for job {job_id}: given {given}, current {current}")
        self.job_id = job_id
        self.given = given
        self.current = current


class NotFound(StoreError):
    """The named job or node is not in the store."""


class SchemaMismatch(StoreError):
    """The store's schema version is newer than this code knows."""


class StoreUnavailable(StoreError):
    """The backend cannot be reached now; the caller may retry with backoff."""


class BadStoreUrl(CoordinatorError):
    """`--store` is malformed or names an unknown backend."""


class CoordinatorUnreachable(CoordinatorError):
    """A client could not reach the coordinator at the given address."""
