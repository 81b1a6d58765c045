"""Sharded checkpoints of a ZeRO model: one file per rank, loadable on another world size.

``save_sharded(path, model, optimizer)`` writes, on every rank, that rank's
master shards and optimizer state (``rank-R-of-N.pt``); after a barrier rank 0
writes ``layout.json`` (the world size and each unit's parameter names and
shapes), which marks the checkpoint complete. ``load_sharded`` reads the
layout, checks it against the model and, for each unit, reads from the old
files only the ranges that make up this rank's new shard: the flat layout of
a unit depends only on its parameters, not on the world size or the stage,
so a checkpoint of 2 ranks at stage 3 loads on 3 ranks at stage 1 or on one.
"""
from __future__ import annotations

import json
import os

import torch

from shoal.exceptions import InvalidInputError

_LAYOUT = "layout.json"
_FORMAT = 1


def _rank_file(path: str, rank: int, world: int) -> str:
    return os.path.join(path, f"rank-{rank}-of-{world}.pt")


def _layout(model) -> list:
    return [{"name": u.name, "params": u.names, "shapes": [list(s) for s in u.shapes],
             "numel": u.numel} for u in model.units]


def _check_model(model, what: str):
    from shoal.train.parallel.zero import ShardedModel
    if not isinstance(model, ShardedModel):
        raise InvalidInputError(f"{what} takes a ZeRO/FSDP-wrapped model (ShardedModel), got "
                                f"{type(model).__name__}; wrap it with ZeRO(stage=...).prepare "
                                "or prepare_model under a ZeRO strategy")


def save_sharded(path, model, optimizer=None) -> None:
    """Write this rank's shards (and ``optimizer``'s state for them) under directory ``path``.

    Collective: every rank of the model's group calls it with the same path
    (a directory every rank can write, e.g. shared storage).
    """
    _check_model(model, "save_sharded")
    path = os.fspath(path)
    comm = model.comm
    os.makedirs(path, exist_ok=True)
    units = model.units
    state = {"format": _FORMAT, "world_size": comm.world_size, "rank": comm.rank,
             "shards": [u.master.detach().to("cpu", copy=True) for u in units],
             "rest": {k: v.detach().cpu() for k, v in model.module.state_dict().items()}
             if comm.rank == 0 else {}}
    if optimizer is not None:
        state["optim"] = [{k: (v.detach().to("cpu", copy=True) if torch.is_tensor(v) else v)
                           for k, v in optimizer.state.get(u.master, {}).items()} for u in units]
        state["param_groups"] = [{k: v for k, v in g.items() if k != "params"}
                                 for g in optimizer.param_groups]
    final = _rank_file(path, comm.rank, comm.world_size)
    torch.save(state, final + ".tmp")
    os.replace(final + ".tmp", final)
    comm.barrier()
    if comm.rank == 0:
        layout = {"format": _FORMAT, "world_size": comm.world_size, "units": _layout(model),
                  "optimizer": optimizer is not None}
        with open(os.path.join(path, _LAYOUT + ".tmp"), "w") as f:
            json.dump(layout, f)
        os.replace(os.path.join(path, _LAYOUT + ".tmp"), os.path.join(path, _LAYOUT))
    comm.barrier()


def load_sharded(path, model, optimizer=None) -> None:
    """Load a checkpoint written by ``save_sharded`` (on any world size) into ``model``.

    With ``optimizer`` (built over ``model.parameters()``), its state for
    every shard is restored too. Collective: every rank calls it.

    Raises:
        InvalidInputError: ``path`` holds no complete sharded checkpoint, or
            its layout (units, parameter names or shapes) is not this model's;
            the message names the first difference.
    """
    _check_model(model, "load_sharded")
    path = os.fspath(path)
    try:
        with open(os.path.join(path, _LAYOUT)) as f:
            layout = json.load(f)
    except FileNotFoundError:
        raise InvalidInputError(f"{path!r} holds no complete sharded checkpoint (no {_LAYOUT}); "
                                "pass the directory save_sharded wrote") from None
    if layout.get("format") != _FORMAT:
        raise InvalidInputError(f"sharded checkpoint {path!r} has format {layout.get('format')!r}; "
                                f"this shoal reads format {_FORMAT}")
    _check_layout(path, layout["units"], _layout(model))
    if optimizer is not None and not layout["optimizer"]:
        raise InvalidInputError(f"sharded checkpoint {path!r} was saved without optimizer state; "
                                "call load_sharded without optimizer=")
    old_world = int(layout["world_size"])
    files: dict = {}

    def old(q: int) -> dict:
        if q not in files:
            f = _rank_file(path, q, old_world)
            if not os.path.exists(f):
                raise InvalidInputError(f"sharded checkpoint {path!r} lacks {os.path.basename(f)} "
                                        f"(it was saved on {old_world} ranks)")
            files[q] = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
        return files[q]

    new_state = {}
    for i, u in enumerate(model.units):
        old_shard = -(-u.numel // old_world)
        pieces = _pieces(u.lo, min(u.hi, u.numel), old_shard)

        def gather(get, dtype, u=u, pieces=pieces):
            out = torch.zeros(u.shard_numel, dtype=dtype)
            for q, a, b, dst in pieces:
                out[dst:dst + b - a] = get(old(q))[a:b]
            return out
        model._set_shard(u, gather(lambda st, i=i: st["shards"][i], torch.float32))
        if optimizer is not None:
            st0 = old(0)["optim"][i]
            new_state[i] = {k: (gather(lambda st, i=i, k=k: st["optim"][i][k], v.dtype)
                                if torch.is_tensor(v) and v.dim() == 1 and v.numel() == old_shard
                                else v.clone() if torch.is_tensor(v) else v)
                            for k, v in st0.items()}
    model.module.load_state_dict(old(0)["rest"], strict=False)
    if optimizer is not None:
        _load_optimizer(optimizer, model, new_state, old(0)["param_groups"])
    model.comm.barrier()


def _pieces(lo: int, hi: int, old_shard: int) -> list:
    """(old rank, start, end within its shard, offset in the new shard) covering [lo, hi)."""
    out, pos = [], lo
    while pos < hi:
        q = pos // old_shard
        end = min(hi, (q + 1) * old_shard)
        out.append((q, pos - q * old_shard, end - q * old_shard, pos - lo))
        pos = end
    return out


def _check_layout(path: str, saved: list, current: list) -> None:
    if len(saved) != len(current):
        raise InvalidInputError(
            f"sharded checkpoint {path!r} has {len(saved)} units ({[u['name'] for u in saved]}); "
            f"this model has {len(current)} ({[u['name'] for u in current]}): it is another model "
            "or another units= setting")
    for s, c in zip(saved, current):
        if s["params"] != c["params"]:
            diff = sorted(set(s["params"]) ^ set(c["params"]))[:3] or s["params"][:3]
            raise InvalidInputError(
                f"sharded checkpoint {path!r}: unit {c['name']!r} holds other parameters than "
                f"the model's (first differences: {diff}); the checkpoint is of another model")
        for name, a, b in zip(c["params"], s["shapes"], c["shapes"]):
            if list(a) != list(b):
                raise InvalidInputError(
                    f"sharded checkpoint {path!r}: parameter {name!r} has shape {tuple(a)} there "
                    f"and {tuple(b)} in this model")


def _load_optimizer(optimizer, model, new_state: dict, groups: list) -> None:
    sd = optimizer.state_dict()
    unit_of = {id(u.master): i for i, u in enumerate(model.units)}
    index = 0
    state = {}
    for g in optimizer.param_groups:
        for p in g["params"]:
            i = unit_of.get(id(p))
            if i is not None and new_state.get(i):
                state[index] = new_state[i]
            index += 1
    sd["state"] = state
    if len(groups) == len(sd["param_groups"]):
        for g, saved in zip(sd["param_groups"], groups):
            g.update({k: v for k, v in saved.items() if k != "params"})
    optimizer.load_state_dict(sd)
