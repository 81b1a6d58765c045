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

The weights that stay replicated under sequence parallelism (norms, the
biases of row-parallel layers) each see only this rank's part of the
sequence, so their gradients must be summed over the group.
``replicated_param`` does that in one bucketed allreduce per backward pass
(as DDP's buckets and Megatron-LM's coalesced layer-norm allreduce do): each
use sends its gradient to a bucket, and the bucket is flattened, allreduced
once and added to the parameters' ``.grad`` when the backward pass ends.
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


class _GradBucket:
    """Gradients of replicated parameters collected over one backward pass, then allreduced at once.

    The first gradient of a backward pass queues a callback the autograd
    engine runs when that pass ends; it concatenates the gradients (one flat
    buffer per dtype and device, in the order they arrived, which is the same
    on every rank of the group: they run the same graph), allreduces each
    buffer, and adds the sums to the parameters' ``.grad``. Every rank
    adds the same sums, so the replicated parameters stay bitwise equal.
    """

    def __init__(self, group):
        self.group = group
        self.pending: dict = {}     # backward pass -> {id(param): [param, summed local gradient]}
        self.allreduces = 0         # flushes so far (for tests and benchmarks)

    def add(self, param: torch.Tensor, grad: torch.Tensor) -> None:
        task = torch._C._current_graph_task_id()
        grads = self.pending.get(task)
        if grads is None:           # the pass's first: flush when it ends
            while len(self.pending) >= 8:       # passes that failed before flushing
                self.pending.pop(next(iter(self.pending)))
            grads = self.pending[task] = {}
            torch.autograd.Variable._execution_engine.queue_callback(lambda: self._flush(task))
        entry = grads.get(id(param))
        if entry is None:
            grads[id(param)] = [param, grad]
        else:
            entry[1] = entry[1] + grad

    def _flush(self, task) -> None:
        groups: dict = {}
        for param, grad in self.pending.pop(task, {}).values():
            groups.setdefault((grad.dtype, grad.device), []).append((param, grad))
        for entries in groups.values():
            flat = torch.cat([g.reshape(-1) for _, g in entries])
            self.group.allreduce(flat)
            self.allreduces += 1
            for (param, _), piece in zip(entries, torch.split(flat, [g.numel() for _, g in entries])):
                piece = piece.view_as(param)
                if param.grad is None:
                    param.grad = piece.clone()
                else:
                    param.grad.add_(piece)


_BUCKETS: dict = {}   # id(group) -> (group, bucket): one bucket per tp group


def _bucket(group) -> _GradBucket:
    found = _BUCKETS.get(id(group))
    if found is None or found[0] is not group:
        if len(_BUCKETS) > 64:      # groups of finished runs
            _BUCKETS.clear()
        found = _BUCKETS[id(group)] = (group, _GradBucket(group))
    return found[1]


def _bucketable(param: torch.Tensor) -> bool:
    # a leaf nothing else watches: its gradient may arrive at the end of the pass. A view (a
    # sharding wrapper's flat parameter) or a leaf with gradient hooks (DDP's buckets, a user's
    # hook) needs its gradient when autograd reaches it.
    return (param.is_leaf and not getattr(param, "_post_accumulate_grad_hooks", None)
            and not getattr(param, "_backward_hooks", None))


class _ReplicatedParam(torch.autograd.Function):
    """Identity in forward; the parameter's gradient is summed over the group in backward."""

    @staticmethod
    def forward(ctx, param, group):
        ctx.group, ctx.param = group, param
        return param.view_as(param)

    @staticmethod
    def backward(ctx, grad):
        if not _bucketable(ctx.param):
            return _allreduce(grad, ctx.group), None
        _bucket(ctx.group).add(ctx.param, grad)
        return None, None


def replicated_param(param: torch.Tensor, group) -> torch.Tensor:
    """``param`` unchanged; its gradient is summed over the tp group, bucketed with the others.

    For a weight every rank holds whole but applies to its own part of the
    data (a norm's or a row-parallel bias under sequence parallelism). All
    such gradients of one backward pass travel in one allreduce per dtype,
    added to ``.grad`` when the pass ends (use it with ``backward()``, not
    ``torch.autograd.grad``). A parameter that is not a leaf (a view a
    sharding wrapper made) or that has gradient hooks (data parallelism's
    buckets) is reduced where autograd reaches it instead, like
    ``copy_to_tp``.
    """
    if group.world_size == 1 or not param.requires_grad or not torch.is_grad_enabled():
        return param
    return _ReplicatedParam.apply(param, group)


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
           "replicated_param", "scatter_sequence", "reduce_scatter_sequence"]
