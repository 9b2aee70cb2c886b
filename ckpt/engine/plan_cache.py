"""Flattening the state on the training thread, kept cheap by caching the part that does not change.

`plan_save` walks modules and optimizers (hundreds of tensors, tens of ms in Python for a large
model). Between two saves the *structure* of modules and optimizers almost never changes: the same
parameter, buffer and optimizer-state tensor objects are updated in place. So the plan of the
modules and optimizers is cached and reused while a fingerprint holding those very objects (compared
by identity; holding them also prevents id reuse) is unchanged. Everything else — plain values, RNG
states, stateful objects, loose tensors — is planned afresh at every save, and so are the optimizers'
hyper-parameters (`param_groups`: a scheduler changes the learning rate every step).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class _Entry:
    keys: tuple[str, ...]
    fingerprint: list[Any]
    plan: Any


class PlanCache:
    """Builds the SavePlan of a state, reusing the module/optimizer part while it is unchanged."""

    def __init__(self) -> None:
        self._entry: _Entry | None = None
        self.hits = 0
        self.misses = 0

    def plan(
        self, state: Mapping[str, Any], rank: int, world_size: int, *, allow_pickle: bool = False
    ) -> Any:
        import torch
        from kedge.ckpt.state import SavePlan, plan_save

        structural = {
            k: v for k, v in state.items() if isinstance(v, torch.nn.Module | torch.optim.Optimizer)
        }
        if not structural:
            return plan_save(state, rank, world_size, allow_pickle=allow_pickle)
        rest = {k: v for k, v in state.items() if k not in structural}
        cached = self._cached(structural, rank, world_size, allow_pickle)
        other = plan_save(rest, rank, world_size, allow_pickle=allow_pickle)
        values = dict(cached.values)
        _refresh_param_groups(values, structural)
        values.update(other.values)
        return SavePlan(
            shards=cached.shards + other.shards, values=values, optimizers=list(cached.optimizers)
        )

    def _cached(self, structural: dict[str, Any], rank: int, world_size: int, allow_pickle: bool) -> Any:
        from kedge.ckpt.state import plan_save

        keys = tuple(structural)
        fingerprint = _fingerprint(structural)
        entry = self._entry
        if (
            fingerprint is not None
            and entry is not None
            and entry.keys == keys
            and _same(entry.fingerprint, fingerprint)
        ):
            self.hits += 1
            return entry.plan
        self.misses += 1
        plan = plan_save(structural, rank, world_size, allow_pickle=allow_pickle)
        self._entry = None if fingerprint is None else _Entry(keys, fingerprint, plan)
        return plan


def _has_extra_state(module: Any) -> bool:
    import torch

    base = torch.nn.Module.get_extra_state
    return any(type(m).get_extra_state is not base for m in module.modules())


def _fingerprint(structural: dict[str, Any]) -> list[Any] | None:
    """The objects whose identity defines the plan: modules' tensors, optimizers' params and state;
    None when the plan cannot be cached (a module with extra state, a non-tensor value)."""
    import torch

    objects: list[Any] = []
    for value in structural.values():
        objects.append(value)
        if isinstance(value, torch.nn.Module):
            if _has_extra_state(value):
                return None
            objects.extend(value.parameters())
            objects.extend(value.buffers())
        else:
            for group in value.param_groups:
                objects.extend(group["params"])
                for param in group["params"]:
                    per_param = value.state.get(param, {})
                    objects.append(tuple(per_param))
                    objects.extend(per_param.values())
    return objects


def _same(old: list[Any], new: list[Any]) -> bool:
    if len(old) != len(new):
        return False
    for a, b in zip(old, new, strict=True):
        if a is b:
            continue
        if isinstance(a, tuple | int) and a == b:  # state key names and counts compare by value
            continue
        return False
    return True


def _refresh_param_groups(values: dict[str, Any], structural: dict[str, Any]) -> None:
    """Re-reads each optimizer's hyper-parameters (the cached plan holds those of its first save)."""
    import torch
    from kedge.ckpt.state import join
    from kedge.ckpt.values import to_json

    for key, value in structural.items():
        if not isinstance(value, torch.optim.Optimizer):
            continue
        path = join(join("", key), "param_groups")
        cached_groups = values.get(path)
        if not isinstance(cached_groups, list):
            continue
        groups = []
        for live, cached in zip(value.param_groups, cached_groups, strict=True):
            group = {k: v for k, v in live.items() if k != "params"}
            group["params"] = cached["params"] if isinstance(cached, dict) else []
            groups.append(group)
        values[path] = to_json(groups, path)
