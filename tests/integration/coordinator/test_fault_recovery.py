"""End to end with real agents and gloo ranks: a SIGKILLed rank is named and the world restarted;
a lost node (agent and workers killed) is named and the job shrinks 4 -> 2. No process is left."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

SCENARIO = Path(__file__).with_name("scenario_restart_shrink.py")


def test_sigkill_restarts_and_node_loss_shrinks() -> None:
    proc = subprocess.run([sys.executable, str(SCENARIO)], capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    first = out["verdicts"][0]
    assert first[:3] == ["RANK_DIED", "node-b", 3] and first[3] < 2.0, out["verdicts"]
    assert ["NODE_LOST", "node-b", -1] in [v[:3] for v in out["verdicts"]]
    assert [a[0] for a in out["actions"]] == ["restart", "shrink"]
    assert out["actions"][1][2] == ["node-b"]
    assert out["nodes"] == {"node-a": "alive", "node-b": "isolated"} and out["world"] == 2
