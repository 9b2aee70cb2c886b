"""The store contract against the SQLite backend, plus SQLite-specific checks (WAL, schema version)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from kedge.coordinator.errors import BadStoreUrl, SchemaMismatch
from kedge.coordinator.sqlite_store import SCHEMA_VERSION, SqliteStore
from kedge.coordinator.store import open_store
from kedge_fixtures.store_contract import StoreContract, StoreFactory

pytestmark = pytest.mark.timeout(60)


class TestSqliteStore(StoreContract):
    @pytest.fixture
    def store_factory(self, tmp_path: Path) -> StoreFactory:
        return lambda: SqliteStore(tmp_path / "state" / "coordinator.db")


def test_wal_and_schema_version(tmp_path: Path) -> None:
    SqliteStore(tmp_path / "s.db").close()
    conn = sqlite3.connect(tmp_path / "s.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(
        SCHEMA_VERSION
    )
    conn.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    SqliteStore(tmp_path / "s.db").close()
    conn = sqlite3.connect(tmp_path / "s.db")
    conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    conn.commit()
    conn.close()
    with pytest.raises(SchemaMismatch, match="schema version"):
        SqliteStore(tmp_path / "s.db")


def test_open_store_urls(tmp_path: Path) -> None:
    store = open_store(f"sqlite://{tmp_path}/a.db")
    store.close()
    assert (tmp_path / "a.db").exists()
    open_store(f"sqlite:///{tmp_path}/b.db").close()
    assert (tmp_path / "b.db").exists()
    for bad in ("mysql://x", "sqlite://", "nonsense"):
        with pytest.raises(BadStoreUrl):
            open_store(bad)
