"""Background failures never crash or hang training: the checkpoint fails at that level, the previous
committed one stays loadable, and the error surfaces in the log, a metric and the next save()/wait()."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kedge.ckpt import faults
from kedge.ckpt.engine.checkpointer import Checkpointer
from kedge.ckpt.engine.retry import RetryPolicy
from kedge.ckpt.errors import CheckpointFailed, CkptError
from kedge_fixtures.ckpt_engine import engine_threads, make_job, train

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_engine_threads_left")]


@pytest.fixture(autouse=True)
def _disarm() -> Iterator[None]:
    yield
    faults.disarm()


def _checkpointer(path: Path | str, **kwargs: object) -> Checkpointer:
    options: dict[str, object] = {
        "host_cache_bytes": 1 << 20,
        "slab_bytes": 1 << 16,
        "rank": 0,
        "world_size": 1,
    }
    options.update(kwargs)
    return Checkpointer(str(path), **options)  # type: ignore[arg-type]


def test_write_failure_fails_the_level_and_surfaces_on_next_save(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model, optimizer = make_job()
    state = {"model": model, "optim": optimizer}
    train(model, optimizer, 1)
    with _checkpointer(tmp_path) as ck:
        assert ck.save(1, state).wait("local", timeout_s=30)
        faults.arm("ckpt.write_slab", "raise")  # e.g. ENOSPC while appending chunks
        failing = ck.save(2, state)
        train(model, optimizer, 2, start=2)  # training is not blocked by the failure
        while failing.status("local") == "pending":
            time.sleep(0.01)
        faults.disarm()
        with pytest.raises(CheckpointFailed, match="step=2 failed at level=local"):
            ck.save(4, state)  # admitted, then the earlier failure is raised
        ck.wait("local", timeout_s=30)  # reported once: nothing pending now
        assert ck.metrics.get("failed_local") == 1
        assert ck.steps() == [1, 4]  # the previous committed step stayed loadable
        faults.arm("ckpt.write_slab", "raise")
        with pytest.raises(CheckpointFailed, match="step=5 failed at level=local"):
            ck.save(5, state).wait("local", timeout_s=30)
        faults.disarm()
        assert ck.save(6, state).wait("local", timeout_s=30)  # seen through the handle: not raised again
    assert "event=ckpt_failed step=2 level=local" in caplog.text


@pytest.mark.timeout(150)  # a child process that imports torch: slow on a loaded machine
def test_disk_full_from_a_file_size_limit(tmp_path: Path) -> None:
    # A real EFBIG from the kernel: RLIMIT_FSIZE in a child process (a tmpfs mount needs privileges).
    script = textwrap.dedent(
        f"""
        import resource, signal, torch
        from kedge.ckpt.engine.checkpointer import Checkpointer
        from kedge.ckpt.errors import CheckpointFailed, CkptError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        with Checkpointer({str(tmp_path)!r}, compression="none", host_cache_bytes=1 << 20, slab_bytes=1 << 16, rank=0, world_size=1) as ck:
            ck.save(1, {{"w": torch.ones(100)}}).wait("local", timeout_s=30)
            resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
            h = ck.save(2, {{"w": torch.ones(200_000)}})
            try:
                h.wait("local", timeout_s=30)
                print("RESULT saved")
            except CheckpointFailed as exc:
                print("RESULT failed", exc)
            print("STEPS", ck.steps(), int(ck.metrics.get("failed_local")))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=140)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "RESULT failed" in out.stdout and "File too large" in out.stdout
    assert "STEPS [1] 1" in out.stdout


def test_unwritable_local_path_fails_without_crashing(tmp_path: Path) -> None:
    # Tests run as root, so chmod cannot deny; a directory under a regular file cannot be created.
    blocker = tmp_path / "file"
    blocker.write_bytes(b"x")
    model, optimizer = make_job()
    with _checkpointer(blocker / "ckpt") as ck:
        handle = ck.save(1, {"model": model, "optim": optimizer})
        with pytest.raises(CheckpointFailed):
            handle.wait("local", timeout_s=30)
        train(model, optimizer, 1)
        assert ck.metrics.get("failed_local") == 1 or ck.metrics.get("failed_host") == 1


def test_remote_retries_are_bounded_and_local_stays_committed(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"x")
    policy = RetryPolicy(attempts=3, backoff_s=0.01, max_backoff_s=0.02)
    ck = _checkpointer(tmp_path / "local", remote=f"file://{blocker}/remote", remote_retry=policy)
    model, optimizer = make_job()
    try:
        handle = ck.save(1, {"model": model, "optim": optimizer})
        assert handle.wait("local", timeout_s=30)
        with pytest.raises(CheckpointFailed, match="level=remote"):
            handle.wait("remote", timeout_s=30)
        assert ck.metrics.get("retries_remote") == 2
        assert ck.metrics.get("failed_remote") == 1
        assert ck.steps() == [1]
    finally:
        ck.close()


def test_saves_faster_than_the_level_are_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    model, optimizer = make_job()
    state = {"model": model, "optim": optimizer}
    faults.arm("ckpt.write_slab", "sleep:0.3")
    with _checkpointer(tmp_path, max_in_flight=1) as ck:
        first = ck.save(1, state)
        second = ck.save(2, state)
        assert second.status("host") == "skipped" and second.status("local") == "skipped"
        assert not second.wait("local", timeout_s=1)
        assert first.wait("local", timeout_s=30)
        assert ck.metrics.get("skipped_host") == 1
    assert "event=ckpt_skipped step=2" in caplog.text


def test_close_aborts_within_its_bound_and_leaves_no_thread(tmp_path: Path) -> None:
    model, optimizer = make_job()
    faults.arm("ckpt.write_slab", "sleep:0.2")
    ck = _checkpointer(tmp_path)
    handle = ck.save(1, {"model": model, "optim": optimizer})
    started = time.monotonic()
    ck.close(drain=False, timeout_s=5)
    assert time.monotonic() - started < 5
    assert handle.status("local") == "failed"
    assert not [t for t in engine_threads() if t.is_alive()]
    with pytest.raises(CkptError, match="closed"):
        ck.save(2, {"model": model, "optim": optimizer})
