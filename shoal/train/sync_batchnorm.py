"""``SyncBatchNorm``: batch statistics over the whole gang, not one rank's shard.

Forward allreduces per-channel sums, sums of squares and the count (one
op); backward allreduces the two per-channel gradient sums (one op). Weight
and bias gradients stay local: DDP averages them like any other parameter.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class _SyncBatchNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps, momentum, comm):
        c = x.shape[1]
        dims = [0] + list(range(2, x.dim()))
        shape = [1, c] + [1] * (x.dim() - 2)
        stats = torch.cat([x.sum(dims), (x * x).sum(dims),
                           torch.tensor([x.numel() // c], dtype=x.dtype)]).double()
        comm.allreduce(stats, op="sum")
        n = float(stats[-1])
        if n <= 1:
            raise ValueError(f"SyncBatchNorm needs more than 1 value per channel over the gang "
                             f"in training, got input of shape {tuple(x.shape)}")
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_(min=0)
        if running_mean is not None:
            running_mean.mul_(1 - momentum).add_(momentum * mean.to(running_mean.dtype))
            running_var.mul_(1 - momentum).add_(momentum * (var * n / (n - 1)).to(running_var.dtype))
        invstd = (var + eps).rsqrt().to(x.dtype)
        xhat = (x - mean.to(x.dtype).view(shape)) * invstd.view(shape)
        w = weight if weight is not None else torch.ones(c, dtype=x.dtype)
        ctx.save_for_backward(xhat, w, invstd)
        ctx.n, ctx.comm, ctx.dims, ctx.shape = n, comm, dims, shape
        ctx.affine = weight is not None
        y = xhat * w.view(shape)
        return y + bias.view(shape) if bias is not None else y

    @staticmethod
    def backward(ctx, dy):
        xhat, w, invstd = ctx.saved_tensors
        c, shape = xhat.shape[1], ctx.shape
        sum_dy = dy.sum(ctx.dims)
        sum_dy_xhat = (dy * xhat).sum(ctx.dims)
        g = torch.cat([sum_dy, sum_dy_xhat]).double()
        ctx.comm.allreduce(g, op="sum")
        mean_dy = (g[:c] / ctx.n).to(dy.dtype).view(shape)
        mean_dy_xhat = (g[c:] / ctx.n).to(dy.dtype).view(shape)
        dx = (dy - mean_dy - xhat * mean_dy_xhat) * (w * invstd).view(shape)
        dw, db = (sum_dy_xhat, sum_dy) if ctx.affine else (None, None)
        return dx, dw, db, None, None, None, None, None


class SyncBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics cover every rank's batch (any input rank >= 2)."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, comm=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.comm = comm

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"SyncBatchNorm expects at least 2D input, got {x.dim()}D")

    def forward(self, x):
        """Normalise ``x``; in training, with statistics over every rank's batch."""
        self._check_input_dim(x)
        if not self.training or self.comm is None or self.comm.world_size == 1:
            return super().forward(x)
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
        momentum = self.momentum if self.momentum is not None else \
            1.0 / float(self.num_batches_tracked)
        return _SyncBatchNormFn.apply(x, self.weight, self.bias,
                                      self.running_mean if self.track_running_stats else None,
                                      self.running_var if self.track_running_stats else None,
                                      self.eps, momentum, self.comm)

    @classmethod
    def convert_sync_batchnorm(cls, module: nn.Module, comm) -> nn.Module:
        """Replace every BatchNorm*d in ``module`` by a SyncBatchNorm over ``comm``."""
        out = module
        if isinstance(module, _BatchNorm) and not isinstance(module, SyncBatchNorm):
            out = cls(module.num_features, module.eps, module.momentum, module.affine,
                      module.track_running_stats, comm)
            if module.affine:
                with torch.no_grad():
                    out.weight = module.weight
                    out.bias = module.bias
            if module.track_running_stats:
                out.running_mean = module.running_mean
                out.running_var = module.running_var
                out.num_batches_tracked = module.num_batches_tracked
            out.train(module.training)
        elif isinstance(module, SyncBatchNorm):
            module.comm = comm
        for name, child in module.named_children():
            out.add_module(name, cls.convert_sync_batchnorm(child, comm))
        return out
