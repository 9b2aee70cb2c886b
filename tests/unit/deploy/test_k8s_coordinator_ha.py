"""The HA coordinator manifest is valid Kubernetes (strict schema) and wires three replicas to etcd."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kedge.coordinator.etcd_store import parse_store_url

pytestmark = pytest.mark.timeout(60)

_MANIFEST = Path(__file__).resolve().parents[3] / "deploy" / "k8s" / "coordinator-ha.yaml"


def _documents() -> list[dict[str, object]]:
    return [d for d in yaml.safe_load_all(_MANIFEST.read_text()) if d]


def test_manifest_validates_strictly() -> None:
    docs = _documents()
    assert [d["kind"] for d in docs] == ["Service", "StatefulSet", "PodDisruptionBudget"]
    for doc in docs:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_three_replicas_against_one_etcd_store() -> None:
    sts = next(d for d in _documents() if d["kind"] == "StatefulSet")
    spec = sts["spec"]
    assert isinstance(spec, dict) and spec["replicas"] == 3
    args = spec["template"]["spec"]["containers"][0]["args"]
    store = next(a.removeprefix("--store=") for a in args if a.startswith("--store="))
    endpoints, prefix = parse_store_url(store)
    assert endpoints == ["etcd-client.etcd.svc:2379"] and prefix == "/kedge/prod/"
