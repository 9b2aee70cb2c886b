"""deploy/: the systemd unit passes `systemd-analyze verify` with no stderr line at all, and the
Kubernetes manifests pass strict `kubernetes-validate` (no API server can run here)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
UNIT = DEPLOY / "systemd" / "kedge-agent.service"
KEDGE = str(Path(sys.executable).with_name("kedge"))
K8S_VERSION = "1.30.0"  # native sidecars (initContainers with restartPolicy: Always) need >= 1.29


def verify(unit_text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (apt-get install -y systemd; .ci/run does it)")
    # verify checks that ExecStart exists: point it at this checkout's kedge.
    path = tmp_path / UNIT.name
    path.write_text(unit_text.replace("/opt/kedge/bin/kedge", KEDGE))
    return subprocess.run(
        ["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60
    )


@pytest.mark.timeout(90)
def test_systemd_unit_verifies_cleanly(tmp_path: Path) -> None:
    text = UNIT.read_text()
    done = verify(text, tmp_path)
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr
    for line in (
        "Type=notify",
        "WatchdogSec=",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=",
    ):
        assert line in text, line


@pytest.mark.timeout(90)
def test_systemd_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    done = verify(UNIT.read_text().replace("Type=notify", "Type=notify\nWatchDogSecs=5"), tmp_path)
    assert done.stderr.strip() != ""


def manifests() -> list[tuple[str, dict[str, object]]]:
    out = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        out.extend((path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc)
    return out


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("name", "doc"), manifests(), ids=lambda x: x if isinstance(x, str) else "")
def test_manifest_is_valid(name: str, doc: dict[str, object]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.timeout(60)
def test_sidecar_pod_shares_socket_shm_and_processes() -> None:
    pod = next(doc for name, doc in manifests() if doc["kind"] == "Pod")
    spec = pod["spec"]
    assert isinstance(spec, dict) and spec["shareProcessNamespace"] is True
    (agent,) = spec["initContainers"]
    assert agent["restartPolicy"] == "Always" and "serve" in agent["args"]
    trainer = spec["containers"][0]
    mounts = {m["mountPath"] for m in trainer["volumeMounts"]} & {
        m["mountPath"] for m in agent["volumeMounts"]
    }
    assert mounts == {"/run/kedge", "/dev/shm"}
    env = {e["name"]: e.get("value") for e in trainer["env"]}
    assert env["KEDGE_AGENT_SOCKET"] == "/run/kedge/agent.sock" and env["KEDGE_PROGRESS_DIR"].startswith(
        "/dev/shm"
    )


@pytest.mark.timeout(60)
def test_validator_rejects_a_typo() -> None:
    pod = next(doc for name, doc in manifests() if doc["kind"] == "Pod")
    broken = {**pod, "spec": {**pod["spec"], "shareProcessNamespaces": True}}  # type: ignore[dict-item]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
