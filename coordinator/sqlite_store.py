"""SQLite backend of the coordinator store: the embedded default (`--store sqlite:///PATH`).

Durability: WAL journal with `synchronous=FULL`, so a committed decision or incarnation survives a
coordinator crash or power loss; each Store call is one transaction (`BEGIN IMMEDIATE`, so the
fencing check and the write see the same snapshot). One connection guarded by a lock: the store is
written by one coordinator process, and calls are small.

Schema versioning: table `meta` holds `schema_version`; `_MIGRATIONS[i]` brings version i to i+1 and
runs inside one transaction on open. A file written by a newer version is refused (SchemaMismatch)
rather than guessed at.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from kedge.coordinator.errors import NotFound, SchemaMismatch, StaleIncarnation, StoreError
from kedge.coordinator.model import (
    ActionRecord,
    Assignment,
    JobRecord,
    JobState,
    NodeRecord,
    NodeState,
    Verdict,
)
from kedge.coordinator.records_json import (
    action_from_json,
    action_to_json,
    verdict_from_json,
    verdict_to_json,
)
from kedge.coordinator.store import RETAINED_RECORDS

_MIGRATIONS: list[str] = [
    # 0 -> 1
    """
    CREATE TABLE jobs (
        job_id TEXT PRIMARY KEY, state TEXT NOT NULL, incarnation INTEGER NOT NULL,
        world_size INTEGER NOT NULL, step INTEGER NOT NULL, restarts INTEGER NOT NULL,
        command TEXT NOT NULL, created_wall_ns INTEGER NOT NULL);
    CREATE TABLE nodes (
        job_id TEXT NOT NULL, node_id TEXT NOT NULL, hostname TEXT NOT NULL, address TEXT NOT NULL,
        nproc INTEGER NOT NULL, gpus INTEGER NOT NULL, state TEXT NOT NULL,
        lease_expires_wall_ns INTEGER NOT NULL, registered_wall_ns INTEGER NOT NULL,
        PRIMARY KEY (job_id, node_id));
    CREATE TABLE assignments (
        job_id TEXT NOT NULL, incarnation INTEGER NOT NULL, rank INTEGER NOT NULL,
        node_id TEXT NOT NULL, local_rank INTEGER NOT NULL,
        PRIMARY KEY (job_id, incarnation, rank));
    CREATE TABLE diagnoses (
        id INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, body TEXT NOT NULL);
    CREATE INDEX diagnoses_job ON diagnoses (job_id, id);
    CREATE TABLE actions (
        id INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, body TEXT NOT NULL);
    CREATE INDEX actions_job ON actions (job_id, id);
    """,
]
SCHEMA_VERSION = len(_MIGRATIONS)


class SqliteStore:
    """Store backed by one SQLite file (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = sqlite3.connect(
            str(self._path), check_same_thread=False, isolation_level=None, timeout=10.0
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._migrate()

    # --- plumbing -----------------------------------------------------------------------------
    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn is None:
                raise StoreError(f"store {self._path} is closed")
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _migrate(self) -> None:
        with self._tx() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise SchemaMismatch(
                    f"{self._path} has schema version {version}; this kedge knows up to {SCHEMA_VERSION}"
                )
            for script in _MIGRATIONS[version:]:
                for statement in script.split(";"):
                    if statement.strip():
                        conn.execute(statement)
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )

    @staticmethod
    def _check_fence(conn: sqlite3.Connection, job_id: str, incarnation: int) -> None:
        row = conn.execute("SELECT incarnation FROM jobs WHERE job_id=?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"unknown job {job_id!r}")
        if int(row[0]) != incarnation:
            raise StaleIncarnation(job_id, incarnation, int(row[0]))

    # --- jobs ---------------------------------------------------------------------------------
    def ensure_job(self, job_id: str, *, command: Sequence[str], now_wall_ns: int) -> JobRecord:
        with self._tx() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO jobs VALUES (?, ?, 0, 0, -1, 0, ?, ?)",
                (job_id, JobState.PENDING.value, json.dumps(list(command)), now_wall_ns),
            )
            return _job_from_row(conn.execute("SELECT * FROM jobs WHERE job_id=?", (job_id,)).fetchone())

    def get_job(self, job_id: str) -> JobRecord | None:
        with self._tx() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE job_id=?", (job_id,)).fetchone()
        return None if row is None else _job_from_row(row)

    def list_jobs(self) -> list[JobRecord]:
        with self._tx() as conn:
            rows = conn.execute("SELECT * FROM jobs ORDER BY job_id").fetchall()
        return [_job_from_row(r) for r in rows]

    def set_job_state(self, job_id: str, state: JobState, *, incarnation: int) -> None:
        with self._tx() as conn:
            self._check_fence(conn, job_id, incarnation)
            conn.execute("UPDATE jobs SET state=? WHERE job_id=?", (JobState(state).value, job_id))

    def set_job_step(self, job_id: str, step: int, *, incarnation: int) -> None:
        with self._tx() as conn:
            self._check_fence(conn, job_id, incarnation)
            conn.execute("UPDATE jobs SET step=? WHERE job_id=?", (step, job_id))

    def begin_incarnation(
        self,
        job_id: str,
        *,
        expected_incarnation: int,
        assignments: Sequence[Assignment],
        state: JobState,
        count_restart: bool,
    ) -> int:
        _check_assignments(assignments)
        new = expected_incarnation + 1
        with self._tx() as conn:
            self._check_fence(conn, job_id, expected_incarnation)
            conn.execute(
                "UPDATE jobs SET incarnation=?, world_size=?, state=?, restarts=restarts+? WHERE job_id=?",
                (new, len(assignments), JobState(state).value, int(count_restart), job_id),
            )
            conn.execute("DELETE FROM assignments WHERE job_id=? AND incarnation=?", (job_id, new))
            conn.executemany(
                "INSERT INTO assignments VALUES (?, ?, ?, ?, ?)",
                [(job_id, new, a.rank, a.node_id, a.local_rank) for a in assignments],
            )
        return new

    # --- nodes --------------------------------------------------------------------------------
    def upsert_node(self, node: NodeRecord, *, incarnation: int) -> None:
        with self._tx() as conn:
            self._check_fence(conn, node.job_id, incarnation)
            conn.execute(
                "INSERT OR REPLACE INTO nodes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    node.job_id,
                    node.node_id,
                    node.hostname,
                    node.address,
                    node.nproc,
                    node.gpus,
                    NodeState(node.state).value,
                    node.lease_expires_wall_ns,
                    node.registered_wall_ns,
                ),
            )

    def set_node_state(self, job_id: str, node_id: str, state: NodeState, *, incarnation: int) -> None:
        with self._tx() as conn:
            self._check_fence(conn, job_id, incarnation)
            cur = conn.execute(
                "UPDATE nodes SET state=? WHERE job_id=? AND node_id=?",
                (NodeState(state).value, job_id, node_id),
            )
            if cur.rowcount == 0:
                raise NotFound(f"unknown node {node_id!r} in job {job_id!r}")

    def renew_leases(self, job_id: str, expiries_wall_ns: Mapping[str, int], *, incarnation: int) -> None:
        with self._tx() as conn:
            self._check_fence(conn, job_id, incarnation)
            conn.executemany(
                "UPDATE nodes SET lease_expires_wall_ns=? WHERE job_id=? AND node_id=?",
                [(exp, job_id, node_id) for node_id, exp in expiries_wall_ns.items()],
            )

    def list_nodes(self, job_id: str) -> list[NodeRecord]:
        with self._tx() as conn:
            rows = conn.execute("SELECT * FROM nodes WHERE job_id=? ORDER BY node_id", (job_id,)).fetchall()
        return [_node_from_row(r) for r in rows]

    # --- ranks --------------------------------------------------------------------------------
    def assignments(self, job_id: str, incarnation: int) -> list[Assignment]:
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT rank, node_id, local_rank FROM assignments WHERE job_id=? AND incarnation=? "
                "ORDER BY rank",
                (job_id, incarnation),
            ).fetchall()
        return [Assignment(rank=int(r[0]), node_id=str(r[1]), local_rank=int(r[2])) for r in rows]

    # --- diagnoses and actions ------------------------------------------------------------------
    def append_diagnoses(self, job_id: str, verdicts: Sequence[Verdict], *, incarnation: int) -> None:
        with self._tx() as conn:
            self._check_fence(conn, job_id, incarnation)
            conn.executemany(
                "INSERT INTO diagnoses (job_id, body) VALUES (?, ?)",
                [(job_id, json.dumps(verdict_to_json(v))) for v in verdicts],
            )
            _prune(conn, "diagnoses", job_id)

    def append_action(self, job_id: str, action: ActionRecord, *, incarnation: int) -> None:
        with self._tx() as conn:
            self._check_fence(conn, job_id, incarnation)
            conn.execute(
                "INSERT INTO actions (job_id, body) VALUES (?, ?)",
                (job_id, json.dumps(action_to_json(action))),
            )
            _prune(conn, "actions", job_id)

    def recent_diagnoses(self, job_id: str, limit: int) -> list[Verdict]:
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT body FROM diagnoses WHERE job_id=? ORDER BY id DESC LIMIT ?", (job_id, limit)
            ).fetchall()
        return [verdict_from_json(json.loads(r[0])) for r in rows]

    def recent_actions(self, job_id: str, limit: int) -> list[ActionRecord]:
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT body FROM actions WHERE job_id=? ORDER BY id DESC LIMIT ?", (job_id, limit)
            ).fetchall()
        return [action_from_json(json.loads(r[0])) for r in rows]

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _check_assignments(assignments: Sequence[Assignment]) -> None:
    ranks = sorted(a.rank for a in assignments)
    if ranks != list(range(len(assignments))):
        raise ValueError(f"assignments must hold ranks 0..{len(assignments) - 1} once each, got {ranks}")


def _prune(conn: sqlite3.Connection, table: str, job_id: str) -> None:
    conn.execute(
        f"DELETE FROM {table} WHERE job_id=? AND id <= "
        f"(SELECT id FROM {table} WHERE job_id=? ORDER BY id DESC LIMIT 1 OFFSET ?)",
        (job_id, job_id, RETAINED_RECORDS),
    )


def _job_from_row(row: tuple[object, ...]) -> JobRecord:
    job_id, state, inc, world, step, restarts, command, created = row
    return JobRecord(
        job_id=str(job_id),
        state=JobState(str(state)),
        incarnation=int(str(inc)),
        world_size=int(str(world)),
        step=int(str(step)),
        restarts=int(str(restarts)),
        command=list(json.loads(str(command))),
        created_wall_ns=int(str(created)),
    )


def _node_from_row(row: tuple[object, ...]) -> NodeRecord:
    job_id, node_id, hostname, address, nproc, gpus, state, lease, registered = row
    return NodeRecord(
        job_id=str(job_id),
        node_id=str(node_id),
        hostname=str(hostname),
        address=str(address),
        nproc=int(str(nproc)),
        gpus=int(str(gpus)),
        state=NodeState(str(state)),
        lease_expires_wall_ns=int(str(lease)),
        registered_wall_ns=int(str(registered)),
    )
