"""What a rank loads: walks the *target* state (the same rules as kedge.ckpt.state) and lists, for
every stored tensor, the boxes this rank needs in its current placement, plus the steps that put
non-tensor state back (values into mappings, load_state_dict calls, RNG states), run after the reads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import torch
from kedge.ckpt.errors import FormatError, NotFoundError
from kedge.ckpt.manifest import DTYPE_ITEMSIZE, Manifest
from kedge.ckpt.state import (
    LocalShard,
    RNGState,
    dtensor_boxes,
    dtype_name,
    is_stateful,
    join,
    optimizer_param_names,
    param_fqns,
)
from kedge.ckpt.values import from_json, is_plain
from torch.distributed.tensor import DTensor


@dataclass(slots=True)
class Target:
    """Fill `dest` (a CPU, C-contiguous tensor of the stored dtype) with the global box at offsets."""

    name: str
    dest: torch.Tensor
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]


@dataclass(slots=True)
class LoadPlan:
    targets: list[Target] = field(default_factory=list)
    finalizers: list[Callable[[], None]] = field(default_factory=list)


class _Restorer:
    def __init__(
        self, manifest: Manifest, rank: int, world_size: int, cast: bool, allow_pickle: bool
    ) -> None:
        self.m, self.rank, self.world_size = manifest, rank, world_size
        self.cast, self.allow_pickle = cast, allow_pickle
        self.plan = LoadPlan()
        self.fqns: Mapping[int, str] = {}

    # -- dispatch: returns the object to put in place of `obj` in its parent --------------------
    def restore(self, path: str, obj: Any) -> Any:
        if path in self.m.values and not isinstance(
            obj, torch.Tensor | torch.nn.Module | torch.optim.Optimizer
        ):
            return self.value(path, obj)
        if isinstance(obj, torch.Tensor):
            self.tensor(path, obj)
        elif isinstance(obj, LocalShard):
            self.box(path, obj.tensor, tuple(obj.offsets), tuple(obj.tensor.shape), tuple(obj.global_shape))
        elif isinstance(obj, torch.Generator):
            gen = obj
            self.per_rank(path, gen.get_state(), lambda t: _discard(gen.set_state(t)))
        elif isinstance(obj, RNGState):
            for key, (get, put) in obj.parts().items():
                if join(path, key) in self.m.tensors:
                    self.per_rank(join(path, key), get(), put)
        elif isinstance(obj, torch.optim.Optimizer):
            self.optimizer(path, obj)
        elif isinstance(obj, torch.nn.Module):
            for key, value in obj.state_dict().items():
                self.restore(f"{path}/{key}" if path else key, value)
        elif isinstance(obj, MutableMapping):
            self.mapping(path, obj)
        elif isinstance(obj, list):
            obj[:] = [self.restore(join(path, i), v) for i, v in enumerate(obj)]
        elif isinstance(obj, tuple):
            return tuple(self.restore(join(path, i), v) for i, v in enumerate(obj))
        elif is_stateful(obj):
            sd = obj.state_dict()
            restored = self.restore(path, sd)
            self.plan.finalizers.append(lambda: obj.load_state_dict(restored))
        else:
            return self.value(path, obj)
        return obj

    def value(self, path: str, obj: Any) -> Any:
        if path not in self.m.values:
            raise NotFoundError(f"{path or '<root>'}: not in checkpoint step {self.m.step}")
        value = from_json(self.m.values[path], path, allow_pickle=self.allow_pickle)
        if is_stateful(obj) and not is_plain(obj):
            self.plan.finalizers.append(lambda: obj.load_state_dict(value))
            return obj
        return value

    def mapping(self, path: str, obj: MutableMapping[Any, Any]) -> None:
        for key in list(obj.keys()):
            if not isinstance(key, str):
                raise TypeError(f"cannot load {path or '<root>'}: key {key!r} is not a str")
            new = self.restore(join(path, key), obj[key])
            if new is not obj[key]:
                obj[key] = new

    # -- tensors -------------------------------------------------------------------------------
    def record(self, path: str, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
        rec = self.m.tensors.get(path)
        if rec is None:
            raise NotFoundError(f"tensor {path!r}: not in checkpoint step {self.m.step}")
        if tuple(rec.shape) != shape:
            raise FormatError(
                f"tensor {path!r}: checkpoint has shape {list(rec.shape)}, target has {list(shape)}"
            )
        if rec.dtype != dtype_name(dtype) and not self.cast:
            raise FormatError(
                f"tensor {path!r}: checkpoint has dtype {rec.dtype}, target has {dtype_name(dtype)} "
                "(pass cast=True to convert)"
            )

    def tensor(self, path: str, t: torch.Tensor) -> None:
        shape = tuple(t.shape)
        if isinstance(t, DTensor):
            mesh = t.device_mesh
            coord = mesh.get_coordinate()
            if coord is None:
                return  # this rank is not in the DTensor's mesh
            self.record(path, t.dtype, shape)
            local = t.to_local()
            for offsets, sizes, where in dtensor_boxes(
                shape, tuple(mesh.mesh.shape), coord, t.placements, path
            ):
                self.box(path, local[where] if where else local, offsets, sizes, shape)
            return
        self.record(path, t.dtype, shape)
        self.box(path, t, (0,) * len(shape), shape, shape)

    def box(
        self,
        path: str,
        dest: torch.Tensor,
        offsets: tuple[int, ...],
        sizes: tuple[int, ...],
        shape: tuple[int, ...],
    ) -> None:
        self.record(path, dest.dtype, shape)
        if tuple(dest.shape) != sizes:
            raise FormatError(
                f"tensor {path!r}: local tensor shape {list(dest.shape)} != its box {list(sizes)}"
            )
        stored = getattr(torch, self.m.tensors[path].dtype)
        direct = dest.device.type == "cpu" and dest.is_contiguous() and dest.dtype == stored
        staging = dest.detach() if direct else torch.empty(sizes, dtype=stored)
        self.plan.targets.append(Target(path, staging, offsets, sizes))
        if not direct:
            self.plan.finalizers.insert(0, lambda: _discard(dest.copy_(staging)))

    def per_rank(self, path: str, current: torch.Tensor, put: Callable[[torch.Tensor], None]) -> None:
        rec = self.m.tensors.get(path)
        if rec is None:
            raise NotFoundError(f"{path!r}: RNG state not in checkpoint step {self.m.step}")
        if len(rec.shape) != 2 or rec.dtype != "uint8":
            raise FormatError(f"{path!r}: not a per-rank state tensor")
        row = self.rank % rec.shape[0]
        dest = torch.empty((1, rec.shape[1]), dtype=torch.uint8)
        self.plan.targets.append(Target(path, dest, (row, 0), (1, rec.shape[1])))
        if rec.shape[1] != current.numel():
            raise FormatError(
                f"{path!r}: stored RNG state has {rec.shape[1]} bytes, this one {current.numel()}"
            )
        self.plan.finalizers.append(lambda: put(dest.reshape(-1).clone()))

    # -- optimizers ----------------------------------------------------------------------------
    def optimizer(self, path: str, opt: torch.optim.Optimizer) -> None:
        groups_path = join(path, "param_groups")
        if groups_path not in self.m.values:
            raise NotFoundError(f"{groups_path}: not in checkpoint step {self.m.step}")
        saved_groups = from_json(self.m.values[groups_path], groups_path)
        names = optimizer_param_names(opt, self.fqns)
        if len(saved_groups) != len(names):
            raise FormatError(
                f"{path}: checkpoint has {len(saved_groups)} param groups, optimizer {len(names)}"
            )
        params = [p for g in opt.param_groups for p in g["params"]]
        index = {fqn: i for i, fqn in enumerate(n for group in names for n in group)}
        groups = []
        for gi, (saved, current) in enumerate(zip(saved_groups, names, strict=True)):
            if sorted(saved["params"]) != sorted(current):
                raise FormatError(f"{path}: param group {gi} holds other parameters than the checkpoint's")
            groups.append({**saved, "params": [index[n] for n in current]})
        state: dict[int, dict[str, Any]] = {}
        for fqn, i in index.items():
            entry = self.optimizer_entry(
                join(join(path, "state"), fqn), params[i], opt.state.get(params[i], {})
            )
            if entry:
                state[i] = entry
        self.plan.finalizers.append(lambda: opt.load_state_dict({"state": state, "param_groups": groups}))

    def optimizer_entry(self, prefix: str, param: torch.Tensor, current: Mapping[str, Any]) -> dict[str, Any]:
        entry: dict[str, Any] = {}
        for name in self.names_under(prefix):
            key = name[len(prefix) + 1 :].replace("~1", "/").replace("~0", "~")
            if name in self.m.values:
                entry[key] = from_json(self.m.values[name], name)
                continue
            rec = self.m.tensors[name]
            target = current.get(key)
            if not isinstance(target, torch.Tensor):
                dtype = getattr(torch, rec.dtype)
                if tuple(rec.shape) == tuple(param.shape) and rec.shape:
                    target = torch.zeros_like(param, dtype=dtype)  # same placement as the param
                else:
                    target = torch.zeros(rec.shape, dtype=dtype)
            self.tensor(name, target)
            entry[key] = target
        return entry

    def names_under(self, prefix: str) -> list[str]:
        start = prefix + "/"
        found = [n for n in self.m.tensors if n.startswith(start) and "/" not in n[len(start) :]]
        found += [n for n in self.m.values if n.startswith(start) and "/" not in n[len(start) :]]
        return sorted(found)


def plan_load(
    manifest: Manifest,
    state: MutableMapping[str, Any],
    rank: int,
    world_size: int,
    *,
    cast: bool = False,
    allow_pickle: bool = False,
) -> LoadPlan:
    """Lists this rank's wanted boxes and the follow-up steps, validating names, dtypes and shapes."""
    if not isinstance(state, MutableMapping):
        raise TypeError(f"state must be a mutable mapping, got {type(state).__name__}")
    r = _Restorer(manifest, rank, world_size, cast, allow_pickle)
    r.fqns = param_fqns(state)
    r.mapping("", state)
    return r.plan


def itemsize_of(manifest: Manifest, name: str) -> int:
    return DTYPE_ITEMSIZE[manifest.tensors[name].dtype]


def _discard(_: object) -> None:
    """Drops a return value, so a call fits a Callable[..., None] slot."""
