"""``hvd.join()`` with Horovod's semantics, on the public Communicator API.

A rank that has run out of data calls ``join()`` and keeps taking part in
the collectives the other ranks still issue, until every rank has joined:

- allreduce (single or grouped): the joined rank contributes zeros; Average
  still divides by ``size()`` (Horovod applies 1/size as a postscale when the
  op is enqueued, whoever has joined);
- allgather: the joined rank contributes zero rows;
- barrier: the joined rank takes part;
- broadcast, alltoall, reducescatter (and broadcast_object): an error on the
  ranks that issue them while any rank has joined, as in Horovod.

join() returns the rank that joined last (among ranks that joined in the
same round, the highest rank).

shoal matches collectives by order, so a joined rank can only stand in for
an op it knows about. Every op of shoal.horovod is therefore announced first
by a small allgather of an int64 descriptor (op kind, reduce op, dtype,
shapes). A working rank issues it asynchronously right before the op (no
wait on the hot path); a joined rank loops on it: it learns the next op
from the working ranks' descriptors and issues the matching stand-in. Ops
that are errors under join wait for the descriptors first, so every working
rank raises before any data moves and the joined rank issues nothing.
"""
from __future__ import annotations

import numpy as np
import torch

from shoal.exceptions import CollectiveError

# descriptor kinds
JOIN, ALLREDUCE, GROUPED_ALLREDUCE, ALLGATHER, ALLGATHER_OBJECT, BARRIER, BROADCAST, \
    BROADCAST_OBJECT, ALLTOALL, REDUCESCATTER = range(10)
_NAMES = {BROADCAST: "broadcast", BROADCAST_OBJECT: "broadcast_object", ALLTOALL: "alltoall",
          REDUCESCATTER: "reducescatter"}
_UNSUPPORTED = frozenset(_NAMES)
_ROPS = ("sum", "avg", "min", "max", "prod")
_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8,
           torch.uint8, torch.int16, torch.int32, torch.int64, torch.bool)
_DTYPE_CODE = {d: i for i, d in enumerate(_DTYPES)}


def _shapes_code(tensors) -> list:
    out = [len(tensors)]
    for t in tensors:
        if t.dtype not in _DTYPE_CODE:
            raise TypeError(f"shoal.horovod cannot reduce tensors of dtype {t.dtype}; use one of "
                            f"{', '.join(map(str, _DTYPES))}")
        out += [_DTYPE_CODE[t.dtype], int(t.device.type == "cuda"), t.dim(), *t.shape]
    return out


def _shapes_decode(code, at: int):
    n, at = int(code[at]), at + 1
    specs = []
    for _ in range(n):
        dtype, cuda, ndim = _DTYPES[int(code[at])], int(code[at + 1]), int(code[at + 2])
        specs.append((dtype, tuple(int(s) for s in code[at + 3:at + 3 + ndim]),
                      "cuda" if cuda else "cpu"))
        at += 3 + ndim
    return specs


def announce(world, kind: int, tensors=(), op: str = "sum"):
    """Publish this working rank's next op; returns the descriptor exchange's Work.

    Ops that are errors under join wait for it and raise on every working
    rank if any rank has joined.
    """
    desc = np.array([kind, _ROPS.index(op) if op in _ROPS else 0, *_shapes_code(tensors)],
                    np.int64)
    work = world.comm.allgather(desc, async_op=True)
    world.rounds += 1
    if kind in _UNSUPPORTED:
        descs = work.wait()
        joined = [r for r, d in enumerate(descs) if int(d[0]) == JOIN]
        if joined:
            raise CollectiveError(
                f"hvd.{_NAMES[kind]} is not supported while ranks {joined} have called "
                f"hvd.join() (as in Horovod); only allreduce, grouped_allreduce, allgather and "
                f"barrier run with joined ranks. Issue it after every rank has returned from "
                f"join().")
        kinds = {int(d[0]) for d in descs}
        if len(kinds) > 1:
            raise CollectiveError(f"mismatched Horovod operations across ranks: rank "
                                  f"{world.rank} issued {_NAMES[kind]}, the others' descriptors "
                                  f"were {[d.tolist() for d in descs]}")
    return work


def _stand_in(comm, desc) -> None:
    """Take part in the op that ``desc`` announces, contributing nothing."""
    kind, rop = int(desc[0]), _ROPS[int(desc[1])]
    specs = _shapes_decode(desc, 2)
    # the stand-ins live where the working ranks' tensors do (a GPU group may run on NCCL)
    if kind == ALLREDUCE:
        dtype, shape, device = specs[0]
        # async as the working ranks' op is, so that it takes the same (fusion) path
        comm.allreduce(torch.zeros(shape, dtype=dtype, device=device), op=rop,
                       async_op=True).wait()
    elif kind == GROUPED_ALLREDUCE:
        comm.grouped_allreduce([torch.zeros(s, dtype=d, device=dev) for d, s, dev in specs],
                               op=rop)
    elif kind == ALLGATHER:
        dtype, shape, device = specs[0]
        comm.allgather(torch.zeros((0, *shape[1:]), dtype=dtype, device=device))
    elif kind == ALLGATHER_OBJECT:
        comm.allgather_object(None)
    elif kind == BARRIER:
        comm.barrier()
    # broadcast, alltoall, reducescatter: the working ranks raised instead of issuing them


def join(world) -> int:
    """Stand in for the other ranks' ops until all have joined; the last rank to join."""
    joined_at = world.rounds
    comm = world.comm
    while True:
        descs = comm.allgather(np.array([JOIN, joined_at], np.int64))
        world.rounds += 1
        working = [d for d in descs if int(d[0]) != JOIN]
        if not working:
            break
        _stand_in(comm, working[0])
    rounds = [int(d[1]) for d in descs]
    return max(range(len(descs)), key=lambda r: (rounds[r], r))
