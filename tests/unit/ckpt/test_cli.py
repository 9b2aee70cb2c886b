"""`ckpt ls/inspect/verify`: tables, JSON, exit 1 on corruption, one-line exit 2 on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import kedge.ckpt as kc
import pytest
import torch
from kedge.ckpt.manifest import FORMAT_VERSION

pytestmark = pytest.mark.timeout(120)


def ckpt(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    code = "from kedge.ckpt.cli import main; main(prog_name='ckpt')"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60, env=env
    )


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli")
    kc.save(path, {"w": torch.zeros(64, 8), "b": torch.arange(10), "meta": {"epoch": 1}}, step=3)
    (path / "step-000000000009").mkdir()  # a partial step: no manifest
    return path


def test_ls_inspect_verify(root: Path) -> None:
    out = ckpt("ls", str(root))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "committed" in lines[1] and lines[1].split()[0] == "3" and "partial" in lines[2]
    table = ckpt("inspect", str(root))
    assert table.returncode == 0 and "float32" in table.stdout and "64x8" in table.stdout
    doc = json.loads(ckpt("inspect", "--json", str(root / "step-000000000003")).stdout)
    assert doc["step"] == 3 and {t["name"] for t in doc["tensors"]} == {"w", "b"}
    w = next(t for t in doc["tensors"] if t["name"] == "w")
    assert w["ratio"] > 10  # zeros compress
    ok = ckpt("verify", str(root))
    assert ok.returncode == 0 and "ok: step 3" in ok.stdout


def _one_line(proc: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert proc.returncode == code, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("ckpt")]
    assert len(lines) >= 1 and text in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_input_is_one_line_exit_2(tmp_path: Path, root: Path) -> None:
    _one_line(ckpt("inspect", str(tmp_path / "missing")), 2, "no such directory")
    _one_line(ckpt("verify", str(tmp_path)), 2, "not a kedge checkpoint")
    step = tmp_path / "step-000000000001"
    step.mkdir()
    manifest = (root / "step-000000000003" / "manifest.json").read_bytes()
    (step / "manifest.json").write_bytes(manifest[: len(manifest) // 2])
    _one_line(ckpt("inspect", str(tmp_path)), 2, "truncated")
    doc = json.loads(manifest)
    doc["format_version"] = FORMAT_VERSION + 1
    (step / "manifest.json").write_text(json.dumps(doc))
    _one_line(ckpt("verify", str(step)), 2, "newer")


def test_no_credentials_is_one_line_exit_2() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
               AWS_EC2_METADATA_DISABLED="true", AWS_ENDPOINT_URL="http://127.0.0.1:9")  # fmt: skip
    _one_line(ckpt("ls", "s3://bucket/run", env=env), 2, "credentials")


def test_corruption_exits_1(tmp_path: Path) -> None:
    kc.save(tmp_path, {"w": torch.ones(1000)}, codec="raw")
    data = tmp_path / "step-000000000000" / "data-00000.bin"
    raw = bytearray(data.read_bytes())
    raw[100] ^= 1
    data.write_bytes(bytes(raw))
    _one_line(ckpt("verify", str(tmp_path)), 1, "tensor 'w' chunk 0 (file data-00000.bin")
