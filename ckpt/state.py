"""What a rank saves: `plan_save` flattens a state into tensor shards and JSON values (no data copy).

Paths: nesting levels are joined with "/" (a module's own state-dict keys stay as they are, with
their dots: "model/layers.0.weight"); a "/" or "~" inside a key is escaped as "~1" / "~0" (as in JSON
Pointer). What is accepted, by type:
- torch.Tensor: a replicated tensor (same value on every rank), written once, by one rank;
- DTensor (Shard, Replicate and FSDP2-over-TP _StridedShard on any mesh): each distinct box written
  once, by one of its holders;
- LocalShard: this rank's explicitly placed piece of a larger tensor, always written by this rank;
- nn.Module: its state_dict(); torch.optim.Optimizer: its state keyed by parameter FQN
  ("<path>/state/<fqn>/<key>", the FQN taken from the modules in the same state) plus
  "<path>/param_groups" with FQNs in place of parameter indices, so it reshards with the params;
- torch.Generator and RNGState: per-rank state, stored as a (world_size, n) uint8 tensor, row = rank;
- any object with state_dict()/load_state_dict(): its state_dict();
- mappings with str keys, lists and tuples containing any of these; plain values (kedge.ckpt.values).
Anything else raises TypeError naming the key path (pickle only with allow_pickle=True).

Replicated boxes are balanced over their holders: boxes are taken largest first and each goes to the
holder with the fewest bytes so far (every rank computes the same answer, with no communication).
"""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from kedge.ckpt.manifest import DTYPE_ITEMSIZE, JSONValue
from kedge.ckpt.planner import split_box
from kedge.ckpt.values import is_plain, to_json
from torch.distributed.tensor import DTensor, Replicate, Shard

__all__ = [
    "LocalShard",
    "RNGState",
    "SavePlan",
    "TensorShard",
    "dtype_name",
    "escape_key",
    "param_fqns",
    "plan_save",
    "split_box",
]


@dataclass(slots=True)
class TensorShard:
    """One rank's local piece of one tensor; `write` is False where another rank writes this box."""

    name: str
    dtype: str
    global_shape: tuple[int, ...]
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    tensor: torch.Tensor
    write: bool


@dataclass(slots=True)
class SavePlan:
    """Everything one rank contributes to a checkpoint."""

    shards: list[TensorShard] = field(default_factory=list)
    values: dict[str, JSONValue] = field(default_factory=dict)
    optimizers: list[torch.optim.Optimizer] = field(default_factory=list)


@dataclass(slots=True)
class LocalShard:
    """A rank's piece of a larger tensor placed explicitly: `tensor` is the box at `offsets`."""

    tensor: torch.Tensor
    offsets: tuple[int, ...]
    global_shape: tuple[int, ...]


class RNGState:
    """The calling rank's RNG streams (Python `random`, torch CPU, current CUDA device), per rank."""

    def __init__(self) -> None:
        self.restored = False

    def parts(self) -> dict[str, tuple[Callable[[], torch.Tensor], Callable[[torch.Tensor], None]]]:
        parts: dict[str, tuple[Callable[[], torch.Tensor], Callable[[torch.Tensor], None]]] = {
            "python": (_python_rng_bytes, _set_python_rng),
            "torch": (torch.get_rng_state, torch.set_rng_state),
        }
        if torch.cuda.is_available():
            parts["cuda"] = (torch.cuda.get_rng_state, torch.cuda.set_rng_state)
        return parts


_PY_RNG = struct.Struct("<q625I?d")


def _python_rng_bytes() -> torch.Tensor:
    version, words, gauss = random.getstate()
    packed = _PY_RNG.pack(version, *words, gauss is not None, gauss or 0.0)
    return torch.frombuffer(bytearray(packed), dtype=torch.uint8)


def _set_python_rng(t: torch.Tensor) -> None:
    version, *rest = _PY_RNG.unpack(bytes(t.numpy().tobytes()))
    words, has_gauss, gauss = tuple(rest[:625]), rest[625], rest[626]
    random.setstate((version, words, gauss if has_gauss else None))


def dtype_name(dtype: torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPE_ITEMSIZE:
        raise TypeError(f"dtype {dtype} is not supported by the kedge format")
    return name


def escape_key(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def join(path: str, key: str | int) -> str:
    k = escape_key(str(key))
    return f"{path}/{k}" if path else k


def is_stateful(obj: Any) -> bool:
    return callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))


def param_fqns(state: Any) -> dict[int, str]:
    """id(parameter) -> fully qualified name, from every nn.Module found in state (first wins)."""
    fqns: dict[int, str] = {}
    for module in _modules(state):
        for name, p in module.named_parameters(remove_duplicate=False):
            fqns.setdefault(id(p), name)
    return fqns


def _modules(obj: Any) -> Iterator[torch.nn.Module]:
    if isinstance(obj, torch.nn.Module):
        yield obj
    elif isinstance(obj, Mapping):
        for v in obj.values():
            yield from _modules(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            yield from _modules(v)


def optimizer_param_names(opt: torch.optim.Optimizer, fqns: Mapping[int, str]) -> list[list[str]]:
    """Per param group, the FQN of each parameter (`param<i>` for one no module in state owns)."""
    names, index = [], 0
    for group in opt.param_groups:
        group_names = []
        for p in group["params"]:
            group_names.append(fqns.get(id(p), f"param{index}"))
            index += 1
        names.append(group_names)
    return names


@dataclass(slots=True)
class _Box:
    """A tensor box and every global rank that holds a copy of it."""

    name: str
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    holders: tuple[int, ...]
    nbytes: int
    local: torch.Tensor | None = None  # this rank's tensor, if it is a holder
    dtype: str = ""
    global_shape: tuple[int, ...] = ()


class _Planner:
    def __init__(self, rank: int, world_size: int, allow_pickle: bool, fqns: Mapping[int, str]) -> None:
        self.rank, self.world_size, self.allow_pickle, self.fqns = rank, world_size, allow_pickle, fqns
        self.plan = SavePlan()
        self.boxes: list[_Box] = []

    def visit(self, path: str, obj: Any) -> None:
        if isinstance(obj, torch.Tensor):
            self.tensor(path, obj)
        elif isinstance(obj, LocalShard):
            self.local_shard(path, obj)
        elif isinstance(obj, torch.Generator):
            self.per_rank(path, obj.get_state())
        elif isinstance(obj, RNGState):
            for key, (get, _) in obj.parts().items():
                self.per_rank(join(path, key), get())
        elif isinstance(obj, torch.optim.Optimizer):
            self.optimizer(path, obj)
        elif isinstance(obj, torch.nn.Module):
            for key, value in obj.state_dict(keep_vars=False).items():
                self.visit(f"{path}/{key}" if path else key, value)
        elif is_plain(obj):
            self.plan.values[path] = to_json(obj, path)
        elif isinstance(obj, Mapping):
            self.mapping(path, obj)
        elif isinstance(obj, list | tuple):
            for i, v in enumerate(obj):
                self.visit(join(path, i), v)
        elif is_stateful(obj):
            self.visit(path, obj.state_dict())
        else:
            self.plan.values[path] = to_json(obj, path, allow_pickle=self.allow_pickle)

    def mapping(self, path: str, obj: Mapping[Any, Any]) -> None:
        for key, value in obj.items():
            if not isinstance(key, str):
                raise TypeError(f"cannot checkpoint {path or '<root>'}: key {key!r} is not a str")
            self.visit(join(path, key), value)

    def optimizer(self, path: str, opt: torch.optim.Optimizer) -> None:
        self.plan.optimizers.append(opt)
        names = optimizer_param_names(opt, self.fqns)
        groups = []
        for group, group_names in zip(opt.param_groups, names, strict=True):
            g = {k: v for k, v in group.items() if k != "params"}
            g["params"] = group_names
            groups.append(g)
        self.plan.values[join(path, "param_groups")] = to_json(groups, join(path, "param_groups"))
        flat = [n for group_names in names for n in group_names]
        params = [p for group in opt.param_groups for p in group["params"]]
        for p, fqn in zip(params, flat, strict=True):
            for key, value in opt.state.get(p, {}).items():
                self.visit(join(join(join(path, "state"), fqn), key), value)

    def tensor(self, path: str, t: torch.Tensor) -> None:
        if isinstance(t, DTensor):
            self.dtensor(path, t)
            return
        shape = tuple(t.shape)
        self.boxes.append(
            _Box(path, (0,) * len(shape), shape, tuple(range(self.world_size)), _nbytes(t, shape), t,
                 dtype_name(t.dtype), shape)
        )  # fmt: skip

    def dtensor(self, path: str, t: DTensor) -> None:
        mesh = t.device_mesh
        shape = tuple(t.shape)
        holders: dict[tuple[tuple[int, ...], tuple[int, ...]], list[int]] = {}
        mine_at: dict[tuple[tuple[int, ...], tuple[int, ...]], tuple[slice, ...]] = {}
        ranks = mesh.mesh.reshape(-1).tolist()
        for coord, global_rank in zip(_indices(tuple(mesh.mesh.shape)), ranks, strict=True):
            for offsets, sizes, local_slice in dtensor_boxes(
                shape, tuple(mesh.mesh.shape), coord, t.placements, path
            ):
                holders.setdefault((offsets, sizes), []).append(int(global_rank))
                if global_rank == self.rank:
                    mine_at[(offsets, sizes)] = local_slice
        local = t.to_local()
        for (offsets, sizes), hs in holders.items():
            where = mine_at.get((offsets, sizes))
            mine = (
                None
                if where is None
                else (local if len(where) == 0 or _whole(local, where) else local[where])
            )
            self.boxes.append(
                _Box(path, offsets, sizes, tuple(hs), _nbytes(t, sizes), mine, dtype_name(t.dtype), shape)
            )

    def local_shard(self, path: str, s: LocalShard) -> None:
        sizes = tuple(s.tensor.shape)
        self.boxes.append(
            _Box(path, tuple(s.offsets), sizes, (self.rank,), _nbytes(s.tensor, sizes), s.tensor,
                 dtype_name(s.tensor.dtype), tuple(s.global_shape))
        )  # fmt: skip

    def per_rank(self, path: str, state: torch.Tensor) -> None:
        row = state.reshape(1, -1)
        shape = (self.world_size, row.shape[1])
        self.boxes.append(
            _Box(path, (self.rank, 0), tuple(row.shape), (self.rank,), row.numel(), row, "uint8", shape)
        )

    def finish(self) -> SavePlan:
        load = [0] * self.world_size
        singles = [b for b in self.boxes if len(b.holders) == 1]
        shared = [b for b in self.boxes if len(b.holders) > 1]
        for b in singles:
            load[b.holders[0] % self.world_size] += b.nbytes
        shared.sort(key=lambda b: (-b.nbytes, b.name, b.offsets))
        for b in singles + shared:
            writer = (
                min(b.holders, key=lambda r: (load[r % self.world_size], r)) if len(b.holders) > 1 else None
            )
            if writer is not None:
                load[writer % self.world_size] += b.nbytes
            else:
                writer = b.holders[0]
            if b.local is None:
                continue
            empty = math.prod(b.sizes) == 0
            if empty and math.prod(b.global_shape) != 0:
                continue  # an empty piece of a non-empty tensor adds nothing
            self.plan.shards.append(
                TensorShard(b.name, b.dtype, b.global_shape, b.offsets, b.sizes, b.local, writer == self.rank)
            )
        return self.plan


def _whole(t: torch.Tensor, where: tuple[slice, ...]) -> bool:
    return all(sl.start == 0 and sl.stop == n for sl, n in zip(where, t.shape, strict=True))


def _nbytes(t: torch.Tensor, sizes: Sequence[int]) -> int:
    return math.prod(sizes) * t.element_size()


def _indices(shape: Sequence[int]) -> list[tuple[int, ...]]:
    out: list[tuple[int, ...]] = [()]
    for n in shape:
        out = [(*p, i) for p in out for i in range(n)]
    return out


def _dim_indices(
    global_shape: tuple[int, ...],
    mesh_shape: tuple[int, ...],
    coord: Sequence[int],
    placements: Any,
    path: str,
) -> list[list[int]]:
    """Per tensor dim, the global indices held at mesh coordinate `coord`, in local order.

    Placements apply left to right over mesh dims, as in torch: Shard splits like torch.chunk;
    _StridedShard (FSDP2 over TP) asks torch for its index list.
    """
    idx = [list(range(n)) for n in global_shape]
    for mesh_dim, placement in enumerate(placements):
        k, c = mesh_shape[mesh_dim], coord[mesh_dim]
        if type(placement) is Shard:
            cur = idx[placement.dim]
            chunk = -(-len(cur) // k) if cur else 0
            start = min(c * chunk, len(cur))
            idx[placement.dim] = cur[start : min(start + chunk, len(cur))]
        elif type(placement).__name__ == "_StridedShard":
            from torch.distributed.tensor.placement_types import _StridedShardOffsetMode

            cur = idx[placement.dim]
            size, offsets = placement._local_shard_size_and_offset(
                curr_local_size=len(cur), num_chunks=k, rank=c, offset_mode=_StridedShardOffsetMode.ALL
            )
            idx[placement.dim] = [cur[i] for i in list(offsets)[:size]] if size else []
        elif not isinstance(placement, Replicate):
            raise TypeError(
                f"cannot checkpoint {path}: DTensor placement {placement!r} is not supported "
                "(Shard, _StridedShard and Replicate are; redistribute Partial first)"
            )
    return idx


def _runs(indices: list[int]) -> list[tuple[int, int, int]]:
    """Maximal runs of consecutive global indices: (global_start, length, local_start)."""
    runs: list[tuple[int, int, int]] = []
    for local, g in enumerate(indices):
        if runs and runs[-1][0] + runs[-1][1] == g:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1, runs[-1][2])
        else:
            runs.append((g, 1, local))
    return runs


DTensorPiece = tuple[tuple[int, ...], tuple[int, ...], tuple[slice, ...]]


def dtensor_boxes(
    global_shape: tuple[int, ...],
    mesh_shape: tuple[int, ...],
    coord: Sequence[int],
    placements: Any,
    path: str,
) -> list[DTensorPiece]:
    """The global boxes held at `coord`, each with the slice of the local tensor that holds it.

    One box for Shard/Replicate layouts; several when _StridedShard interleaves rows.
    """
    idx = _dim_indices(global_shape, mesh_shape, coord, placements, path)
    if any(not i for i in idx) and global_shape:
        sizes = tuple(len(i) for i in idx)
        offsets = tuple(i[0] if i else 0 for i in idx)
        return [(offsets, sizes, tuple(slice(0, n) for n in sizes))]
    pieces: list[DTensorPiece] = [((), (), ())]
    for dim_idx in idx:
        pieces = [
            ((*o, g), (*s, n), (*sl, slice(loc, loc + n)))
            for o, s, sl in pieces
            for g, n, loc in _runs(dim_idx)
        ]
    return pieces


def dtensor_box(
    global_shape: tuple[int, ...],
    mesh_shape: tuple[int, ...],
    coord: Sequence[int],
    placements: Any,
    path: str,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The single global box held at `coord` (Shard/Replicate layouts); see dtensor_boxes."""
    pieces = dtensor_boxes(global_shape, mesh_shape, coord, placements, path)
    if len(pieces) != 1:
        raise TypeError(f"{path}: this layout holds {len(pieces)} separate boxes per rank")
    return pieces[0][0], pieces[0][1]


def plan_save(
    state: Mapping[str, Any], rank: int, world_size: int, *, allow_pickle: bool = False
) -> SavePlan:
    """Flattens state into this rank's shards (no data copy) and JSON values; see the module doc."""
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a mapping of names to objects, got {type(state).__name__}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world_size {world_size}")
    planner = _Planner(rank, world_size, allow_pickle, param_fqns(state))
    planner.mapping("", state)
    return planner.finish()
