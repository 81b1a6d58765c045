"""Tensor parallelism's communication: autograd functions that pair a collective with its adjoint.

The feature dimension (plain tensor parallelism): ``copy_to_tp`` (identity,
allreduce of the gradient) enters a column-parallel region and
``reduce_from_tp`` (allreduce, identity) leaves a row-parallel one.

The sequence dimension (Megatron's sequence parallelism): between the
tensor-parallel regions (norms, dropout, residual adds) each rank holds
``1/tp`` of the sequence. ``gather_sequence`` (allgather, reduce-scatter of
the gradient) enters a column-parallel layer in place of ``copy_to_tp``, and
a row-parallel layer ends in a reduce-scatter (allgather of the gradient) in
place of the allreduce: the same bytes on the wire as one allreduce, and the
activations between regions are ``1/tp`` the size.
"""
from __future__ import annotations

import torch

from shoal.exceptions import InvalidInputError


class _CopyToTP(torch.autograd.Function):
    """Identity in forward; allreduce of the gradient in backward."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, grad):
        return _allreduce(grad, ctx.group), None


class _ReduceFromTP(torch.autograd.Function):
    """Allreduce in forward; identity in backward."""

    @staticmethod
    def forward(ctx, x, group):
        return _allreduce(x, group)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _GatherFromTP(torch.autograd.Function):
    """Allgather along the last dimension in forward; this rank's slice in backward."""

    @staticmethod
    def forward(ctx, x, group, chunks):
        ctx.group, ctx.chunks = group, chunks
        return _gather_last(x, group, chunks)

    @staticmethod
    def backward(ctx, grad):
        return _slice_last(grad, ctx.group, ctx.chunks), None, None


class _ScatterToTP(torch.autograd.Function):
    """This rank's slice of the last dimension in forward; allgather in backward."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _slice_last(x, group, 1)

    @staticmethod
    def backward(ctx, grad):
        return _gather_last(grad, ctx.group, 1), None


def _allreduce(t: torch.Tensor, group) -> torch.Tensor:
    if group.world_size == 1:
        return t
    t = t.contiguous()
    # into a new tensor: autograd may hand the same gradient to several functions
    return group.allreduce(t, out=torch.empty_like(t))


def _gather_last(x: torch.Tensor, group, chunks: int) -> torch.Tensor:
    tp = group.world_size
    if tp == 1:
        return x
    xt = x.movedim(-1, 0).contiguous()
    out = torch.empty((tp * xt.shape[0],) + tuple(xt.shape[1:]), dtype=x.dtype, device=x.device)
    group.allgather(xt, out=out)
    full = out.movedim(0, -1)
    if chunks > 1:   # [q0 k0 v0 | q1 k1 v1] -> [q0 q1 | k0 k1 | v0 v1]
        c = full.shape[-1] // (tp * chunks)
        full = full.reshape(full.shape[:-1] + (tp, chunks, c)).transpose(-3, -2)
        full = full.reshape(full.shape[:-3] + (tp * chunks * c,))
    return full.contiguous()


def _slice_last(x: torch.Tensor, group, chunks: int) -> torch.Tensor:
    tp, r = group.world_size, group.rank
    if tp == 1:
        return x
    parts = x.reshape(x.shape[:-1] + (chunks, tp, x.shape[-1] // (chunks * tp)))
    return parts[..., r, :].reshape(x.shape[:-1] + (x.shape[-1] // tp,)).contiguous()


def copy_to_tp(x: torch.Tensor, group) -> torch.Tensor:
    """``x`` unchanged; its gradient is summed over the tp group in backward."""
    return _CopyToTP.apply(x, group)


def reduce_from_tp(x: torch.Tensor, group) -> torch.Tensor:
    """The sum of ``x`` over the tp group; the gradient passes through unchanged."""
    return _ReduceFromTP.apply(x, group)


def gather_from_tp(x: torch.Tensor, group) -> torch.Tensor:
    """The tp group's slices of the last dimension, concatenated in rank order."""
    return _GatherFromTP.apply(x, group, 1)


# ------------------------------------------------------------ the sequence dimension
def _seq_parts(x: torch.Tensor, group, dim: int) -> int:
    n = x.shape[dim]
    if n % group.world_size:
        raise InvalidInputError(
            f"sequence parallelism: a sequence of {n} (dimension {dim} of {tuple(x.shape)}) does "
            f"not divide over the tp group of {group.world_size} ranks; use a sequence length "
            f"divisible by {group.world_size}")
    return n // group.world_size


def _gather_dim(x: torch.Tensor, group, dim: int) -> torch.Tensor:
    if group.world_size == 1:
        return x
    xt = x.movedim(dim, 0).contiguous()
    out = torch.empty((group.world_size * xt.shape[0],) + tuple(xt.shape[1:]), dtype=x.dtype,
                      device=x.device)
    group.allgather(xt, out=out)
    return out.movedim(0, dim).contiguous()


def _reduce_scatter_dim(x: torch.Tensor, group, dim: int) -> torch.Tensor:
    if group.world_size == 1:
        return x
    n = _seq_parts(x, group, dim)
    xt = x.movedim(dim, 0).contiguous()
    out = torch.empty((n,) + tuple(xt.shape[1:]), dtype=x.dtype, device=x.device)
    group.reduce_scatter(xt, out=out)
    return out.movedim(0, dim).contiguous()


def _slice_dim(x: torch.Tensor, group, dim: int) -> torch.Tensor:
    if group.world_size == 1:
        return x
    n = _seq_parts(x, group, dim)
    return x.narrow(dim, group.rank * n, n).contiguous()


class _GatherSequence(torch.autograd.Function):
    """Allgather along the sequence in forward; reduce-scatter of the gradient in backward."""

    @staticmethod
    def forward(ctx, x, group, dim):
        ctx.group, ctx.dim = group, dim
        return _gather_dim(x, group, dim)

    @staticmethod
    def backward(ctx, grad):
        return _reduce_scatter_dim(grad, ctx.group, ctx.dim), None, None


class _ReduceScatterSequence(torch.autograd.Function):
    """Reduce-scatter along the sequence in forward; allgather of the gradient in backward."""

    @staticmethod
    def forward(ctx, x, group, dim):
        ctx.group, ctx.dim = group, dim
        return _reduce_scatter_dim(x, group, dim)

    @staticmethod
    def backward(ctx, grad):
        return _gather_dim(grad, ctx.group, ctx.dim), None, None


class _ScatterSequence(torch.autograd.Function):
    """This rank's part of the sequence in forward; allgather of the gradient in backward."""

    @staticmethod
    def forward(ctx, x, group, dim):
        ctx.group, ctx.dim = group, dim
        return _slice_dim(x, group, dim)

    @staticmethod
    def backward(ctx, grad):
        return _gather_dim(grad, ctx.group, ctx.dim), None, None


class _GatherSequenceOutput(torch.autograd.Function):
    """Allgather along the sequence in forward; this rank's part of the gradient in backward."""

    @staticmethod
    def forward(ctx, x, group, dim):
        ctx.group, ctx.dim = group, dim
        return _gather_dim(x, group, dim)

    @staticmethod
    def backward(ctx, grad):
        return _slice_dim(grad, ctx.group, ctx.dim), None, None


def gather_sequence(x: torch.Tensor, group, dim: int = 1, reduce_grad: bool = True) -> torch.Tensor:
    """The whole sequence from every rank's part (allgather along ``dim``).

    ``reduce_grad=True`` (entering a column-parallel layer, whose ranks each
    give a partial gradient of the whole sequence): the gradient is
    reduce-scattered. ``reduce_grad=False`` (leaving sequence parallelism for
    replicated layers): each rank keeps its part of the gradient.
    """
    fn = _GatherSequence if reduce_grad else _GatherSequenceOutput
    return fn.apply(x, group, dim)


def scatter_sequence(x: torch.Tensor, group, dim: int = 1) -> torch.Tensor:
    """This rank's ``1/tp`` of the sequence of a replicated ``x``; the gradient is allgathered."""
    return _ScatterSequence.apply(x, group, dim)


def reduce_scatter_sequence(x: torch.Tensor, group, dim: int = 1) -> torch.Tensor:
    """The sum of ``x`` over the group, each rank keeping its part of the sequence."""
    return _ReduceScatterSequence.apply(x, group, dim)


__all__ = ["copy_to_tp", "reduce_from_tp", "gather_from_tp", "gather_sequence",
           "scatter_sequence", "reduce_scatter_sequence"]
