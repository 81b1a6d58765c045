"""Horovod's collective functions, run by the process set's engine (see _engine).

Ops return new tensors (the ``_`` variants work in place); async ops return
integer handles for ``synchronize``/``poll``, exactly as horovod.torch. Ops
are matched across ranks by name (unnamed ops by their position among the
unnamed ops of their process set), and checked: a mismatch raises the same
error on every rank and the next op runs normally.
"""
from __future__ import annotations

import torch

from shoal.horovod._engine import ALLGATHER, ALLREDUCE, ALLTOALL, BROADCAST, REDUCESCATTER
from shoal.horovod._requests import (  # noqa: F401 - the torch-free part of the API, re-exported
    Adasum, Average, Max, Min, Product, Sum, _check_op, _check_root, _now, _submit,
    allgather_object, barrier, broadcast_object, grouped_allreduce_async_, join, poll,
    synchronize)
from shoal.horovod._world import _w, engine_of, global_process_set
from shoal.horovod.compression import Compression


def _same(outs):
    return outs[0]


# ------------------------------------------------------------------ allreduce
def allreduce_async_(tensor, average=None, name=None, op=None, prescale_factor=1.0,
                     postscale_factor=1.0, process_set=global_process_set) -> int:
    """Start an in-place allreduce of ``tensor``; returns a handle for ``synchronize``."""
    op = _check_op(op, average)
    return _submit(ALLREDUCE, name, [tensor], _same, process_set, op, -1, prescale_factor,
                   postscale_factor)


def allreduce_async(tensor, average=None, name=None, op=None, prescale_factor=1.0,
                    postscale_factor=1.0, process_set=global_process_set) -> int:
    """Start an allreduce into a new tensor; returns a handle for ``synchronize``."""
    return allreduce_async_(tensor.detach().clone(), average, name, op, prescale_factor,
                            postscale_factor, process_set)


def allreduce_(tensor, average=None, name=None, op=None, prescale_factor=1.0,
               postscale_factor=1.0, process_set=global_process_set):
    """Allreduce ``tensor`` in place over the process set's ranks; returns ``tensor``."""
    return _now(allreduce_async_, tensor, average, name, op, prescale_factor,
                postscale_factor, process_set)


class _AllreduceFn(torch.autograd.Function):
    """allreduce is differentiable: the gradient of an allreduce is an allreduce."""

    @staticmethod
    def forward(ctx, tensor, op, prescale, postscale, name, process_set):
        ctx.args = (op, prescale, postscale, process_set)
        return _now(allreduce_async, tensor, op=op, name=name, prescale_factor=prescale,
                    postscale_factor=postscale, process_set=process_set)

    @staticmethod
    def backward(ctx, grad):
        op, pre, post, ps = ctx.args
        return (_now(allreduce_async, grad.contiguous(), op=op, prescale_factor=pre,
                     postscale_factor=post, process_set=ps),
                None, None, None, None, None)


def allreduce(tensor, average=None, name=None, compression=Compression.none, op=None,
              prescale_factor=1.0, postscale_factor=1.0, process_set=global_process_set):
    """The reduction of ``tensor`` over the process set (a new tensor; default op: Average).

    Average of integer tensors floors (as Horovod's). Differentiable for
    Average and Sum.
    """
    op = _check_op(op, average)
    compressed, ctx = compression.compress(tensor)
    if op in (Average, Sum) and compressed.requires_grad:
        out = _AllreduceFn.apply(compressed, op, prescale_factor, postscale_factor, name,
                                 process_set)
    else:
        out = _now(allreduce_async, compressed, op=op, name=name,
                   prescale_factor=prescale_factor, postscale_factor=postscale_factor,
                   process_set=process_set)
    return compression.decompress(out, ctx)


def grouped_allreduce_async(tensors, average=None, name=None, op=None, prescale_factor=1.0,
                            postscale_factor=1.0, process_set=global_process_set) -> int:
    """Start a fused allreduce of a list of tensors into new tensors; returns a handle."""
    return grouped_allreduce_async_([t.detach().clone() for t in tensors], average, name, op,
                                    prescale_factor, postscale_factor, process_set)


def grouped_allreduce_(tensors, average=None, name=None, op=None, prescale_factor=1.0,
                       postscale_factor=1.0, process_set=global_process_set):
    """Allreduce a list of tensors in place as one fused op; returns the list."""
    return _now(grouped_allreduce_async_, tensors, average, name, op, prescale_factor,
                postscale_factor, process_set)


def grouped_allreduce(tensors, average=None, name=None, compression=Compression.none, op=None,
                      prescale_factor=1.0, postscale_factor=1.0, process_set=global_process_set):
    """Allreduce a list of tensors as one fused operation; returns new tensors."""
    pairs = [compression.compress(t) for t in tensors]
    outs = _now(grouped_allreduce_async, [p[0] for p in pairs], average, name, op,
                prescale_factor, postscale_factor, process_set)
    return [compression.decompress(o, c) for o, (_, c) in zip(outs, pairs)]


def sparse_allreduce_async(tensor, name=None, op=Average, process_set=global_process_set):
    """Start an allreduce of a sparse COO tensor; returns a function for ``synchronize``.

    As Horovod does: the indices and values of every rank are allgathered
    and form a sparse tensor of the same size (duplicate indices sum when it
    is coalesced); Average divides the values by the process set's size.
    """
    op = _check_op(op, None)
    if op not in (Average, Sum):
        raise ValueError(f"sparse_allreduce_async supports hvd.Average and hvd.Sum, got {op!r}")
    t = tensor.coalesce() if not tensor.is_coalesced() else tensor
    base = name if name is not None else engine_of(process_set).auto_name("sparse")
    hi = allgather_async(t.indices().transpose(0, 1).contiguous(), name=f"{base}.indices",
                         process_set=process_set)
    hv = allgather_async(t.values().contiguous(), name=f"{base}.values", process_set=process_set)
    n = len(engine_of(process_set).set_ranks)

    def finish():
        values = synchronize(hv)
        indices = synchronize(hi)
        if op == Average:
            values = values / n if values.is_floating_point() else values.div(n, rounding_mode="floor")
        # every rank's indices were valid for this size: no need to check them again
        return torch.sparse_coo_tensor(indices.transpose(0, 1), values, t.size(),
                                       check_invariants=False)
    return finish


# ------------------------------------------------------------------ allgather
def _cat(outs):
    return outs[0]


def allgather_async(tensor, name=None, process_set=global_process_set) -> int:
    """Start an allgather (rows of every rank, concatenated along dimension 0); returns a handle."""
    t = tensor.detach().contiguous()
    err = None
    if t.dim() == 0:
        err = ("hvd.allgather needs a tensor of at least one dimension (rows are concatenated "
               "along dimension 0); reshape a scalar with t.reshape(1)")
    return _submit(ALLGATHER, name, [t], _cat, process_set, error=err)


class _AllgatherFn(torch.autograd.Function):
    """As Horovod's: the gradient is this rank's rows of the average of the gradients."""

    @staticmethod
    def forward(ctx, tensor, name, process_set):
        ctx.rows, ctx.process_set = tensor.shape[0], process_set
        return _now(allgather_async, tensor, name, process_set)

    @staticmethod
    def backward(ctx, grad):
        ps = ctx.process_set
        reduced = _now(allreduce_async, grad.contiguous(), op=Average, process_set=ps)
        rows = _now(allgather_async, torch.tensor([ctx.rows]), process_set=ps)
        me = engine_of(ps).set_ranks.index(_w().rank)
        start = int(rows[:me].sum())
        return reduced.narrow(0, start, ctx.rows), None, None


def allgather(tensor, name=None, process_set=global_process_set):
    """Every rank's ``tensor`` concatenated along dimension 0 (first dims may differ).

    Differentiable (as Horovod's).
    """
    if tensor.requires_grad and tensor.dim() > 0:
        return _AllgatherFn.apply(tensor, name, process_set)
    return _now(allgather_async, tensor, name, process_set)


def grouped_allgather_async(tensors, name=None, process_set=global_process_set) -> int:
    """Start an allgather of each tensor of a list, as one op; returns a handle."""
    ts = [t.detach().contiguous() for t in tensors]
    err = None
    if any(t.dim() == 0 for t in ts):
        err = "hvd.grouped_allgather needs tensors of at least one dimension"
    return _submit(ALLGATHER, name, ts, lambda outs: outs, process_set, error=err)


def grouped_allgather(tensors, name=None, process_set=global_process_set) -> list:
    """``allgather`` of each tensor of a list, in one op; returns a list of tensors."""
    return _now(grouped_allgather_async, tensors, name, process_set)


# ------------------------------------------------------------------ broadcast
def broadcast_async_(tensor, root_rank, name=None, process_set=global_process_set) -> int:
    """Start an in-place broadcast of rank ``root_rank``'s ``tensor``; returns a handle."""
    root, err = _check_root(root_rank, process_set)
    return _submit(BROADCAST, name, [tensor], _same, process_set, root=root, error=err)


def broadcast_async(tensor, root_rank, name=None, process_set=global_process_set) -> int:
    """Start a broadcast into a new tensor; returns a handle."""
    return broadcast_async_(tensor.detach().clone(), root_rank, name, process_set)


def broadcast_(tensor, root_rank, name=None, process_set=global_process_set):
    """Copy rank ``root_rank``'s ``tensor`` into ``tensor`` on every rank."""
    return _now(broadcast_async_, tensor, root_rank, name, process_set)


class _BroadcastFn(torch.autograd.Function):
    """As Horovod's: the root's gradient is the average of every rank's, the others' zero."""

    @staticmethod
    def forward(ctx, tensor, root_rank, name, process_set):
        ctx.root, ctx.process_set = root_rank, process_set
        return _now(broadcast_async, tensor, root_rank, name, process_set)

    @staticmethod
    def backward(ctx, grad):
        reduced = _now(allreduce_async, grad.contiguous(), op=Average, process_set=ctx.process_set)
        if _w().rank != ctx.root:
            reduced.zero_()
        return reduced, None, None, None


def broadcast(tensor, root_rank, name=None, process_set=global_process_set):
    """Rank ``root_rank``'s ``tensor`` on every rank (a new tensor). Differentiable."""
    if tensor.requires_grad:
        return _BroadcastFn.apply(tensor, root_rank, name, process_set)
    return _now(broadcast_async, tensor, root_rank, name, process_set)


# ------------------------------------------------------------------ alltoall, reducescatter
def alltoall_async(tensor, splits=None, name=None, process_set=global_process_set) -> int:
    """Start an alltoall; returns a handle whose result is (received rows, received splits)."""
    n_ranks = len(engine_of(process_set).set_ranks)
    n = tensor.shape[0] if tensor.dim() else 0
    err, send = None, None
    if tensor.dim() == 0:
        err = "hvd.alltoall needs a tensor of at least one dimension"
    elif splits is None:
        if n % n_ranks:
            err = (f"alltoall without splits needs the first dimension ({n}) to be divisible "
                   f"by the number of ranks ({n_ranks})")
        else:
            send = [n // n_ranks] * n_ranks
    else:
        send = [int(s) for s in torch.as_tensor(splits).reshape(-1).tolist()]
        if len(send) != n_ranks or sum(send) != n or min(send) < 0:
            err = (f"splits must hold {n_ranks} non-negative counts summing to the first "
                   f"dimension {n}, got {send}")
    return _submit(ALLTOALL, name, [tensor.detach().contiguous()], lambda outs: tuple(outs),
                   process_set, error=err, splits=send)


class _AlltoallFn(torch.autograd.Function):
    """The gradient of the received rows goes back to their senders: an alltoall."""

    @staticmethod
    def forward(ctx, tensor, splits, name, process_set):
        out, received = _now(alltoall_async, tensor, splits, name, process_set)
        ctx.received, ctx.process_set = received, process_set
        ctx.mark_non_differentiable(received)
        return out, received

    @staticmethod
    def backward(ctx, grad, _):
        back, _ = _now(alltoall_async, grad.contiguous(), ctx.received,
                       process_set=ctx.process_set)
        return back, None, None, None


def alltoall(tensor, splits=None, name=None, process_set=global_process_set):
    """Rows ``splits[q]`` of ``tensor`` go to rank q; returns (received rows, received splits).

    Differentiable in ``tensor``.
    """
    if tensor.requires_grad:
        return _AlltoallFn.apply(tensor, splits, name, process_set)
    return _now(alltoall_async, tensor, splits, name, process_set)


def reducescatter_async(tensor, name=None, op=Average, process_set=global_process_set,
                        prescale_factor=1.0, postscale_factor=1.0) -> int:
    """Start a reducescatter; returns a handle whose result is this rank's part."""
    op = _check_op(op, None)
    t = tensor.detach().contiguous()
    err = "hvd.reducescatter needs a tensor of at least one dimension" if t.dim() == 0 else None
    return _submit(REDUCESCATTER, name, [t], _same, process_set, op, -1, prescale_factor,
                   postscale_factor, error=err)


def reducescatter(tensor, name=None, compression=Compression.none, op=Average,
                  process_set=global_process_set, prescale_factor=1.0, postscale_factor=1.0):
    """Reduce ``tensor`` over the ranks; this rank gets its part along dimension 0.

    Parts follow ``numpy.array_split``: the first ``dim0 % size`` ranks get one more row.
    Differentiable for Average and Sum.
    """
    compressed, ctx = compression.compress(tensor)
    if compressed.requires_grad and op in (Average, Sum):
        out = _ReducescatterFn.apply(compressed, name, op, process_set, prescale_factor,
                                     postscale_factor)
    else:
        out = _now(reducescatter_async, compressed, name, op, process_set, prescale_factor,
                   postscale_factor)
    return compression.decompress(out, ctx)


class _ReducescatterFn(torch.autograd.Function):
    """Each input row reaches one rank's part: the gradient is every part's gradient,
    allgathered (scaled as the forward scaled)."""

    @staticmethod
    def forward(ctx, tensor, name, op, process_set, pre, post):
        ctx.args = (op, process_set, pre * post)
        return _now(reducescatter_async, tensor, name, op, process_set, pre, post)

    @staticmethod
    def backward(ctx, grad):
        op, ps, scale = ctx.args
        full = _now(allgather_async, grad.contiguous(), process_set=ps)
        if op == Average:
            scale /= len(engine_of(ps).set_ranks)
        return (full * scale if scale != 1.0 else full), None, None, None, None, None


def grouped_reducescatter_async(tensors, name=None, op=Average, process_set=global_process_set,
                                prescale_factor=1.0, postscale_factor=1.0) -> int:
    """Start a reducescatter of each tensor of a list, as one op; returns a handle."""
    op = _check_op(op, None)
    ts = [t.detach().contiguous() for t in tensors]
    err = ("hvd.grouped_reducescatter needs tensors of at least one dimension"
           if any(t.dim() == 0 for t in ts) else None)
    return _submit(REDUCESCATTER, name, ts, lambda outs: outs, process_set, op, -1,
                   prescale_factor, postscale_factor, error=err)


def grouped_reducescatter(tensors, name=None, compression=Compression.none, op=Average,
                          process_set=global_process_set, prescale_factor=1.0,
                          postscale_factor=1.0) -> list:
    """``reducescatter`` of each tensor of a list in one op; returns this rank's parts."""
    pairs = [compression.compress(t) for t in tensors]
    outs = _now(grouped_reducescatter_async, [p[0] for p in pairs], name, op, process_set,
                prescale_factor, postscale_factor)
    return [compression.decompress(o, c) for o, (_, c) in zip(outs, pairs)]
