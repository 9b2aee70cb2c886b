"""The store contract against the etcd backend on a real etcd, plus etcd-specific checks."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kedge.coordinator.errors import BadStoreUrl, SchemaMismatch, StoreUnavailable
from kedge.coordinator.etcd_client import EtcdClient, EtcdUnavailableError
from kedge.coordinator.etcd_store import DEFAULT_PREFIX, EtcdStore, parse_store_url
from kedge.coordinator.store import open_store
from kedge_fixtures.etcd import EtcdHandle
from kedge_fixtures.processes import free_port
from kedge_fixtures.store_contract import StoreContract, StoreFactory

pytestmark = [pytest.mark.timeout(60), pytest.mark.etcd]


class TestEtcdStore(StoreContract):
    @pytest.fixture
    def store_factory(self, etcd: EtcdHandle) -> StoreFactory:
        return lambda: open_store(f"{etcd.store_url}{etcd.prefix}")


@pytest.fixture
def client(etcd: EtcdHandle) -> Iterator[EtcdClient]:
    with EtcdClient([etcd.endpoint], timeout_s=1.0) as c:
        yield c


def test_store_url_parsing() -> None:
    assert parse_store_url("etcd://a:1,b:2") == (["a:1", "b:2"], DEFAULT_PREFIX)
    assert parse_store_url("etcd://a:1/team/run1/") == (["a:1"], "/team/run1/")
    for bad in ("etcd://", "etcd://a", "etcd://a:x", "etcd://:1"):
        with pytest.raises(BadStoreUrl):
            open_store(bad)


def test_deployments_are_separated_by_prefix(etcd: EtcdHandle, client: EtcdClient) -> None:
    one = EtcdStore(client, etcd.prefix + "one/")
    two = EtcdStore(client, etcd.prefix + "two/")
    one.ensure_job("j", command=["a"], now_wall_ns=0)
    assert [j.job_id for j in one.list_jobs()] == ["j"] and two.list_jobs() == []


def test_newer_schema_is_refused(etcd: EtcdHandle, client: EtcdClient) -> None:
    client.put(etcd.prefix + "schema", b"99")
    with pytest.raises(SchemaMismatch, match="schema version 99"):
        EtcdStore(client, etcd.prefix)


def test_unreachable_etcd_is_store_unavailable(etcd: EtcdHandle, client: EtcdClient) -> None:
    store = EtcdStore(client, etcd.prefix)
    store.ensure_job("j", command=[], now_wall_ns=0)
    etcd.server.stop()
    with pytest.raises(StoreUnavailable):
        store.get_job("j")
    etcd.server.start()
    job = store.get_job("j")
    assert job is not None and job.job_id == "j"


def test_client_moves_to_the_next_endpoint(etcd: EtcdHandle) -> None:
    dead = f"127.0.0.1:{free_port()}"
    with EtcdClient([dead, etcd.endpoint], timeout_s=1.0) as client:
        with pytest.raises(EtcdUnavailableError):
            client.get(etcd.prefix + "k")
        client.put(etcd.prefix + "k", b"v")
        kv = client.get(etcd.prefix + "k")
        assert kv is not None and kv.value == b"v" and client.endpoint == etcd.endpoint
