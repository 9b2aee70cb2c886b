"""Engine settings: argument > environment (KEDGE_CKPT_*) > default; a bad value names its variable."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.timeout(30)


def test_engine_settings_precedence_argument_over_environment_over_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    from kedge.ckpt.engine.checkpointer import Checkpointer

    monkeypatch.setenv("KEDGE_CKPT_HOST_CACHE_BYTES", str(1 << 18))
    monkeypatch.setenv("KEDGE_CKPT_POLICY", "coalesce")
    with Checkpointer(str(tmp_path), slab_bytes=1 << 16, rank=0, world_size=1) as ck:
        assert ck.config.host_cache_bytes == 1 << 18 and ck.config.policy == "coalesce"
        assert ck.config.max_in_flight == 2  # default
    with Checkpointer(
        str(tmp_path), host_cache_bytes=1 << 17, slab_bytes=1 << 16, rank=0, world_size=1
    ) as ck:
        assert ck.config.host_cache_bytes == 1 << 17
    monkeypatch.setenv("KEDGE_CKPT_MAX_IN_FLIGHT", "many")
    with pytest.raises(ValueError, match="KEDGE_CKPT_MAX_IN_FLIGHT"):
        Checkpointer(str(tmp_path), rank=0, world_size=1)
