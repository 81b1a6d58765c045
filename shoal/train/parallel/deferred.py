"""Weight gradients computed apart from the backward: the "W" of zero-bubble pipeline schedules.

Inside ``deferring(store)`` a linear layer (a plain ``nn.Linear`` through
``linear_forwards``, the tensor-parallel layers through ``linear``) takes its
weight and bias as constants: the autograd graph then computes only its
input's gradient ("I"), and the layer keeps its input and, through a hook,
its output's gradient in ``store``. ``weight_gradients(store)`` computes
``dW = dY^T X`` and ``db = sum(dY)`` later, at a time the schedule picks.
Outside ``deferring`` the layers compute as usual.

A data-parallel stage (DDP, ZeRO) averages gradients from hooks that expect
every gradient inside a backward. With ``deferring(..., synced=True)`` the
caller runs the stage under ``no_sync()`` and calls its ``sync_gradients()``
after the last W; weights whose only hooks are those marked as gradient
synchronization (``shoal.train.ddp.is_grad_sync_hook``) are then deferred
too, and ZeRO's weights, views of one flat parameter, get their W in that
parameter's gradient.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn import functional as F

from shoal.train.ddp import is_grad_sync_hook

_active = threading.local()      # .store: the list of the micro-batch being run, or None; .synced


@contextmanager
def deferring(store: list, forwards=(), synced: bool = False):
    """Linear layers run in this thread defer their weight gradients into ``store``.

    ``forwards``: ``linear_forwards(module)``, the plain ``nn.Linear``\\s to
    route through ``linear`` for the duration. ``synced``: the stage runs
    under ``no_sync()`` and the caller calls its ``sync_gradients()`` after
    ``weight_gradients``, so gradient-synchronization hooks may be skipped.
    """
    _active.store, _active.synced = store, synced
    for mod, forward in forwards:
        mod.__dict__["forward"] = forward
    try:
        yield
    finally:
        for mod, _ in forwards:
            mod.__dict__.pop("forward", None)
        _active.store, _active.synced = None, False


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear``, whose weight gradients wait for ``weight_gradients`` inside ``deferring``.

    Computed as usual (gradients in the backward) outside ``deferring``, when
    nothing upstream needs ``x``'s gradient, for frozen weights, under
    autocast, and for weights that carry gradient hooks (a user's; DDP's and
    ZeRO's unless ``deferring(..., synced=True)``), which expect to run inside
    a backward, or that are neither leaves nor contiguous pieces of one.
    """
    store = getattr(_active, "store", None)
    synced = getattr(_active, "synced", False)
    if (store is None or not (x.requires_grad and torch.is_grad_enabled())
            or not (weight.requires_grad or (bias is not None and bias.requires_grad))
            or torch.is_autocast_enabled(x.device.type) or not _deferrable(weight, synced)
            or (bias is not None and not _deferrable(bias, synced))):
        return F.linear(x, weight, bias)
    out = F.linear(x, weight.detach(), None if bias is None else bias.detach())
    entry = [weight, bias, x, None]
    store.append(entry)
    # the node that made the output gets the output's gradient, even after an in-place op on
    # the output gives the tensor another node
    out.grad_fn.register_prehook(lambda grads, e=entry: e.__setitem__(3, grads[0]))
    return out


def _deferrable(p: torch.Tensor, synced: bool = False) -> bool:
    if p._backward_hooks:
        return False
    leaf = p if p.is_leaf else p._base
    if leaf is not p:   # a view: only of a synced stage's flat parameter (ZeRO's), a plain slice
        if not synced or leaf is None or not leaf.is_leaf or leaf._backward_hooks \
                or p.dtype != leaf.dtype or not (p.is_contiguous() and leaf.is_contiguous()):
            return False
    hooks = (getattr(leaf, "_post_accumulate_grad_hooks", None) or {}).values()
    return all(synced and is_grad_sync_hook(h) for h in hooks)


def _grad_slot(p: torch.Tensor):
    """Where ``p``'s gradient accumulates: ``p.grad`` (None: not yet), or its piece of its base's."""
    if p.is_leaf:
        return p.grad
    base = p._base
    if base.grad is None:
        base.grad = torch.zeros_like(base, memory_format=torch.contiguous_format)
    off = p.storage_offset() - base.storage_offset()
    return base.grad.view(-1)[off:off + p.numel()].view(p.shape)


def weight_gradients(entries) -> None:
    """Accumulate ``dW = dY^T X`` (and ``db = sum(dY)``) of every deferred call into ``.grad``."""
    for w, b, x, gy in entries:
        if gy is None:          # no gradient reached this output, as in a plain backward
            continue
        gy = gy.reshape(-1, gy.shape[-1])
        if w.requires_grad:
            x = x.reshape(-1, x.shape[-1])
            slot = _grad_slot(w)
            if slot is None:
                w.grad = gy.t().mm(x)
            else:
                slot.addmm_(gy.t(), x)
        if b is not None and b.requires_grad:
            slot = _grad_slot(b)
            if slot is None:
                b.grad = gy.sum(0)
            else:
                slot.add_(gy.sum(0))


def linear_forwards(module: nn.Module, synced: bool = False) -> list:
    """``(layer, forward)`` for every plain ``nn.Linear`` in ``module``, for ``deferring``.

    Subclasses with their own forward are left alone, as is a layer whose
    weights ``linear`` would not defer anyway (frozen, hooked; ``synced`` as
    in ``deferring``).
    """
    out = []
    for mod in module.modules():
        if (not isinstance(mod, nn.Linear) or type(mod).forward is not nn.Linear.forward
                or "forward" in mod.__dict__ or not mod.weight.requires_grad
                or not _deferrable(mod.weight, synced)
                or (mod.bias is not None and not _deferrable(mod.bias, synced))):
            continue
        out.append((mod, _forward_of(mod)))
    return out


def _forward_of(mod: nn.Linear):
    def forward(x):
        return linear(x, mod.weight, mod.bias)
    return forward
