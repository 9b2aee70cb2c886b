"""The coordinator's systemd unit passes `systemd-analyze verify` with no output on stderr, and its
Kubernetes manifest validates strictly (no API server here) and runs the real CLI's flags."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner
from kedge.coordinator.cli import main

pytestmark = pytest.mark.timeout(60)

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
UNIT = DEPLOY / "systemd" / "kedge-coordinator.service"
MANIFEST = DEPLOY / "k8s" / "coordinator.yaml"


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed (.ci/run installs it)"
)
def test_systemd_unit_verifies_cleanly(tmp_path: Path) -> None:
    # verify checks that ExecStart exists; point it at a stand-in with the same name.
    unit = tmp_path / UNIT.name
    fake_bin = tmp_path / "kedge"
    fake_bin.write_text("#!/bin/sh\n")
    fake_bin.chmod(0o755)
    unit.write_text(UNIT.read_text().replace("/opt/kedge/bin/kedge", str(fake_bin)))
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr


def test_systemd_unit_runs_the_serve_command() -> None:
    exec_start = next(line for line in UNIT.read_text().splitlines() if line.startswith("ExecStart="))
    args = exec_start.removeprefix("ExecStart=").split()[1:]
    assert args[:2] == ["coordinator", "serve"] and any(a.startswith("sqlite:///var/lib/") for a in args)
    _parses(args)


def _docs() -> list[dict[str, object]]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]


def test_manifest_validates_strictly() -> None:
    docs = _docs()
    assert [d["kind"] for d in docs] == ["Service", "PersistentVolumeClaim", "Deployment"]
    for doc in docs:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_deployment_runs_the_real_cli_and_matches_the_service() -> None:
    docs = {d["kind"]: d for d in _docs()}
    spec = docs["Deployment"]["spec"]
    assert isinstance(spec, dict) and spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    container = spec["template"]["spec"]["containers"][0]
    _parses(container["args"])
    service = docs["Service"]["spec"]
    assert isinstance(service, dict) and service["ports"][0]["targetPort"] == container["ports"][0]["name"]


def _parses(args: list[str]) -> None:
    """The flags exist: --help after them exits 0 (a typo would be 'No such option', exit 2)."""
    result = CliRunner().invoke(main, [*args, "--help"])
    assert result.exit_code == 0, result.output
