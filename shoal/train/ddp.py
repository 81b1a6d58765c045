"""Data parallelism: every rank holds the whole model; gradients are averaged.

``prepare_model`` wraps a module: rank 0's parameters and buffers are
broadcast, every parameter gets a post-accumulate-grad hook, and the buckets
of ``_bucket.py`` allreduce gradients during backward. The end of backward
waits for every bucket (an autograd engine callback), so the user's loop —
``loss.backward(); opt.step()`` — needs no change.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
from dataclasses import dataclass

import torch
from torch import nn

from shoal.exceptions import RankMismatchError
from shoal.train._bucket import BucketManager


@dataclass
class DDP:
    """Distributed data parallel strategy.

    Args:
        bucket_cap_mb: largest bucket of gradients allreduced together (MB).
        find_unused_parameters: tolerate parameters that get no gradient in a
            step (their gradient is taken as zero).
        gradient_compression: None, "fp16" or "bf16": dtype on the wire.
        broadcast_buffers: copy rank 0's buffers (BatchNorm statistics) to all
            ranks before every training forward.
        sync_batchnorm: convert BatchNorm layers to shoal.train.SyncBatchNorm.
        first_bucket_mb: size of the first bucket (small, so communication
            starts early in backward).
        check_finite: raise NonFiniteLossError when reduced gradients hold NaN/inf.
        backend: collective backend: "auto", "native", "torch" or "gloo".
        overlap: allreduce each bucket in the background as soon as its
            gradients are ready (True, the default), or every bucket at the
            end of backward in the training thread (False: no thread
            hand-offs, for hosts where the ranks' compute leaves no core for
            a background thread). With True, a bucket after which the
            previous step's backward had less than 2 ms left (and the last
            bucket always) is reduced at the end of backward in the training
            thread too: there is nothing to overlap it with, and the
            hand-off would cost a wake-up each way.
    """

    bucket_cap_mb: float = 25.0
    find_unused_parameters: bool = False
    gradient_compression: str | None = None
    broadcast_buffers: bool = True
    sync_batchnorm: bool = False
    first_bucket_mb: float = 1.0
    check_finite: bool = True
    backend: str = "auto"
    overlap: bool = True

    def __post_init__(self):
        if not self.bucket_cap_mb > 0 or not self.first_bucket_mb > 0:
            raise ValueError(f"DDP bucket sizes must be > 0, got bucket_cap_mb="
                             f"{self.bucket_cap_mb}, first_bucket_mb={self.first_bucket_mb}")
        if self.gradient_compression not in (None, "fp16", "bf16"):
            raise ValueError(f"DDP.gradient_compression must be None, 'fp16' or 'bf16', got "
                             f"{self.gradient_compression!r}")
        if self.backend not in ("auto", "native", "torch", "gloo"):
            raise ValueError(f"DDP.backend must be 'auto', 'native', 'torch' or 'gloo', got "
                             f"{self.backend!r}")

    def prepare(self, model: nn.Module, comm, sync_state: bool = True) -> DistributedModel:
        """Wrap ``model`` for this strategy over ``comm`` (what ``prepare_model`` calls).

        ``sync_state=False`` skips the check and broadcast of rank 0's state
        (an elastic job does both in ``State.sync()``, with every rank at once).
        """
        return DistributedModel(model, comm, self, sync_state=sync_state)


def grad_sync_hook(fn):
    """``fn`` as a gradient hook marked as one that only averages gradients over ranks.

    A zero-bubble pipeline computes some weight gradients outside the
    backward; it may skip such hooks because it calls the stage's
    ``sync_gradients()`` afterwards (``shoal.train.parallel.deferred``).
    """
    hook = functools.partial(fn)      # takes the mark; calling it adds no Python frame
    hook.grad_sync = True
    return hook


def is_grad_sync_hook(hook) -> bool:
    """Whether ``hook`` was made by ``grad_sync_hook``."""
    return getattr(hook, "grad_sync", False) is True


def model_signature(model: nn.Module) -> str:
    """A hash of the names, shapes and dtypes of a model's parameters and buffers."""
    h = hashlib.sha256()
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
    return h.hexdigest()


class DistributedModel(nn.Module):
    """A module whose gradients are averaged over the ranks of ``comm``.

    ``module`` is the wrapped model (save ``model.module.state_dict()`` to
    get the plain one). ``no_sync()`` skips gradient synchronization for
    gradient accumulation.
    """

    def __init__(self, module: nn.Module, comm, strategy: DDP, sync_state: bool = True):
        super().__init__()
        self.module = module
        self.comm = comm
        self.strategy = strategy
        if strategy.sync_batchnorm:
            from shoal.train.sync_batchnorm import SyncBatchNorm
            self.module = module = SyncBatchNorm.convert_sync_batchnorm(module, comm)
        if sync_state:
            self._check_same_model()
            self._broadcast_state()
        self._params = params = [p for p in module.parameters() if p.requires_grad]
        self._buckets = self._make_buckets(params, comm)
        self._require_sync = True
        self._callback_queued = False
        self._buffers = [b for b in module.buffers() if b.numel()]
        hook = grad_sync_hook(self._on_grad)
        self._hooks = [p.register_post_accumulate_grad_hook(hook) for p in params]

    # ------------------------------------------------------------- setup
    def _make_buckets(self, params, comm) -> BucketManager:
        mb, st = 1 << 20, self.strategy
        buckets = BucketManager(params, comm, int(st.bucket_cap_mb * mb),
                                int(min(st.first_bucket_mb, st.bucket_cap_mb) * mb),
                                st.gradient_compression, st.check_finite, overlap=st.overlap)
        buckets.names = {p: n for n, p in self.module.named_parameters()}
        return buckets

    def rebind(self, comm) -> None:
        """Average gradients over ``comm`` from now on (an elastic job's new group).

        A backward cut short by the old group's failure is dropped. The
        parameters are not broadcast here: ``State.sync()`` does that.
        """
        try:
            self._buckets.abandon()
        except Exception:  # noqa: BLE001, S110 - the old group is broken; nothing to keep
            pass
        self._callback_queued = False
        self.comm = comm
        for m in self.module.modules():
            if hasattr(m, "comm") and m is not self:     # SyncBatchNorm layers
                m.comm = comm
        self._params = params = [p for p in self.module.parameters() if p.requires_grad]
        self._buckets = self._make_buckets(params, comm)

    def _check_same_model(self) -> None:
        sig = model_signature(self.module)
        sigs = self.comm.allgather_object(sig)
        bad = [r for r, s in enumerate(sigs) if s != sigs[0]]
        if bad:
            n = sum(p.numel() for p in self.module.parameters())
            raise RankMismatchError(
                f"the model passed to prepare_model differs between ranks: ranks {bad} have "
                f"other parameter names/shapes/dtypes than rank 0 (this rank: "
                f"{n} parameters). Build the same model on every rank")

    def _broadcast_state(self) -> None:
        broadcast_module_state(self.module, self.comm)

    # ------------------------------------------------------------- steps
    def forward(self, *args, **kwargs):
        """Run the wrapped module (in training, after copying rank 0's buffers)."""
        if torch.is_grad_enabled() and self.training:
            self._drop_unfinished_backward()
            if self.strategy.broadcast_buffers and self._buffers:
                self._sync_buffers()
        return self.module(*args, **kwargs)

    def _drop_unfinished_backward(self) -> None:
        # a backward that did not run to its end left buckets launched or its callback queued
        if self._buckets.next_launch or self._callback_queued:
            self._buckets.abandon()
            self._callback_queued = False

    @torch.no_grad()
    def _sync_buffers(self) -> None:
        for b in self._buffers:
            self.comm.broadcast(b, src=0)

    def _on_grad(self, p) -> None:
        if not self._require_sync:
            return
        if not self._callback_queued:
            self._callback_queued = True
            torch.autograd.Variable._execution_engine.queue_callback(self._end_of_backward)
        self._buckets.mark_ready(p)

    def _end_of_backward(self) -> None:
        self._callback_queued = False
        self._buckets.finish(self.strategy.find_unused_parameters)

    @contextlib.contextmanager
    def no_sync(self):
        """Accumulate gradients locally; the first backward after the block synchronizes."""
        old, self._require_sync = self._require_sync, False
        try:
            yield
        finally:
            self._require_sync = old

    @torch.no_grad()
    def sync_gradients(self) -> None:
        """Average the gradients now, outside a backward.

        For gradients accumulated under ``no_sync()`` and finished without
        autograd (a zero-bubble pipeline's weight gradients): every rank
        calls it once, where it would have run the synchronizing backward.
        """
        self._drop_unfinished_backward()
        for p in reversed(self._params):
            if p.grad is not None:
                self._buckets.mark_ready(p)
        self._buckets.finish(self.strategy.find_unused_parameters)

    def state_dict(self, *args, **kwargs):
        """The wrapped module's state_dict (keys without a ``module.`` prefix)."""
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load into the wrapped module (keys without a ``module.`` prefix)."""
        return self.module.load_state_dict(state_dict, strict=strict, assign=assign)


@torch.no_grad()
def broadcast_module_state(module, comm) -> None:
    """Copy rank 0's parameters and non-empty buffers to every rank (one broadcast per dtype)."""
    by_dtype: dict = {}
    for t in [p.data for p in module.parameters()] + [b for b in module.buffers() if b.numel()]:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        comm.broadcast(flat, src=0)
        off = 0
        for t in group:
            t.copy_(flat[off:off + t.numel()].view_as(t))
            off += t.numel()
