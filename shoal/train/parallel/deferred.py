"""Weight gradients computed apart from the backward: the "W" of zero-bubble pipeline schedules.

Inside ``deferring(store)`` a linear layer (a plain ``nn.Linear`` through
``linear_forwards``, the tensor-parallel layers through ``linear``) takes its
weight and bias as constants: the autograd graph then computes only its
input's gradient ("I"), and the layer keeps its input and, through a hook,
its output's gradient in ``store``. ``weight_gradients(store)`` computes
``dW = dY^T X`` and ``db = sum(dY)`` later, at a time the schedule picks.
Outside ``deferring`` the layers compute as usual.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn import functional as F

_active = threading.local()      # .store: the list of the micro-batch being run, or None


@contextmanager
def deferring(store: list, forwards=()):
    """Linear layers run in this thread defer their weight gradients into ``store``.

    ``forwards``: ``linear_forwards(module)``, the plain ``nn.Linear``\\s to
    route through ``linear`` for the duration.
    """
    _active.store = store
    for mod, forward in forwards:
        mod.__dict__["forward"] = forward
    try:
        yield
    finally:
        for mod, _ in forwards:
            mod.__dict__.pop("forward", None)
        _active.store = None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear``, whose weight gradients wait for ``weight_gradients`` inside ``deferring``.

    Computed as usual (gradients in the backward) outside ``deferring``, when
    nothing upstream needs ``x``'s gradient, for frozen weights, under
    autocast, and for weights
    that are not leaves or carry gradient hooks (DDP's, a user's), which
    expect to run inside a backward.
    """
    store = getattr(_active, "store", None)
    if (store is None or not (x.requires_grad and torch.is_grad_enabled())
            or not (weight.requires_grad or (bias is not None and bias.requires_grad))
            or torch.is_autocast_enabled(x.device.type) or not _deferrable(weight)
            or (bias is not None and not _deferrable(bias))):
        return F.linear(x, weight, bias)
    out = F.linear(x, weight.detach(), None if bias is None else bias.detach())
    entry = [weight, bias, x, None]
    store.append(entry)
    # the node that made the output gets the output's gradient, even after an in-place op on
    # the output gives the tensor another node
    out.grad_fn.register_prehook(lambda grads, e=entry: e.__setitem__(3, grads[0]))
    return out


def _deferrable(p: torch.Tensor) -> bool:
    return p.is_leaf and not p._backward_hooks and not getattr(p, "_post_accumulate_grad_hooks", None)


def weight_gradients(entries) -> None:
    """Accumulate ``dW = dY^T X`` (and ``db = sum(dY)``) of every deferred call into ``.grad``."""
    for w, b, x, gy in entries:
        if gy is None:          # no gradient reached this output, as in a plain backward
            continue
        gy = gy.reshape(-1, gy.shape[-1])
        if w.requires_grad:
            x = x.reshape(-1, x.shape[-1])
            if w.grad is None:
                w.grad = gy.t().mm(x)
            else:
                w.grad.addmm_(gy.t(), x)
        if b is not None and b.requires_grad:
            db = gy.sum(0)
            if b.grad is None:
                b.grad = db
            else:
                b.grad.add_(db)


def linear_forwards(module: nn.Module) -> list:
    """``(layer, forward)`` for every plain ``nn.Linear`` in ``module``, for ``deferring``.

    Subclasses with their own forward are left alone, as is a layer whose
    weights ``linear`` would not defer anyway (frozen, hooked).
    """
    out = []
    for mod in module.modules():
        if (not isinstance(mod, nn.Linear) or type(mod).forward is not nn.Linear.forward
                or "forward" in mod.__dict__ or not mod.weight.requires_grad
                or not _deferrable(mod.weight)
                or (mod.bias is not None and not _deferrable(mod.bias))):
            continue
        out.append((mod, _forward_of(mod)))
    return out


def _forward_of(mod: nn.Linear):
    def forward(x):
        return linear(x, mod.weight, mod.bias)
    return forward
