"""``SyncBatchNorm``: batch normalization over the whole batch of every rank (Horovod's)."""
from __future__ import annotations

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from shoal.horovod._ops import Sum, allreduce
from shoal.horovod._world import engine_of, global_process_set


class _SyncBN(torch.autograd.Function):
    """Statistics from one allreduce of (sum, sum of squares, count); the backward
    pass allreduces (sum dy, sum dy * (x - mean)) so every rank's input gradient is
    its part of the gradient of the whole batch."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps, momentum, process_set):
        dims = [0] + list(range(2, x.dim()))
        xf = x.double() if x.dtype == torch.float64 else x.float()
        count = torch.tensor([x.numel() // x.shape[1]], dtype=xf.dtype, device=x.device)
        stats = torch.cat([xf.sum(dims), (xf * xf).sum(dims), count])
        stats = allreduce(stats, op=Sum, process_set=process_set)
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_(min=0)
        invstd = torch.rsqrt(var + eps)
        if running_mean is not None:
            with torch.no_grad():
                running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
                unbiased = var * n / (n - 1) if n > 1 else var
                running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (xf - mean.view(shape)) * invstd.view(shape)
        if weight is not None:
            y = y * weight.view(shape) + bias.view(shape)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.n, ctx.process_set = n, process_set
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        x, weight, mean, invstd = ctx.saved_tensors
        dims = [0] + list(range(2, x.dim()))
        c = x.shape[1]
        shape = [1, c] + [1] * (x.dim() - 2)
        dyf = dy.to(mean.dtype)
        xmu = x.to(mean.dtype) - mean.view(shape)
        sum_dy = dyf.sum(dims)
        sum_dy_xmu = (dyf * xmu).sum(dims)
        # weight and bias gradients stay local: DistributedOptimizer averages them
        grad_weight = (sum_dy_xmu * invstd).to(weight.dtype) if weight is not None else None
        grad_bias = sum_dy.to(weight.dtype) if weight is not None else None
        both = allreduce(torch.cat([sum_dy, sum_dy_xmu]), op=Sum, process_set=ctx.process_set)
        g_dy, g_dy_xmu = both[:c] / ctx.n, both[c:] / ctx.n
        scale = invstd if weight is None else invstd * weight.to(mean.dtype)
        dx = (dyf - g_dy.view(shape) - xmu * (invstd * invstd * g_dy_xmu).view(shape)) \
            * scale.view(shape)
        return dx.to(x.dtype), grad_weight, grad_bias, None, None, None, None, None


class SyncBatchNorm(_BatchNorm):
    """Batch normalization whose statistics cover the batches of all ranks (Horovod's).

    A drop-in for ``torch.nn.BatchNorm1d/2d/3d`` (input ``(N, C, ...)``): in
    training mode the mean and variance are those of the concatenation of
    every rank's batch, and the input gradient is this rank's part of the
    whole batch's gradient. In eval mode (or with one rank) it is a plain
    BatchNorm. ``process_set`` limits the statistics to that set's ranks.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, process_set=global_process_set):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.process_set = process_set

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input):
        """Normalize ``input`` (N, C, ...) with the statistics of every rank's batch."""
        self._check_input_dim(input)
        if not self.training or len(engine_of(self.process_set).set_ranks) == 1:
            return super().forward(input)
        momentum = self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if momentum is None:   # a cumulative moving average, as torch's BatchNorm
                momentum = 1.0 / float(self.num_batches_tracked)
        track = self.running_mean if self.track_running_stats else None
        return _SyncBN.apply(input, self.weight, self.bias, track,
                             self.running_var if self.track_running_stats else None,
                             self.eps, momentum, self.process_set)
