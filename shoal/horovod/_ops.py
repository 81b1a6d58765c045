"""Horovod's collective functions on a shoal communicator.

Ops return new tensors (the ``_`` variants work in place), async ops return
integer handles for ``synchronize``/``poll``, exactly as horovod.torch.
Every rank must issue collectives in the same order (Horovod matches them by
name; shoal's communicator by order, which a script that runs the same code
on every rank gives for free).
"""
from __future__ import annotations

import itertools
import os
import threading

import torch

from shoal.horovod import _join
from shoal.horovod.compression import Compression

Average, Sum, Adasum, Min, Max, Product = "avg", "sum", "adasum", "min", "max", "prod"
_OPS = {Average, Sum, Min, Max, Product}


class _World:
    comm = None           # a shoal communicator, or None for a single process
    rank = 0
    size = 1
    local_rank = 0
    local_size = 1
    cross_rank = 0
    cross_size = 1
    owns_comm = False
    rounds = 0            # descriptor exchanges so far (see _join)


_world: _World | None = None
_lock = threading.Lock()
_handles: dict = {}
_next_handle = itertools.count(1)


def init(comm=None, process_sets=None) -> None:
    """Join the job's group (idempotent).

    In a script started by ``shoal launch`` (or torchrun) the group comes from
    the environment; inside a shoal.train loop it is the gang's communicator;
    otherwise this process is a world of one. ``comm`` passes a communicator
    explicitly.
    """
    global _world
    with _lock:
        if _world is not None:
            return
        w = _World()
        if comm is None:
            from shoal.train.context import current_session
            session = current_session(required=False)
            if session is not None:
                comm = session.comm
                ctx = session.context
                w.local_rank, w.local_size = ctx.local_rank, ctx.local_world_size
                w.cross_rank = ctx.node_rank
        else:
            env = os.environ
            w.local_rank = int(env.get("SHOAL_LOCAL_RANK", env.get("LOCAL_RANK", 0)))
            w.local_size = int(env.get("SHOAL_LOCAL_WORLD_SIZE",
                                       env.get("LOCAL_WORLD_SIZE", comm.world_size)))
            w.cross_rank = int(env.get("SHOAL_NODE_RANK", env.get("GROUP_RANK", 0)))
        if comm is not None:
            w.comm, w.rank, w.size = comm, comm.rank, comm.world_size
            w.local_size = w.local_size or w.size
            w.cross_size = max(1, w.size // max(1, w.local_size))
        _world = w


def shutdown() -> None:
    """Leave the group; ``init`` may be called again."""
    global _world
    with _lock:
        _world = None
        _handles.clear()


def is_initialized() -> bool:
    return _world is not None


def _w() -> _World:
    if _world is None:
        raise ValueError("Horovod has not been initialized; use hvd.init().")
    return _world


def rank() -> int:
    return _w().rank


def size() -> int:
    return _w().size


def local_rank() -> int:
    return _w().local_rank


def local_size() -> int:
    return _w().local_size


def cross_rank() -> int:
    return _w().cross_rank


def cross_size() -> int:
    return _w().cross_size


def mpi_threads_supported() -> bool:
    return False


# ------------------------------------------------------------------ handles
class _Done:
    def __init__(self, value=None):
        self.value = value

    def wait(self, timeout=None):
        return self.value

    def is_completed(self) -> bool:
        return True


def _register(work, finish) -> int:
    h = next(_next_handle)
    _handles[h] = (work, finish)
    return h


def synchronize(handle: int):
    """Wait for an async op; returns its output tensor."""
    if handle not in _handles:
        raise ValueError(f"unknown or already synchronized Horovod handle {handle!r}")
    work, finish = _handles.pop(handle)
    result = work.wait()
    return finish(result)


def poll(handle: int) -> bool:
    """True if the async op of ``handle`` is done (``synchronize`` will not block)."""
    if handle not in _handles:
        raise ValueError(f"unknown or already synchronized Horovod handle {handle!r}")
    return _handles[handle][0].is_completed()


def _check_op(op, average) -> str:
    if average is not None:
        if op is not None:
            raise ValueError("The op parameter supersedes average. Please provide only one of them.")
        op = Average if average else Sum
    op = Average if op is None else op
    if op == Adasum:
        raise NotImplementedError("Adasum is not supported by shoal.horovod; use hvd.Average "
                                  "or hvd.Sum")
    if op not in _OPS:
        raise ValueError(f"unknown reduce op {op!r}; use hvd.Average, Sum, Min, Max or Product")
    return op


# ------------------------------------------------------------------ allreduce
def allreduce_async_(tensor, average=None, name=None, op=None, prescale_factor=1.0,
                     postscale_factor=1.0, process_set=None) -> int:
    """Start an in-place allreduce of ``tensor``; returns a handle."""
    op = _check_op(op, average)
    w = _w()
    if w.comm is None:
        if prescale_factor != 1.0 or postscale_factor != 1.0:
            tensor.mul_(prescale_factor * postscale_factor)
        return _register(_Done(tensor), lambda r: r)
    _join.announce(w, _join.ALLREDUCE, (tensor,), op)
    work = w.comm.allreduce(tensor, op=op, async_op=True, prescale=prescale_factor,
                            postscale=postscale_factor)
    return _register(work, lambda r: tensor)


def allreduce_async(tensor, average=None, name=None, op=None, prescale_factor=1.0,
                    postscale_factor=1.0, process_set=None) -> int:
    """Start an allreduce into a new tensor; returns a handle."""
    return allreduce_async_(tensor.detach().clone(), average, name, op, prescale_factor,
                            postscale_factor, process_set)


def allreduce_(tensor, average=None, name=None, op=None, prescale_factor=1.0,
               postscale_factor=1.0, process_set=None):
    return synchronize(allreduce_async_(tensor, average, name, op, prescale_factor,
                                        postscale_factor))


class _AllreduceFn(torch.autograd.Function):
    """allreduce is differentiable: the gradient of an allreduce is an allreduce."""

    @staticmethod
    def forward(ctx, tensor, op, prescale, postscale):
        ctx.op, ctx.scale = op, (prescale, postscale)
        return synchronize(allreduce_async(tensor, op=op, prescale_factor=prescale,
                                           postscale_factor=postscale))

    @staticmethod
    def backward(ctx, grad):
        return (synchronize(allreduce_async(grad.contiguous(), op=ctx.op,
                                            prescale_factor=ctx.scale[0],
                                            postscale_factor=ctx.scale[1])), None, None, None)


def allreduce(tensor, average=None, name=None, compression=Compression.none, op=None,
              prescale_factor=1.0, postscale_factor=1.0, process_set=None):
    """The reduction of ``tensor`` over all ranks (a new tensor; default op: Average)."""
    op = _check_op(op, average)
    compressed, ctx = compression.compress(tensor)
    if op in (Average, Sum) and compressed.requires_grad:
        out = _AllreduceFn.apply(compressed, op, prescale_factor, postscale_factor)
    else:
        out = synchronize(allreduce_async(compressed, op=op, prescale_factor=prescale_factor,
                                          postscale_factor=postscale_factor))
    return compression.decompress(out, ctx)


def grouped_allreduce_async_(tensors, average=None, name=None, op=None, prescale_factor=1.0,
                             postscale_factor=1.0, process_set=None) -> int:
    op = _check_op(op, average)
    tensors = list(tensors)
    w = _w()
    if w.comm is None:
        for t in tensors:
            t.mul_(prescale_factor * postscale_factor)
        return _register(_Done(tensors), lambda r: r)
    _join.announce(w, _join.GROUPED_ALLREDUCE, tensors, op)
    work = w.comm.grouped_allreduce(tensors, op=op, async_op=True, prescale=prescale_factor,
                                    postscale=postscale_factor)
    return _register(work, lambda r: tensors)


def grouped_allreduce_async(tensors, average=None, name=None, op=None, prescale_factor=1.0,
                            postscale_factor=1.0, process_set=None) -> int:
    return grouped_allreduce_async_([t.detach().clone() for t in tensors], average, name, op,
                                    prescale_factor, postscale_factor)


def grouped_allreduce_(tensors, average=None, name=None, op=None, prescale_factor=1.0,
                       postscale_factor=1.0, process_set=None):
    return synchronize(grouped_allreduce_async_(tensors, average, name, op, prescale_factor,
                                                postscale_factor))


def grouped_allreduce(tensors, average=None, name=None, compression=Compression.none, op=None,
                      prescale_factor=1.0, postscale_factor=1.0, process_set=None):
    """Allreduce a list of tensors as one fused operation; returns new tensors."""
    pairs = [compression.compress(t) for t in tensors]
    outs = synchronize(grouped_allreduce_async([p[0] for p in pairs], average, name, op,
                                               prescale_factor, postscale_factor))
    return [compression.decompress(o, c) for o, (_, c) in zip(outs, pairs)]


# ------------------------------------------------------------------ others
def allgather_async(tensor, name=None, process_set=None) -> int:
    w = _w()
    if w.comm is None:
        return _register(_Done([tensor.detach().clone()]), lambda parts: torch.cat(parts))
    t = tensor.detach().contiguous()
    if t.dim() == 0:
        raise ValueError("hvd.allgather needs a tensor of at least one dimension (rows are "
                         "concatenated along dimension 0); reshape a scalar with t.reshape(1)")
    _join.announce(w, _join.ALLGATHER, (t,))
    work = w.comm.allgather(t, async_op=True)
    return _register(work, lambda parts: torch.cat([torch.as_tensor(p) for p in parts]))


def allgather(tensor, name=None, process_set=None):
    """Every rank's ``tensor`` concatenated along dimension 0 (first dims may differ)."""
    return synchronize(allgather_async(tensor, name))


def broadcast_async_(tensor, root_rank, name=None, process_set=None) -> int:
    w = _w()
    if not 0 <= root_rank < w.size:
        raise ValueError(f"root_rank {root_rank} is not a rank of this job (0..{w.size - 1})")
    if w.comm is None:
        return _register(_Done(tensor), lambda r: r)
    _join.announce(w, _join.BROADCAST, (tensor,))
    work = w.comm.broadcast(tensor, src=root_rank, async_op=True)
    return _register(work, lambda r: tensor)


def broadcast_async(tensor, root_rank, name=None, process_set=None) -> int:
    return broadcast_async_(tensor.detach().clone(), root_rank, name)


def broadcast_(tensor, root_rank, name=None, process_set=None):
    """Copy rank ``root_rank``'s ``tensor`` into ``tensor`` on every rank."""
    return synchronize(broadcast_async_(tensor, root_rank, name))


def broadcast(tensor, root_rank, name=None, process_set=None):
    """Rank ``root_rank``'s ``tensor`` on every rank (a new tensor)."""
    return synchronize(broadcast_async(tensor, root_rank, name))


def alltoall_async(tensor, splits=None, name=None, process_set=None) -> int:
    w = _w()
    n = tensor.shape[0]
    if splits is None:
        if n % w.size:
            raise ValueError(f"alltoall without splits needs the first dimension ({n}) to be "
                             f"divisible by the number of ranks ({w.size})")
        send = [n // w.size] * w.size
    else:
        send = [int(s) for s in torch.as_tensor(splits).reshape(-1).tolist()]
        if len(send) != w.size or sum(send) != n or min(send) < 0:
            raise ValueError(f"splits must hold {w.size} non-negative counts summing to the "
                             f"first dimension {n}, got {send}")
    if w.comm is None:
        return _register(_Done(None),
                         lambda _: (tensor.detach().clone(), torch.tensor(send, dtype=torch.int32)))
    _join.announce(w, _join.ALLTOALL, (tensor,))
    counts = torch.tensor(send, dtype=torch.int64)
    recv = w.comm.alltoall(counts.clone())          # one count to and from every rank
    work = w.comm.alltoall(tensor.detach().contiguous(), async_op=True, send_splits=send)
    recv_t = torch.as_tensor(recv).to(torch.int32)
    return _register(work, lambda out: (torch.as_tensor(out), recv_t))


def alltoall(tensor, splits=None, name=None, process_set=None):
    """Rows ``splits[q]`` of ``tensor`` go to rank q; returns (received rows, received splits)."""
    return synchronize(alltoall_async(tensor, splits, name))


def reducescatter_async(tensor, name=None, op=Average, process_set=None) -> int:
    op = _check_op(op, None)
    w = _w()
    if w.comm is None:
        return _register(_Done(tensor.detach().clone()), lambda r: r)
    _join.announce(w, _join.REDUCESCATTER, (tensor,), op)
    work = w.comm.reduce_scatter(tensor.detach().contiguous().clone(), op=op, async_op=True)
    return _register(work, lambda out: torch.as_tensor(out))


def reducescatter(tensor, name=None, compression=Compression.none, op=Average, process_set=None):
    """Reduce ``tensor`` over all ranks; this rank gets its part along dimension 0."""
    compressed, ctx = compression.compress(tensor)
    return compression.decompress(synchronize(reducescatter_async(compressed, name, op)), ctx)


def barrier(process_set=None) -> None:
    w = _w()
    if w.comm is not None:
        _join.announce(w, _join.BARRIER)
        w.comm.barrier()


def join(device=-1) -> int:
    """Signal that this rank has no more data; returns the rank that joined last.

    Until every rank has joined, this rank keeps taking part in the
    collectives the others still issue, as in Horovod: it contributes zeros to
    allreduces (Average still divides by ``size()``) and zero rows to
    allgathers; broadcast, alltoall and reducescatter raise on the ranks that
    issue them meanwhile. This is how ranks with different numbers of batches
    train together: each calls ``join()`` after its last batch.
    """
    w = _w()
    if w.comm is None:
        return 0
    return _join.join(w)


def broadcast_object(obj, root_rank=0, name=None, process_set=None):
    """Rank ``root_rank``'s picklable ``obj`` on every rank."""
    w = _w()
    if w.comm is None:
        return obj
    if not 0 <= root_rank < w.size:
        raise ValueError(f"root_rank {root_rank} is not a rank of this job (0..{w.size - 1})")
    _join.announce(w, _join.BROADCAST_OBJECT)
    return w.comm.broadcast_object(obj, src=root_rank)


def allgather_object(obj, name=None, process_set=None) -> list:
    """Every rank's picklable ``obj``, in rank order."""
    w = _w()
    if w.comm is None:
        return [obj]
    _join.announce(w, _join.ALLGATHER_OBJECT)
    return w.comm.allgather_object(obj)
