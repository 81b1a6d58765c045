"""Tensor parallelism (Megatron-style): layers whose weights are split over a tp group.

    plan = {"embed.tok": "vocab",               # vocabulary-parallel embedding
            "blocks.*.attn": "heads",           # its head count becomes heads / tp
            "blocks.*.attn.qkv": "colwise_qkv", # q, k and v each split by heads
            "blocks.*.attn.proj": "rowwise",
            "blocks.*.mlp.fc1": "colwise", "blocks.*.mlp.fc2": "rowwise",
            "head": "colwise"}                  # logits split over the vocabulary
    apply_tensor_parallel(model, tp_group, plan)
    loss = vocab_parallel_cross_entropy(model(x), y, tp_group)

A column-parallel ``Linear`` holds rows ``r/tp`` of the weight (a slice of
the output features); a row-parallel one holds columns (a slice of the input
features). A column layer followed by a row layer (attention's qkv and proj,
an MLP's two layers) needs one allreduce in forward (after the row layer)
and one in backward (before the column layer): the autograd functions below
are those pairs (identity / allreduce), kept next to the layers that use
them. Layers are built from the full module on every rank (same seed), so a
tp run starts from exactly the one-process model.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from shoal.exceptions import InvalidInputError


# ------------------------------------------------------------ communication
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


# ------------------------------------------------------------------ layers
def _shard(n: int, tp: int, what: str) -> int:
    if n % tp:
        raise InvalidInputError(f"{what} = {n} does not divide over the tp group of {tp} ranks; "
                                f"use a size divisible by {tp}")
    return n // tp


class ColumnParallelLinear(nn.Module):
    """``Linear`` with its output features split over the tp group.

    The output holds this rank's features (``out_features / tp``), or every
    rank's when ``gather_output``. With ``chunks=3`` (a fused q/k/v
    projection) each of the three parts is split separately, so rank ``r``
    holds q, k and v of the same heads.
    """

    def __init__(self, in_features: int, out_features: int, tp_group, bias: bool = True,
                 gather_output: bool = False, chunks: int = 1, dtype=None):
        super().__init__()
        self.group, self.gather_output, self.chunks = tp_group, gather_output, chunks
        tp = tp_group.world_size
        self.in_features, self.out_features = in_features, out_features
        self.local_out = chunks * _shard(_shard(out_features, chunks, "out_features / chunks"), tp,
                                         "out_features per chunk")
        self.weight = nn.Parameter(torch.empty(self.local_out, in_features, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(self.local_out, dtype=dtype)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, tp_group, gather_output: bool = False,
                    chunks: int = 1) -> "ColumnParallelLinear":
        """This rank's part of ``linear`` (same values as its rows)."""
        m = cls(linear.in_features, linear.out_features, tp_group, linear.bias is not None,
                gather_output, chunks, dtype=linear.weight.dtype)
        with torch.no_grad():
            m.weight.copy_(_rows(linear.weight, tp_group, chunks))
            if m.bias is not None:
                m.bias.copy_(_rows(linear.bias, tp_group, chunks))
        return m.to(linear.weight.device)

    def forward(self, x):
        """``x`` (replicated) -> this rank's output features (or all, with gather_output)."""
        y = F.linear(copy_to_tp(x, self.group), self.weight, self.bias)
        return _GatherFromTP.apply(y, self.group, self.chunks) if self.gather_output else y

    def extra_repr(self) -> str:
        """The layer's settings, shown in ``repr(model)``."""
        return (f"in_features={self.in_features}, out_features={self.out_features} "
                f"({self.local_out} here), tp={self.group.world_size}, chunks={self.chunks}, "
                f"gather_output={self.gather_output}")


class RowParallelLinear(nn.Module):
    """``Linear`` with its input features split over the tp group; output summed.

    Its input is this rank's slice of the features (``input_is_parallel``,
    what a ColumnParallelLinear gives) or the whole input, sliced here.
    """

    def __init__(self, in_features: int, out_features: int, tp_group, bias: bool = True,
                 input_is_parallel: bool = True, dtype=None):
        super().__init__()
        self.group, self.input_is_parallel = tp_group, input_is_parallel
        self.in_features, self.out_features = in_features, out_features
        self.local_in = _shard(in_features, tp_group.world_size, "in_features")
        self.weight = nn.Parameter(torch.empty(out_features, self.local_in, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, tp_group,
                    input_is_parallel: bool = True) -> "RowParallelLinear":
        """This rank's part of ``linear`` (same values as its columns)."""
        m = cls(linear.in_features, linear.out_features, tp_group, linear.bias is not None,
                input_is_parallel, dtype=linear.weight.dtype)
        with torch.no_grad():
            r, n = tp_group.rank, m.local_in
            m.weight.copy_(linear.weight[:, r * n:(r + 1) * n])
            if m.bias is not None:
                m.bias.copy_(linear.bias)
        return m.to(linear.weight.device)

    def forward(self, x):
        """This rank's input features -> the full output (summed over the group)."""
        if not self.input_is_parallel:
            x = _ScatterToTP.apply(x, self.group)
        y = reduce_from_tp(F.linear(x, self.weight), self.group)
        return y + self.bias if self.bias is not None else y

    def extra_repr(self) -> str:
        """The layer's settings, shown in ``repr(model)``."""
        return (f"in_features={self.in_features} ({self.local_in} here), out_features="
                f"{self.out_features}, tp={self.group.world_size}")


class VocabParallelEmbedding(nn.Module):
    """``Embedding`` with its rows (the vocabulary) split over the tp group.

    Each rank looks up the ids in its range and zeros the rest; one
    allreduce in forward assembles the embeddings.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, tp_group, dtype=None):
        super().__init__()
        self.group = tp_group
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        n = _shard(num_embeddings, tp_group.world_size, "num_embeddings (vocabulary size)")
        self.start, self.end = tp_group.rank * n, (tp_group.rank + 1) * n
        self.weight = nn.Parameter(torch.empty(n, embedding_dim, dtype=dtype))

    @classmethod
    def from_embedding(cls, emb: nn.Embedding, tp_group) -> "VocabParallelEmbedding":
        """This rank's rows of ``emb``."""
        if emb.padding_idx is not None or emb.max_norm is not None or emb.sparse:
            raise InvalidInputError("VocabParallelEmbedding supports plain embeddings only "
                                    "(no padding_idx, max_norm or sparse)")
        m = cls(emb.num_embeddings, emb.embedding_dim, tp_group, dtype=emb.weight.dtype)
        with torch.no_grad():
            m.weight.copy_(emb.weight[m.start:m.end])
        return m.to(emb.weight.device)

    def forward(self, ids):
        """Token ids (any shape) -> embeddings (replicated on every rank)."""
        outside = (ids < self.start) | (ids >= self.end)
        local = (ids - self.start).masked_fill(outside, 0)
        out = F.embedding(local, self.weight).masked_fill(outside.unsqueeze(-1), 0.0)
        return reduce_from_tp(out, self.group)

    def extra_repr(self) -> str:
        """The layer's settings, shown in ``repr(model)``."""
        return (f"{self.num_embeddings}, {self.embedding_dim}, rows {self.start}..{self.end - 1} "
                f"here, tp={self.group.world_size}")


def _rows(t: torch.Tensor, group, chunks: int) -> torch.Tensor:
    tp, r = group.world_size, group.rank
    parts = t.reshape((chunks, tp, t.shape[0] // (chunks * tp)) + tuple(t.shape[1:]))
    return parts[:, r].reshape((t.shape[0] // tp,) + tuple(t.shape[1:]))


# ------------------------------------------------------------ the loss
class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, group, start, ignore_index):
        ctx.dtype = logits.dtype
        logits = logits.float()
        row_max = logits.max(dim=-1).values
        if group.world_size > 1:
            group.allreduce(row_max, op="max")
        shifted = logits - row_max.unsqueeze(-1)
        n = logits.shape[-1]
        outside = (targets < start) | (targets >= start + n)
        local = (targets - start).masked_fill(outside, 0)
        picked = shifted.gather(-1, local.unsqueeze(-1)).squeeze(-1).masked_fill(outside, 0.0)
        exp = shifted.exp()
        both = torch.stack([picked, exp.sum(dim=-1)])     # one allreduce for both sums
        if group.world_size > 1:
            group.allreduce(both)
        loss = torch.log(both[1]) - both[0]
        ignored = targets == ignore_index
        loss = loss.masked_fill(ignored, 0.0)
        exp.div_(both[1].unsqueeze(-1))                    # softmax, kept for backward
        ctx.save_for_backward(exp, local, outside | ignored, ignored)
        return loss

    @staticmethod
    def backward(ctx, grad):
        softmax, local, not_here, ignored = ctx.saved_tensors
        g = softmax
        g.scatter_add_(-1, local.unsqueeze(-1), -(~not_here).to(g.dtype).unsqueeze(-1))
        g.mul_((grad * (~ignored).to(grad.dtype)).unsqueeze(-1))
        return g.to(ctx.dtype), None, None, None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, tp_group,
                                 ignore_index: int = -100, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of logits split over the vocabulary (a ColumnParallelLinear's output).

    Equals ``F.cross_entropy`` of the gathered logits without gathering them:
    three small allreduces of per-token values (max, then the target logit and
    the sum of exponentials together).

    Args:
        logits: ``(..., vocab / tp)``, this rank's slice of the vocabulary.
        targets: ``(...)`` token ids in the whole vocabulary.
        ignore_index: targets with this value add nothing.
        reduction: "mean" (over the targets not ignored), "sum" or "none".
    """
    if reduction not in ("mean", "sum", "none"):
        raise InvalidInputError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if logits.shape[:-1] != targets.shape:
        raise InvalidInputError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} "
                                "must agree on every dimension but the last")
    start = tp_group.rank * logits.shape[-1]
    loss = _VocabParallelCrossEntropy.apply(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                            tp_group, start, ignore_index)
    if reduction == "none":
        return loss.reshape(targets.shape)
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / (targets != ignore_index).sum().clamp(min=1)


# ------------------------------------------------------------ plans
@dataclass(frozen=True)
class ColwiseParallel:
    """Plan style: ``nn.Linear`` -> ColumnParallelLinear.

    Args:
        gather_output: give every rank the whole output (allgather).
        chunks: split each of ``chunks`` equal parts separately (3 for a fused qkv).
    """

    gather_output: bool = False
    chunks: int = 1

    def apply(self, module, group, name):
        """Replace ``module`` (named ``name``) with its tensor-parallel version over ``group``."""
        _expect(module, nn.Linear, name, self)
        return ColumnParallelLinear.from_linear(module, group, self.gather_output, self.chunks)


@dataclass(frozen=True)
class RowwiseParallel:
    """Plan style: ``nn.Linear`` -> RowParallelLinear (input already split, unless told)."""

    input_is_parallel: bool = True

    def apply(self, module, group, name):
        """Replace ``module`` (named ``name``) with its tensor-parallel version over ``group``."""
        _expect(module, nn.Linear, name, self)
        return RowParallelLinear.from_linear(module, group, self.input_is_parallel)


@dataclass(frozen=True)
class VocabParallel:
    """Plan style: ``nn.Embedding`` -> VocabParallelEmbedding."""

    def apply(self, module, group, name):
        """Replace ``module`` (named ``name``) with its tensor-parallel version over ``group``."""
        _expect(module, nn.Embedding, name, self)
        return VocabParallelEmbedding.from_embedding(module, group)


@dataclass(frozen=True)
class HeadParallel:
    """Plan style for an attention module: its head count attribute becomes heads / tp.

    Its projections are split by their own plan entries (``colwise_qkv`` and
    ``rowwise``); this keeps the module's bookkeeping (``n_head``,
    ``num_heads`` or ``n_heads``) right for the heads this rank holds.
    """

    attributes: tuple = ("n_head", "num_heads", "n_heads")

    def apply(self, module, group, name):
        """Replace ``module`` (named ``name``) with its tensor-parallel version over ``group``."""
        found = [a for a in self.attributes if isinstance(getattr(module, a, None), int)]
        if not found:
            raise InvalidInputError(f"plan entry 'heads' for {name!r}: {type(module).__name__} has "
                                    f"no head count attribute (one of {self.attributes})")
        for a in found:
            heads = getattr(module, a)
            setattr(module, a, _shard(heads, group.world_size, f"{name}.{a} (attention heads)"))
        return module


STYLES = {"colwise": ColwiseParallel(), "colwise_gather": ColwiseParallel(gather_output=True),
          "colwise_qkv": ColwiseParallel(chunks=3), "rowwise": RowwiseParallel(),
          "rowwise_split_input": RowwiseParallel(input_is_parallel=False),
          "vocab": VocabParallel(), "heads": HeadParallel()}


def _expect(module, cls, name, style):
    if not isinstance(module, cls):
        raise InvalidInputError(f"plan entry {type(style).__name__} for {name!r} needs an "
                                f"{cls.__name__}, but {name!r} is a {type(module).__name__}")


def _matches(name: str, pattern: str) -> bool:
    # part by part, so "*" stands for one name part ("blocks.*.attn" is not "blocks.0.mlp.attn")
    parts, pats = name.split("."), pattern.split(".")
    return len(parts) == len(pats) and all(fnmatch.fnmatchcase(a, b) for a, b in zip(parts, pats))


def apply_tensor_parallel(model: nn.Module, tp_group, plan: dict) -> nn.Module:
    """Replace the modules a plan names by their tensor-parallel versions (in place).

    Args:
        model: the whole model, built identically on every rank of ``tp_group``.
        tp_group: a shoal.collective communicator over the tensor-parallel ranks.
        plan: module-name pattern (``fnmatch`` per dotted part: ``*`` stands
            for one name part, e.g. ``"blocks.*.attn.qkv"``) -> a style: "colwise",
            "colwise_gather", "colwise_qkv", "rowwise", "rowwise_split_input",
            "vocab", "heads", or a ColwiseParallel / RowwiseParallel /
            VocabParallel / HeadParallel instance.

    Returns:
        ``model``, its named modules replaced.

    Raises:
        InvalidInputError: a pattern that names no module of the model (all
            such patterns are listed), an unknown style, a module of the
            wrong type, or sizes that do not divide over the group.
    """
    styles = {}
    for pattern, style in plan.items():
        if isinstance(style, str):
            if style not in STYLES:
                raise InvalidInputError(f"plan entry {pattern!r}: unknown style {style!r}; use one "
                                        f"of {sorted(STYLES)}")
            style = STYLES[style]
        elif not hasattr(style, "apply"):
            raise InvalidInputError(f"plan entry {pattern!r}: {style!r} is not a style")
        styles[pattern] = style
    names = [n for n, _ in model.named_modules() if n]
    matches = {p: [n for n in names if _matches(n, p)] for p in styles}
    missing = [p for p, found in matches.items() if not found]
    if missing:
        raise InvalidInputError(
            f"tensor-parallel plan names modules that {type(model).__name__} does not have: "
            f"{missing}. Its modules include {names[:12]}{' ...' if len(names) > 12 else ''}")
    claimed = {}
    for p, found in matches.items():
        for n in found:
            if n in claimed:
                raise InvalidInputError(f"module {n!r} matches two plan entries, {claimed[n]!r} "
                                        f"and {p!r}; give each module one style")
            claimed[n] = p
    modules = dict(model.named_modules())
    for name, pattern in claimed.items():
        new = styles[pattern].apply(modules[name], tp_group, name)
        if new is not modules[name]:
            parent, _, leaf = name.rpartition(".")
            setattr(modules[parent] if parent else model, leaf, new)
    return model


__all__ = ["ColumnParallelLinear", "RowParallelLinear", "VocabParallelEmbedding",
           "ColwiseParallel", "RowwiseParallel", "VocabParallel", "HeadParallel",
           "apply_tensor_parallel", "vocab_parallel_cross_entropy", "copy_to_tp",
           "reduce_from_tp", "gather_from_tp", "STYLES"]
