"""The coordinator's state store interface, and `open_store(url)`.

Who calls: only the coordinator core (`kedge.coordinator.core`) and its executor, from one
coordinator process at a time per job (with etcd, the leader). Admin reads may come from any
thread. Every backend is thread-safe.

What lives here (and only this; per-step rank telemetry stays in memory, it is re-reported):

    jobs         job_id -> JobRecord (state, incarnation, world size, last step, restart count)
    nodes        (job_id, node_id) -> NodeRecord (membership state, lease expiry)
    assignments  (job_id, incarnation, rank) -> Assignment (node, local rank)
    diagnoses    append-only per job, bounded (oldest pruned past RETAINED_RECORDS)
    actions      append-only per job, bounded likewise

Fencing. A job's `incarnation` is its fencing token. Every mutating call except `ensure_job` takes
`incarnation=` and the backend checks, atomically with the write, that it equals the job's stored
incarnation; otherwise it raises `StaleIncarnation` and writes nothing. Only `begin_incarnation`
changes the token: it is a compare-and-set from `expected_incarnation` to `expected_incarnation + 1`
that writes the new world (size and rank assignments) in the same transaction. A coordinator that
was paused or deposed therefore cannot act on a world that moved on: its next write fails. (The etcd
backend additionally conditions each write on the leader's lease; that is the backend's business,
the interface is the same.)

Order of calls for one recovery (the executor, `kedge.coordinator.executor`):

    1. append_action(job, ActionRecord(...), incarnation=k)       the decision, with its evidence
    2. set_job_state(job, RECOVERING, incarnation=k)
    3. (agents stop workers: no store call)
    4. set_node_state(job, bad_node, ISOLATED, incarnation=k)     shrink / replace only
    5. k1 = begin_incarnation(job, expected_incarnation=k, ...)   new world + assignments, k1 = k+1
    6. (agents start workers with incarnation k1)
    7. set_job_state(job, RUNNING, incarnation=k1)

A crash between 1 and 5 leaves the job at k in RECOVERING with the decision recorded; the next
coordinator re-evaluates from there. Small operations rather than a general transaction API keep the
interface implementable on etcd (each op is one etcd Txn with a compare on the incarnation key).

Leases. Agents heartbeat every second or so; writing each heartbeat would cost one store write per
node per second (12,500 writes/s at 100K GPUs). The core keeps live lease deadlines in memory and
persists them in batches with `renew_leases` (every lease_ttl/3 at most), so a restarted coordinator
gives every known node a fresh grace period from the stored expiry rather than declaring all lost.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from kedge.coordinator.errors import BadStoreUrl
from kedge.coordinator.model import (
    ActionRecord,
    Assignment,
    JobRecord,
    JobState,
    NodeRecord,
    NodeState,
    Verdict,
)

RETAINED_RECORDS = 1000
"""Diagnoses and actions kept per job; older ones are pruned on append (bounded storage)."""


@runtime_checkable
class Store(Protocol):
    """Durable coordinator state. See the module docstring for fencing and call order."""

    # --- jobs -------------------------------------------------------------------------------
    def ensure_job(self, job_id: str, *, command: Sequence[str], now_wall_ns: int) -> JobRecord:
        """Returns the job, creating it (PENDING, incarnation 0) if absent. Idempotent; not fenced:
        called when the first node of a job registers. An existing job's command is kept."""
        ...

    def get_job(self, job_id: str) -> JobRecord | None:
        """The job, or None."""
        ...

    def list_jobs(self) -> list[JobRecord]:
        """Every job, ordered by job_id."""
        ...

    def set_job_state(self, job_id: str, state: JobState, *, incarnation: int) -> None:
        """Sets the job's state. Fenced. Raises NotFound for an unknown job."""
        ...

    def set_job_step(self, job_id: str, step: int, *, incarnation: int) -> None:
        """Records the job's last completed step (callers coalesce: at most ~1/s). Fenced."""
        ...

    def begin_incarnation(
        self,
        job_id: str,
        *,
        expected_incarnation: int,
        assignments: Sequence[Assignment],
        state: JobState,
        count_restart: bool,
    ) -> int:
        """Compare-and-set the fencing token: if the job is at `expected_incarnation`, moves it to
        `expected_incarnation + 1` with world size `len(assignments)`, stores `assignments` under the
        new incarnation, sets `state`, adds one to `restarts` if `count_restart`, and returns the new
        incarnation; all in one transaction. Otherwise raises StaleIncarnation and writes nothing.
        Assignments must hold ranks 0..n-1 exactly once (ValueError otherwise)."""
        ...

    # --- nodes ------------------------------------------------------------------------------
    def upsert_node(self, node: NodeRecord, *, incarnation: int) -> None:
        """Inserts the node or replaces every field of the stored one. Fenced on node.job_id."""
        ...

    def set_node_state(self, job_id: str, node_id: str, state: NodeState, *, incarnation: int) -> None:
        """Sets one node's membership state. Fenced. NotFound for an unknown node."""
        ...

    def renew_leases(self, job_id: str, expiries_wall_ns: Mapping[str, int], *, incarnation: int) -> None:
        """Stores lease expiries for many nodes at once (unknown node ids are ignored). Fenced."""
        ...

    def list_nodes(self, job_id: str) -> list[NodeRecord]:
        """The job's nodes, ordered by node_id."""
        ...

    # --- ranks ------------------------------------------------------------------------------
    def assignments(self, job_id: str, incarnation: int) -> list[Assignment]:
        """The rank assignments of one incarnation, ordered by rank ([] if none)."""
        ...

    # --- diagnoses and actions ----------------------------------------------------------------
    def append_diagnoses(self, job_id: str, verdicts: Sequence[Verdict], *, incarnation: int) -> None:
        """Appends verdicts (oldest pruned beyond RETAINED_RECORDS). Fenced."""
        ...

    def append_action(self, job_id: str, action: ActionRecord, *, incarnation: int) -> None:
        """Appends a decision (oldest pruned beyond RETAINED_RECORDS). Fenced."""
        ...

    def recent_diagnoses(self, job_id: str, limit: int) -> list[Verdict]:
        """Up to `limit` verdicts, newest first."""
        ...

    def recent_actions(self, job_id: str, limit: int) -> list[ActionRecord]:
        """Up to `limit` actions, newest first."""
        ...

    def close(self) -> None:
        """Releases the backend; further calls are an error. Idempotent."""
        ...


def open_store(url: str) -> Store:
    """Opens a store from `--store`: `sqlite:///ABSOLUTE/PATH` (also `sqlite:////ABSOLUTE/PATH`) or
    `sqlite://RELATIVE/PATH`. `etcd://HOST:PORT[,...]` is served by `kedge.coordinator.etcd_store`
    (issue 10) once it exists."""
    if url.startswith("sqlite://"):
        from kedge.coordinator.sqlite_store import SqliteStore

        path = url.removeprefix("sqlite://")
        if path.startswith("//"):  # sqlite:////abs/path
            path = path[1:]
        if not path:
            raise BadStoreUrl(f"no path in store url {url!r}: use sqlite:///PATH")
        return SqliteStore(path)
    if url.startswith("etcd://"):
        try:
            from kedge.coordinator import etcd_store  # type: ignore[attr-defined]
        except ImportError as exc:
            raise BadStoreUrl(f"etcd store is not available in this build: {url!r}") from exc
        return etcd_store.open_etcd_store(url)  # type: ignore[no-any-return]
    raise BadStoreUrl(f"unknown store url {url!r}: use sqlite:///PATH or etcd://HOST:PORT")
