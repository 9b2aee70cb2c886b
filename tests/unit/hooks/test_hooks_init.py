"""kh.init() without an agent is a quiet no-op; with a page path it keeps the page moving."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import kedge.hooks as kh
import pytest
from kedge.agent.progress_reader import read_page
from kedge.hooks.runtime import Config


@pytest.mark.timeout(10)
def test_without_agent_environment_is_noop(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="kedge.hooks"):
        assert kh.init(Config()) is None
    assert "no agent environment" in caplog.text
    kh.step(3)  # safe without init
    assert kh.restore_step() in (-1, -2) and kh.checkpoint_requested() is False


@pytest.mark.timeout(10)
def test_config_from_env() -> None:
    env = {
        "RANK": "3",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "4",
        "KEDGE_PROGRESS_DIR": "/dev/shm/x",
        "KEDGE_INCARNATION": "5",
        "KEDGE_RESTORE_STEP": "-1",
        "KEDGE_AGENT_SOCKET": "/run/a.sock",
    }
    cfg = Config.from_env(env)
    assert (cfg.rank, cfg.local_rank, cfg.world_size, cfg.incarnation, cfg.restore_step) == (3, 1, 4, 5, -1)
    assert cfg.progress_page == "/dev/shm/x/rank-3.page" and cfg.agent_socket == "/run/a.sock"


@pytest.mark.timeout(20)
def test_page_heartbeat_and_steps(tmp_path: Path) -> None:
    path = tmp_path / "rank-0.page"
    runtime = kh.init(Config(progress_page=str(path), rank=0, world_size=1, incarnation=2))
    assert runtime is not None
    try:
        kh.step(7)
        kh.step(8)
        first = read_page(path)
        assert first is not None and first.step == 8 and first.incarnation == 2 and first.step_duration_ns > 0
        time.sleep(0.4)
        later = read_page(path)
        assert later is not None and later.heartbeat_mono_ns > first.heartbeat_mono_ns  # side thread beats
    finally:
        kh.shutdown()
    closed = read_page(path)
    assert closed is not None and closed.closed
