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
them (``tp_comm.py``). Layers are built from the full module on every rank
(same seed), so a tp run starts from exactly the one-process model.

Sequence parallelism (Megatron-LM's) adds to a plan: "scatter_sequence"
where it begins (each rank keeps ``1/tp`` of the sequence), "sequence" on the
norms between regions, and the "_sp" linear styles, whose column layers
gather the sequence and whose row layers reduce-scatter it:

    plan = {"embed": "scatter_sequence", "embed.tok": "vocab",
            "blocks.*.ln1": "sequence", "blocks.*.ln2": "sequence", "norm": "sequence",
            "blocks.*.attn": "heads", "blocks.*.attn.qkv": "colwise_qkv_sp",
            "blocks.*.attn.proj": "rowwise_sp", "blocks.*.mlp.fc1": "colwise_sp",
            "blocks.*.mlp.fc2": "rowwise_sp", "head": "colwise_sp"}
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from shoal.exceptions import InvalidInputError
from shoal.train.parallel import deferred
from shoal.train.parallel.tp_comm import (_GatherFromTP, _ReduceScatterSequence, _ScatterToTP,
                                          copy_to_tp, gather_from_tp, gather_sequence,
                                          reduce_from_tp, replicated_param, scatter_sequence)


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
    holds q, k and v of the same heads. With ``sequence_parallel`` its input
    is this rank's part of the sequence (dimension ``seq_dim``), allgathered
    here (the gradient reduce-scattered) in place of ``copy_to_tp``.
    """

    def __init__(self, in_features: int, out_features: int, tp_group, bias: bool = True,
                 gather_output: bool = False, chunks: int = 1, dtype=None,
                 sequence_parallel: bool = False, seq_dim: int = 1):
        super().__init__()
        self.group, self.gather_output, self.chunks = tp_group, gather_output, chunks
        self.sequence_parallel, self.seq_dim = sequence_parallel, seq_dim
        tp = tp_group.world_size
        self.in_features, self.out_features = in_features, out_features
        self.local_out = chunks * _shard(_shard(out_features, chunks, "out_features / chunks"), tp,
                                         "out_features per chunk")
        self.weight = nn.Parameter(torch.empty(self.local_out, in_features, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(self.local_out, dtype=dtype)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, tp_group, gather_output: bool = False,
                    chunks: int = 1, sequence_parallel: bool = False,
                    seq_dim: int = 1) -> "ColumnParallelLinear":
        """This rank's part of ``linear`` (same values as its rows)."""
        m = cls(linear.in_features, linear.out_features, tp_group, linear.bias is not None,
                gather_output, chunks, dtype=linear.weight.dtype,
                sequence_parallel=sequence_parallel, seq_dim=seq_dim)
        with torch.no_grad():
            m.weight.copy_(_rows(linear.weight, tp_group, chunks))
            if m.bias is not None:
                m.bias.copy_(_rows(linear.bias, tp_group, chunks))
        return m.to(linear.weight.device)

    def forward(self, x):
        """``x`` (replicated, or this rank's part of the sequence) -> this rank's output features."""
        x = (gather_sequence(x, self.group, self.seq_dim) if self.sequence_parallel
             else copy_to_tp(x, self.group))
        y = deferred.linear(x, self.weight, self.bias)     # dW may wait for a zero-bubble W
        return _GatherFromTP.apply(y, self.group, self.chunks) if self.gather_output else y

    def extra_repr(self) -> str:
        """The layer's settings, shown in ``repr(model)``."""
        return (f"in_features={self.in_features}, out_features={self.out_features} "
                f"({self.local_out} here), tp={self.group.world_size}, chunks={self.chunks}, "
                f"gather_output={self.gather_output}, sequence_parallel={self.sequence_parallel}")


class RowParallelLinear(nn.Module):
    """``Linear`` with its input features split over the tp group; output summed.

    Its input is this rank's slice of the features (``input_is_parallel``,
    what a ColumnParallelLinear gives) or the whole input, sliced here. With
    ``sequence_parallel`` the sum is reduce-scattered along the sequence
    (dimension ``seq_dim``): each rank gets its part of the sequence, and the
    bias's gradient is summed over the group.
    """

    def __init__(self, in_features: int, out_features: int, tp_group, bias: bool = True,
                 input_is_parallel: bool = True, dtype=None, sequence_parallel: bool = False,
                 seq_dim: int = 1):
        super().__init__()
        self.group, self.input_is_parallel = tp_group, input_is_parallel
        self.sequence_parallel, self.seq_dim = sequence_parallel, seq_dim
        self.in_features, self.out_features = in_features, out_features
        self.local_in = _shard(in_features, tp_group.world_size, "in_features")
        self.weight = nn.Parameter(torch.empty(out_features, self.local_in, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, tp_group, input_is_parallel: bool = True,
                    sequence_parallel: bool = False, seq_dim: int = 1) -> "RowParallelLinear":
        """This rank's part of ``linear`` (same values as its columns)."""
        m = cls(linear.in_features, linear.out_features, tp_group, linear.bias is not None,
                input_is_parallel, dtype=linear.weight.dtype,
                sequence_parallel=sequence_parallel, seq_dim=seq_dim)
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
        y = deferred.linear(x, self.weight)
        if self.sequence_parallel:
            y = _ReduceScatterSequence.apply(y, self.group, self.seq_dim)
            # each rank adds the bias to its part of the sequence: sum its gradient over the group
            return y + replicated_param(self.bias, self.group) if self.bias is not None else y
        y = reduce_from_tp(y, self.group)
        return y + self.bias if self.bias is not None else y

    def extra_repr(self) -> str:
        """The layer's settings, shown in ``repr(model)``."""
        return (f"in_features={self.in_features} ({self.local_in} here), out_features="
                f"{self.out_features}, tp={self.group.world_size}, "
                f"sequence_parallel={self.sequence_parallel}")


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
        sequence_parallel: the input is this rank's part of the sequence
            (dimension ``seq_dim``), gathered by the layer.
    """

    gather_output: bool = False
    chunks: int = 1
    sequence_parallel: bool = False
    seq_dim: int = 1

    def apply(self, module, group, name):
        """Replace ``module`` (named ``name``) with its tensor-parallel version over ``group``."""
        _expect(module, nn.Linear, name, self)
        return ColumnParallelLinear.from_linear(module, group, self.gather_output, self.chunks,
                                                self.sequence_parallel, self.seq_dim)


@dataclass(frozen=True)
class RowwiseParallel:
    """Plan style: ``nn.Linear`` -> RowParallelLinear (input already split, unless told).

    ``sequence_parallel``: the output is reduce-scattered along the sequence
    (dimension ``seq_dim``) instead of allreduced.
    """

    input_is_parallel: bool = True
    sequence_parallel: bool = False
    seq_dim: int = 1

    def apply(self, module, group, name):
        """Replace ``module`` (named ``name``) with its tensor-parallel version over ``group``."""
        _expect(module, nn.Linear, name, self)
        return RowParallelLinear.from_linear(module, group, self.input_is_parallel,
                                             self.sequence_parallel, self.seq_dim)


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


class _SequenceParallelNorm:
    """Mixed into a norm's class: its replicated weight and bias get gradients summed over tp."""

    def forward(self, x):
        """Normalize this rank's part of the sequence."""
        g = self._tp_group
        w = None if self.weight is None else replicated_param(self.weight, g)
        if isinstance(self, nn.LayerNorm):
            b = None if self.bias is None else replicated_param(self.bias, g)
            return F.layer_norm(x, self.normalized_shape, w, b, self.eps)
        return F.rms_norm(x, self.normalized_shape, w, self.eps)


_SP_NORMS: dict = {}


@dataclass(frozen=True)
class SequenceParallel:
    """Plan style for a position-wise module between tensor-parallel regions.

    Megatron-LM's sequence parallelism: the module (``LayerNorm``,
    ``RMSNorm``, or one without parameters such as ``Dropout``) runs on this
    rank's ``1/tp`` of the sequence; the weights of a norm stay replicated and
    their gradients are summed over the group. Pair it with
    ``colwise_sp``/``rowwise_sp`` layers and a ``scatter_sequence`` entry
    where the sequence parallel part of the model begins. Dropout masks
    differ from a one-process run's (each rank draws its part's).
    """

    def apply(self, module, group, name):
        """Make ``module`` (named ``name``) run on this rank's part of the sequence."""
        norms = tuple(c for c in (nn.LayerNorm, getattr(nn, "RMSNorm", None)) if c is not None)
        if isinstance(module, norms):
            cls = type(module)
            if cls not in _SP_NORMS:
                _SP_NORMS[cls] = type(f"SequenceParallel{cls.__name__}", (_SequenceParallelNorm, cls),
                                      {"__module__": __name__})
            module.__class__ = _SP_NORMS[cls]   # same parameters and names, new forward
            module._tp_group = group
        elif next(module.parameters(recurse=True), None) is not None:
            raise InvalidInputError(
                f"plan entry 'sequence' for {name!r}: {type(module).__name__} holds parameters; "
                "sequence parallelism supports LayerNorm, RMSNorm and modules without parameters")
        return module


@dataclass(frozen=True)
class SequenceScatter:
    """Plan style: the module's (replicated) output is cut along the sequence, each rank keeping its part.

    Where sequence parallelism begins (e.g. the embedding); the gradient is
    allgathered in backward.
    """

    seq_dim: int = 1

    def apply(self, module, group, name):
        """Cut ``module``'s output (named ``name``) along the sequence from now on."""
        module.register_forward_hook(lambda m, a, out: scatter_sequence(out, group, self.seq_dim))
        return module


@dataclass(frozen=True)
class SequenceGather:
    """Plan style: the module's output (this rank's part of the sequence) is allgathered.

    Where sequence parallelism ends before replicated layers; each rank keeps
    its part of the gradient in backward.
    """

    seq_dim: int = 1

    def apply(self, module, group, name):
        """Gather ``module``'s output (named ``name``) along the sequence from now on."""
        module.register_forward_hook(
            lambda m, a, out: gather_sequence(out, group, self.seq_dim, reduce_grad=False))
        return module


STYLES = {"colwise": ColwiseParallel(), "colwise_gather": ColwiseParallel(gather_output=True),
          "colwise_qkv": ColwiseParallel(chunks=3), "rowwise": RowwiseParallel(),
          "rowwise_split_input": RowwiseParallel(input_is_parallel=False),
          "vocab": VocabParallel(), "heads": HeadParallel(),
          "colwise_sp": ColwiseParallel(sequence_parallel=True),
          "colwise_qkv_sp": ColwiseParallel(chunks=3, sequence_parallel=True),
          "rowwise_sp": RowwiseParallel(sequence_parallel=True),
          "sequence": SequenceParallel(), "scatter_sequence": SequenceScatter(),
          "gather_sequence": SequenceGather()}


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
            "vocab", "heads"; for sequence parallelism "colwise_sp",
            "colwise_qkv_sp", "rowwise_sp", "sequence", "scatter_sequence",
            "gather_sequence"; or a ColwiseParallel / RowwiseParallel /
            VocabParallel / HeadParallel / SequenceParallel / SequenceScatter /
            SequenceGather instance.

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
           "SequenceParallel", "SequenceScatter", "SequenceGather", "gather_sequence",
           "scatter_sequence",
           "apply_tensor_parallel", "vocab_parallel_cross_entropy", "copy_to_tp",
           "reduce_from_tp", "gather_from_tp", "STYLES"]
