"""``DistributedOptimizer`` and the broadcast helpers of horovod.torch.

The optimizer is the user's own class with Horovod's behaviour mixed in:
each parameter's gradient is allreduced asynchronously as soon as backward
has accumulated it ``backward_passes_per_step`` times, and ``step()`` waits
for all of them first.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager

import torch

from shoal.horovod import _ops
from shoal.horovod._ops import (
    Average,
    Sum,
    broadcast_,
    broadcast_object,
    sparse_allreduce_async,
    synchronize,
)
from shoal.horovod._world import _w, engine_of, global_process_set
from shoal.horovod.compression import Compression


class _DistributedOptimizer(torch.optim.Optimizer):
    def __init__(self, params, named_parameters, compression, backward_passes_per_step=1,
                 op=Average, gradient_predivide_factor=1.0, sparse_as_dense=False,
                 process_set=global_process_set):
        super(self.__class__, self).__init__(params)
        self._process_set = process_set
        self._sparse_as_dense = sparse_as_dense
        self._compression = compression
        if named_parameters is not None:
            named_parameters = list(named_parameters)
        else:
            named_parameters = [(f"allreduce.noname.{i}.{j}", v)
                                for i, group in enumerate(self.param_groups)
                                for j, v in enumerate(group["params"])]
        if any(not isinstance(p, tuple) for p in named_parameters):
            raise ValueError("named_parameters should be a sequence of tuples (name, parameter), "
                             "usually produced by model.named_parameters().")
        names = [k for k, _ in named_parameters]
        dups = sorted({k for k in names if names.count(k) > 1})
        if dups:
            raise ValueError("Parameter names in named_parameters must be unique. "
                             f"Found duplicates: {', '.join(dups)}")
        all_ids = {id(v) for group in self.param_groups for v in group["params"]}
        unnamed = all_ids - {id(v) for _, v in named_parameters}
        if unnamed:
            raise ValueError("named_parameters was specified, but one or more model parameters "
                             f"were not named. Python object ids: {', '.join(map(str, unnamed))}")
        if op not in (Average, Sum):
            raise ValueError(f"DistributedOptimizer reduces gradients with hvd.Average or "
                             f"hvd.Sum, got {op!r}")
        if gradient_predivide_factor != 1.0 and op != Average:
            raise ValueError("gradient_predivide_factor not supported with op != Average")
        if backward_passes_per_step < 1:
            raise ValueError(f"backward_passes_per_step must be >= 1, got "
                             f"{backward_passes_per_step}")
        self._op = op
        self._predivide = gradient_predivide_factor
        self._parameter_names = {v: k for k, v in sorted(named_parameters, key=lambda e: e[0])}
        self.backward_passes_per_step = backward_passes_per_step
        self._allreduce_delay = {v: backward_passes_per_step for _, v in named_parameters}
        self._handles: dict = {}
        self._hooks = []
        self._requires_update: list = []
        self._synchronized = False
        self._should_synchronize = True
        if self._set_size > 1 or _elastic():
            self._register_hooks()     # an elastic job may grow: hooks from the start

    @property
    def _set_size(self) -> int:
        return len(engine_of(self._process_set).set_ranks)

    def _reset_handles(self) -> None:
        """Forget the allreduces of a backward cut short (an elastic job's group changed)."""
        self._handles.clear()
        for p in self._allreduce_delay:
            self._allreduce_delay[p] = self.backward_passes_per_step
        self._synchronized = False

    def _register_hooks(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.requires_grad:
                    self._requires_update.append(p)
                    self._hooks.append(p.register_post_accumulate_grad_hook(self._make_hook(p)))

    def _allreduce_grad_async(self, p):
        name = self._parameter_names.get(p)
        if p.grad.is_sparse:
            if self._sparse_as_dense:
                p.grad = p.grad.to_dense()
            else:   # an embedding's sparse gradient: allgather its indices and values
                return sparse_allreduce_async(p.grad, name=name, op=self._op,
                                              process_set=self._process_set), (None, None)
        tensor_compressed, ctx = self._compression.compress(p.grad)
        if self._op == Average:
            pre, post = 1.0 / self._predivide, self._predivide
        else:
            pre = post = 1.0
        handle = _ops.allreduce_async_(tensor_compressed, name=name, op=self._op,
                                       prescale_factor=pre, postscale_factor=post,
                                       process_set=self._process_set)
        return handle, (ctx, tensor_compressed)

    def _make_hook(self, p):
        def hook(*_):
            if (p in self._handles and self._handles[p][0] is not None
                    and self._allreduce_delay[p] <= 0):
                raise AssertionError(
                    "Gradients were computed more than backward_passes_per_step times "
                    "before call to step(). Increase backward_passes_per_step to "
                    "accumulate gradients locally.")
            assert p.grad.is_sparse or not p.grad.requires_grad
            assert self._allreduce_delay[p] > 0
            handle, ctx = None, None
            self._allreduce_delay[p] -= 1
            if self._allreduce_delay[p] == 0:
                handle, ctx = self._allreduce_grad_async(p)
            self._handles[p] = (handle, ctx)
        return hook

    def synchronize(self) -> None:
        """Wait for every gradient's allreduce (started by hooks, or now for the rest)."""
        if self._set_size == 1 and not self._handles:
            self._synchronized = True
            return
        for p in self._requires_update:   # a fixed order on every rank
            if p.grad is None:
                continue
            if p not in self._handles or self._handles[p][0] is None:
                self._handles[p] = self._allreduce_grad_async(p)
        for p, (handle, (ctx, compressed)) in list(self._handles.items()):
            output = synchronize(handle)
            self._allreduce_delay[p] = self.backward_passes_per_step
            if output.is_sparse:
                p.grad = output
            elif ctx is not None or output.data_ptr() != p.grad.data_ptr():
                p.grad.copy_(self._compression.decompress(output, ctx))
        self._handles.clear()
        self._synchronized = True

    @contextmanager
    def skip_synchronize(self):
        """Run step() without synchronizing (after an explicit synchronize(), e.g. to clip)."""
        self._should_synchronize = False
        try:
            yield
        finally:
            self._should_synchronize = True

    def step(self, closure=None):
        if self._should_synchronize:
            if self._synchronized:
                warnings.warn("optimizer.step() called without optimizer.skip_synchronize() "
                              "context after optimizer.synchronize(). This can cause training "
                              "slowdown. You may want to consider using "
                              "optimizer.skip_synchronize() context if you use "
                              "optimizer.synchronize() in your code.")
            self.synchronize()
        self._synchronized = False
        return super(self.__class__, self).step(closure)

    def zero_grad(self, set_to_none: bool = True):
        if self._handles:
            raise AssertionError("optimizer.zero_grad() was called after loss.backward() but "
                                 "before optimizer.step() or optimizer.synchronize(). This is "
                                 "prohibited as it can cause a race condition.")
        return super(self.__class__, self).zero_grad(set_to_none=set_to_none)


def _elastic() -> bool:
    """True in an elastic job (an elastic shoal.train session, or HOROVOD_ELASTIC=1)."""
    import os
    if os.environ.get("HOROVOD_ELASTIC") == "1":
        return True
    from shoal.train.context import current_session
    s = current_session(required=False)
    return s is not None and s.elastic is not None


def DistributedOptimizer(optimizer, named_parameters=None, compression=Compression.none,
                         backward_passes_per_step=1, op=Average, gradient_predivide_factor=1.0,
                         num_groups=0, groups=None, sparse_as_dense=False, process_set=None):
    """Wrap ``optimizer`` so that gradients are averaged over all ranks before ``step()``.

    Args are Horovod's: ``named_parameters`` (model.named_parameters()),
    ``compression`` (hvd.Compression.none / fp16), ``backward_passes_per_step``
    (local accumulation), ``op`` (hvd.Average or hvd.Sum),
    ``gradient_predivide_factor``, ``sparse_as_dense`` (densify sparse
    gradients, e.g. of ``nn.Embedding(sparse=True)``, before the allreduce;
    otherwise their indices and values are allgathered, as Horovod does) and
    ``process_set`` (average over that set's ranks only; its members call
    this). ``num_groups``/``groups`` are accepted: gradients are fused
    anyway (consecutive ready allreduces run as one collective).
    """
    _w()
    cls = type(optimizer.__class__.__name__, (optimizer.__class__,),
               dict(_DistributedOptimizer.__dict__))
    return cls(optimizer.param_groups, named_parameters, compression, backward_passes_per_step,
               op, gradient_predivide_factor, sparse_as_dense, process_set)


@torch.no_grad()
def broadcast_parameters(params, root_rank: int, process_set=global_process_set) -> None:
    """Copy rank ``root_rank``'s parameters into ``params`` on every rank, in place.

    ``params`` is a state_dict or a list of (name, tensor) such as
    ``model.named_parameters()``; with ``process_set`` only its members take part.
    """
    if isinstance(params, dict):
        items = sorted(params.items())
    elif isinstance(params, list) or hasattr(params, "__iter__"):
        items = list(params)
        if any(not isinstance(p, tuple) or len(p) != 2 for p in items):
            raise ValueError("invalid params of type: " + str(type(params)))
    else:
        raise ValueError("invalid params of type: " + str(type(params)))
    tensors = [p for _, p in items if isinstance(p, torch.Tensor)]
    if len(engine_of(process_set).set_ranks) == 1 or not tensors:
        return
    by_dtype: dict = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():    # one broadcast per dtype, not per tensor
        flat = torch.cat([t.detach().reshape(-1) for t in group])
        broadcast_(flat, root_rank, process_set=process_set)
        off = 0
        for t in group:
            t.copy_(flat[off:off + t.numel()].view_as(t))
            off += t.numel()


def broadcast_optimizer_state(optimizer, root_rank: int, process_set=global_process_set) -> None:
    """Copy rank ``root_rank``'s optimizer state (and hyperparameters) to every rank."""
    if isinstance(optimizer, torch.optim.LBFGS):
        raise ValueError("cannot broadcast torch.optim.LBFGS state")  # noqa: TRY004 - as Horovod
    if len(engine_of(process_set).set_ranks) == 1:
        return
    state = broadcast_object(optimizer.state_dict(), root_rank, process_set=process_set)
    if _w().rank != root_rank:
        optimizer.load_state_dict(state)
