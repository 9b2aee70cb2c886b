"""Flattening the state on the training thread, kept cheap.

`plan_save` walks modules, optimizers and values; it copies no data.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class PlanCache:
    """Builds the SavePlan of a state for one save."""

    def plan(
        self, state: Mapping[str, Any], rank: int, world_size: int, *, allow_pickle: bool = False
    ) -> Any:
        from kedge.ckpt.state import plan_save

        return plan_save(state, rank, world_size, allow_pickle=allow_pickle)
