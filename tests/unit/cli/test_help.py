"""Every command's --help works and imports neither torch nor grpc."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HELP_COMMANDS = [
    ("kedge.coordinator.cli", []),
    ("kedge.coordinator.cli", ["coordinator"]),
    ("kedge.coordinator.cli", ["coordinator", "serve"]),
    ("kedge.coordinator.cli", ["agent"]),
    ("kedge.coordinator.cli", ["agent", "run"]),
    ("kedge.coordinator.cli", ["agent", "serve"]),
    ("kedge.coordinator.cli", ["status"]),
    ("kedge.coordinator.cli", ["demo"]),
    ("kedge.ckpt.cli", []),
    ("kedge.ckpt.cli", ["ls"]),
    ("kedge.ckpt.cli", ["inspect"]),
    ("kedge.ckpt.cli", ["verify"]),
    ("kedge.ckpt.cli", ["convert"]),
]

PROBE = """
import sys
from {module} import main
try:
    main(args={args!r} + ["--help"], prog_name="x")
except SystemExit as e:
    assert e.code in (0, None), e.code
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "grpc"))
assert not heavy, heavy
"""


@pytest.mark.parametrize(("module", "args"), HELP_COMMANDS)
def test_help_imports_neither_torch_nor_grpc(module: str, args: list[str], tmp_path: Path) -> None:
    code = PROBE.format(module=module, args=args)
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
