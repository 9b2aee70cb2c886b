"""The built wheel holds exactly the source tree's modules, and the entry points exist."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = {
    "agent": "kedge/agent",
    "coordinator": "kedge/coordinator",
    "ckpt": "kedge/ckpt",
    "hooks": "kedge/hooks",
    "proto": "kedge/proto",
}


def source_modules() -> set[str]:
    found = set()
    for folder, target in FOLDERS.items():
        for path in (ROOT / folder).rglob("*"):
            if "__pycache__" in path.parts or not path.is_file():
                continue
            if path.suffix in {".py", ".pyi", ".proto"} or path.name == "py.typed":
                found.add(f"{target}/{path.relative_to(ROOT / folder).as_posix()}")
    return found


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=240,
    )
    (built,) = out.glob("kedge-*.whl")
    return built


@pytest.mark.timeout(300)
def test_wheel_matches_source_tree(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        in_wheel = {n for n in zf.namelist() if n.startswith("kedge/")}
    missing = source_modules() - in_wheel
    extra = in_wheel - source_modules()
    assert not missing, f"left out of the wheel: {sorted(missing)}"
    assert not extra, f"in the wheel but not in the tree: {sorted(extra)}"


@pytest.mark.timeout(300)
def test_wheel_declares_console_scripts(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        (entry_points,) = [n for n in zf.namelist() if n.endswith("entry_points.txt")]
        text = zf.read(entry_points).decode()
    assert "kedge = kedge.coordinator.cli:main" in text
    assert "ckpt = kedge.ckpt.cli:main" in text


@pytest.mark.parametrize(
    "module", ["kedge.agent", "kedge.coordinator", "kedge.agent.cli", "kedge.coordinator.cli"]
)
def test_control_plane_does_not_import_torch(module: str, tmp_path: Path) -> None:
    code = f"import sys, {module}; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, timeout=60)


@pytest.mark.parametrize("name", ["agent", "hooks", "ckpt", "proto", "coordinator"])
def test_bare_folder_names_are_not_importable(name: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", f"import {name}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr


def test_bare_folder_names_not_importable_in_test_run() -> None:
    import importlib.util

    for name in FOLDERS:
        assert importlib.util.find_spec(name) is None, f"'{name}' is importable in the test run"


def test_scripts_are_installed() -> None:
    bindir = Path(sys.executable).parent
    for script in ("kedge", "ckpt"):
        assert (bindir / script).exists(), f"console script {script} missing"
