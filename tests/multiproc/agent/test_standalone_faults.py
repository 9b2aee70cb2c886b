"""A real agent runs a 2-rank gloo job; each injected fault must give the right verdict for the right rank,
and the agent (standalone, --max-restarts 0) must exit 1 naming that rank."""

from __future__ import annotations

from pathlib import Path

import pytest
from kedge_fixtures.agent_runs import run_agent

FAULTS = [
    # (fault spec, verdict kind, culprit rank, words in the exit reason)
    ("sigkill:1:8", "RANK_DIED", 1, "killed by SIGKILL"),
    ("sigstop:1:8", "RANK_FROZEN", 1, "state T"),
    ("gil:0:8", "RANK_FROZEN", 0, "no progress"),
    ("gilc:1:8", "RANK_FROZEN", 1, "heartbeat stale"),
    ("sleep:1:8", "RANK_FROZEN", 1, "no progress"),
    ("pipe:0:8", "RANK_FROZEN", 0, "no progress"),
    ("exception:1:8", "RANK_DIED", 1, "exited with code 1"),
    ("segfault:0:8", "RANK_DIED", 0, "killed by SIGSEGV"),
]


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize(("fault", "kind", "rank", "words"), FAULTS, ids=[f[0].split(":")[0] for f in FAULTS])
def test_fault_gives_verdict_naming_rank(
    tmp_path: Path, fault: str, kind: str, rank: int, words: str
) -> None:
    run = run_agent(tmp_path, fault=fault, steps=400)
    failures = [v for v in run.verdicts if v["kind"] in ("RANK_DIED", "RANK_FROZEN")]
    assert failures, run.stderr[-3000:]
    first = failures[0]
    assert (first["kind"], first["rank"]) == (kind, rank), failures
    assert run.returncode == 1
    assert f"rank {rank} " in run.reason and words in run.reason, run.reason
    assert "restarts exhausted (0/0)" in run.reason


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_benign_pauses_give_no_verdict(tmp_path: Path) -> None:
    # A 1.5 s GIL-held pause (like a long GC), a 2 s sleep (like a checkpoint), then 4x slower steps.
    run = run_agent(tmp_path, fault="gc:0:8,pause:1:12,pause:0:16,slow:1:20,slow:0:20", steps=30)
    assert run.returncode == 0, run.stderr[-3000:]
    assert [v["kind"] for v in run.verdicts] == ["RANK_EXITED_OK", "RANK_EXITED_OK"], run.verdicts


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_restart_after_failure_then_success(tmp_path: Path) -> None:
    # The fault fires in incarnation 1 only; the restarted world (incarnation 2) runs to the end.
    run = run_agent(tmp_path, fault="sigkill:0:5", steps=12, extra=("--max-restarts", "1"))
    assert run.returncode == 0, run.stderr[-3000:]
    kinds = [(v["kind"], v["rank"], v["incarnation"]) for v in run.verdicts]
    assert kinds[0] == ("RANK_DIED", 0, 1), kinds
    assert sorted(k for k in kinds if k[2] == 2) == [("RANK_EXITED_OK", 0, 2), ("RANK_EXITED_OK", 1, 2)]
