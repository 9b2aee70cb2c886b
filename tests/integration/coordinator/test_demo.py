"""`kedge demo` end to end: a rank SIGKILL is restarted, a node loss shrinks 4 -> 2 with a resharded
resume from a kedge checkpoint, the timeline and the final status are printed, nothing is left."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


def test_demo_restarts_then_shrinks(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        "-c",
        "from kedge.coordinator.cli import main; main()",
        "demo",
        "--workdir",
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "RANK_DIED node=node-b rank=3" in out
    assert "restart: restart same world" in out
    assert "isolate node-b and shrink 4 -> 2" in out
    assert "resume    world 4 incarnation 2 from step" in out
    assert "resume    world 2 incarnation 3 from step" in out
    assert "job demo: finished" in out
    assert (tmp_path / "ckpt").is_dir()
