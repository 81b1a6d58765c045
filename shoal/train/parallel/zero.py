"""Sharded data parallelism: ZeRO stages 1, 2 and 3 (stage 3 is FSDP).

The model is cut into *units* (by default each block of its ``nn.ModuleList``,
plus a root unit holding everything else). Each unit's parameters live in one
flat buffer padded to a multiple of the world size N; rank r owns the slice
``[r*S, (r+1)*S)``. The optimizer sees only those slices (``model.parameters()``
are the *master shards*), so a plain ``opt = AdamW(model.parameters())`` keeps
1/N of the optimizer state per rank, and the user's loop is unchanged.

- stage 1: every rank keeps the full parameters and full gradients; each
  unit's flat gradient is reduce-scattered (averaged) as soon as the unit's
  backward is done, the optimizer updates this rank's shard, and the next
  forward allgathers the updated shards (all units launched at once, each
  unit waiting only for its own).
- stage 2: as stage 1, but the full gradient is dropped once reduce-scattered.
- stage 3: parameters too are sharded. A unit's full parameters are allgathered
  just before its forward (the next unit's gather is already in flight:
  prefetch) and freed after it; gathered again for its backward (the previous
  unit prefetched), freed once its gradient is reduce-scattered.

Module parameters become views into the unit's flat buffer, made afresh on
every forward (``torch.split`` of one leaf tensor), so autograd delivers one
flat gradient per unit and one hook per unit starts its reduce-scatter. In
stage 3 the buffer's storage is resized to 0 between uses; the views stay
valid and see the data again after the next gather.

Mixed precision (``mixed_precision="bf16"``): the flat buffers, gradients and
everything on the wire are bf16; the master shards and the optimizer state
stay fp32. The fp32 gradient of a master shard exists only while
``optimizer.step()`` runs (made from the bf16 gradient shard by a step
pre-hook, dropped by a post-hook), as in ZeRO's own accounting.
``offload_optimizer=True`` keeps master shards and optimizer state in host
memory (the step runs on the CPU; only the shard goes back to the device).
"""
from __future__ import annotations

import contextlib
import ctypes
import math
import weakref
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from shoal.exceptions import InvalidInputError, RankMismatchError
from shoal.train.ddp import broadcast_module_state, grad_sync_hook

_DTYPES = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class ZeRO:
    """Sharded data-parallel strategy (``Trainer(strategy=ZeRO(stage=2))``, ``prepare_model``).

    Args:
        stage: 1 (optimizer state sharded), 2 (+ gradients), 3 (+ parameters; FSDP).
        mixed_precision: None (train in the parameters' dtype) or "bf16"/"fp16":
            parameters and gradients in that dtype for compute and on the wire,
            fp32 master shards and optimizer state.
        offload_optimizer: keep master shards and optimizer state in host
            memory (for models on a GPU; on the CPU it only separates the
            master shard from the compute buffer).
        units: the module classes whose instances become units (outermost
            ones); default: the blocks of every ``nn.ModuleList`` (or the
            children of a top-level ``nn.Sequential``). Everything else is the
            root unit.
        prefetch: gather the next unit's parameters while this one computes.
        backend: collective backend of the gang ("auto", "native", "torch").
        sync_batchnorm: accepted for ``prepare_model``; must be False.
    """

    stage: int
    mixed_precision: str | None = None
    offload_optimizer: bool = False
    units: tuple | None = None
    prefetch: bool = True
    backend: str = "auto"
    sync_batchnorm: bool = False

    def __post_init__(self):
        if self.stage not in (1, 2, 3):
            raise InvalidInputError(f"ZeRO stage must be 1, 2 or 3, got {self.stage!r}")
        if self.mixed_precision not in _DTYPES:
            raise InvalidInputError(f"ZeRO mixed_precision must be None, 'bf16' or 'fp16', "
                                    f"got {self.mixed_precision!r}")
        if self.backend not in ("auto", "native", "torch"):
            raise InvalidInputError(f"ZeRO backend must be 'auto', 'native' or 'torch', "
                                    f"got {self.backend!r}")
        if self.sync_batchnorm:
            raise InvalidInputError("ZeRO does not convert BatchNorm layers; use DDP(sync_batchnorm=True)")
        if self.units is not None:
            self.units = tuple(self.units)

    def prepare(self, model: nn.Module, comm) -> ShardedModel:
        """Shard ``model`` over ``comm`` (what ``prepare_model`` calls)."""
        return ShardedModel(model, comm, self)


@dataclass
class FSDP(ZeRO):
    """``ZeRO(stage=3)``: parameters, gradients and optimizer state sharded (see ZeRO)."""

    stage: int = 3


# ---------------------------------------------------------------- optimizer hooks
# id(master shard) -> its unit, for units whose master gradient is made at step time
_STEP_GRAD_UNITS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_hooks_installed = False


def _install_step_hooks() -> None:
    global _hooks_installed
    if _hooks_installed:
        return
    from torch.optim.optimizer import (register_optimizer_step_post_hook,
                                       register_optimizer_step_pre_hook)

    def units_of(opt):
        found = ((p, _STEP_GRAD_UNITS.get(id(p))) for g in opt.param_groups for p in g["params"])
        return [(p, u) for p, u in found if u is not None and u.master is p]

    def pre(opt, args, kwargs):
        for p, unit in units_of(opt):
            if unit.grad_pending:
                p.grad = unit.grad_shard.to(p.device, p.dtype, non_blocking=False)

    def post(opt, args, kwargs):
        for p, unit in units_of(opt):
            if unit.grad_pending:
                p.grad = None
                unit.grad_pending = False
                unit.master_dirty = True

    register_optimizer_step_pre_hook(pre)
    register_optimizer_step_post_hook(post)
    _hooks_installed = True


# ---------------------------------------------------------------------- units
class _Unit:
    """One flat-sharded group of parameters (a block, or the root's leftovers)."""

    def __init__(self, index: int, name: str, module: nn.Module, entries: list, comm, cfg: ZeRO):
        self.index, self.name, self.module, self.comm, self.stage = index, name, module, comm, cfg.stage
        self.names = [e[0] for e in entries]
        self.locations = [e[2] for e in entries]        # [(module, attr), ...] per parameter
        self.shapes = [e[1].shape for e in entries]
        self.numels = [e[1].numel() for e in entries]
        first = entries[0][1]
        self.device = first.device
        self.param_dtype = first.dtype
        self.dtype = _DTYPES[cfg.mixed_precision] or first.dtype     # compute / wire dtype
        n, r = comm.world_size, comm.rank
        self.numel = sum(self.numels)
        self.shard_numel = math.ceil(self.numel / n)
        self.padded = self.shard_numel * n
        self.lo, self.hi = r * self.shard_numel, (r + 1) * self.shard_numel
        with torch.no_grad():
            flat32 = torch.zeros(self.padded, dtype=self.param_dtype, device=self.device)
            torch.cat([e[1].detach().reshape(-1) for e in entries], out=flat32[:self.numel])
        # full: the buffer collectives write into; flat: the autograd leaf on the same storage
        # (its own version counter, so a gather between forward and backward is no in-place
        # change autograd objects to).
        self.full = flat32 if self.dtype == self.param_dtype else flat32.to(self.dtype)
        self.flat = nn.Parameter(torch.empty(0, dtype=self.dtype, device=self.device)
                                 .set_(self.full.untyped_storage(), 0, (self.padded,)))
        self.separate = (cfg.mixed_precision is not None or cfg.offload_optimizer
                         or self.stage == 3)
        master_device = torch.device("cpu") if cfg.offload_optimizer else self.device
        if self.separate:
            master = flat32[self.lo:self.hi].to(master_device, torch.float32, copy=True)
        else:   # fp32, stages 1-2: the master shard is this rank's slice of the full buffer
            master = self.full[self.lo:self.hi]
        self.master = nn.Parameter(master)
        # The shard allgathers read. Stages 1-2: this rank's slice of the full buffer (cloned
        # at gather time: an input may not alias its own slot of the output). Stage 3: the
        # master itself when it has the compute dtype and device, else a shard buffer.
        direct = self.master.dtype == self.dtype and self.master.device == self.device
        if self.stage < 3:
            self.send_shard = self.full[self.lo:self.hi]
        elif direct:
            self.send_shard = self.master.detach()
        else:
            self.send_shard = torch.empty(self.shard_numel, dtype=self.dtype, device=self.device)
        # Units whose master is not what is gathered from get the master's gradient at
        # optimizer.step time (and mark it dirty after), through the global step hooks.
        self.step_grad = self.separate and not (self.stage == 3 and direct)
        if self.step_grad:
            _install_step_hooks()
            _STEP_GRAD_UNITS[id(self.master)] = self
        self.grad_shard = None          # reduced gradient of this rank's slice (compute dtype)
        self.grad_pending = False       # step_grad units: a gradient shard awaits optimizer.step
        self.master_dirty = self.stage == 3 and not direct   # master newer than send_shard
        self.gathered = True            # full holds the current parameters
        self.stale = False              # stages 1-2: shards updated since the last gather
        self.gather_work = None
        self.rs_work = None
        self.rs_grad = None             # the full gradient a reduce-scatter in flight reads
        self.rs_accumulate = None
        self.drop_grad = False          # stage 1: the full gradient was consumed
        self.hook = self.flat.register_post_accumulate_grad_hook(grad_sync_hook(self._on_grad))
        self.owner = None               # the ShardedModel (set by it)
        self.use_views()
        if self.stage == 3:
            self.free()

    # ------------------------------------------------------------ parameters
    def use_views(self) -> None:
        """Point every module attribute at its view of ``flat`` (a fresh autograd split)."""
        pieces = torch.split(self.flat, self.numels + [self.padded - self.numel])
        for piece, shape, locs in zip(pieces, self.shapes, self.locations):
            v = piece.view(shape)
            for mod, attr in locs:
                setattr(mod, attr, v)

    def free(self) -> None:
        """Stage 3: release the full parameters (the views stay, with no storage)."""
        self.full.untyped_storage().resize_(0)
        self.gathered = False

    def _source(self) -> torch.Tensor:
        if self.master_dirty:
            with torch.no_grad():
                self.send_shard.copy_(self.master)
            self.master_dirty = False
        return self.send_shard

    def gather(self, async_op: bool) -> None:
        """Allgather the shards into ``full`` (now, or started in the background)."""
        if self.gather_work is not None:
            if not async_op:
                self.wait_gather()
            return
        if self.gathered and not self.stale:
            return
        src = self._source()
        target = self.full
        if self.stage == 3:
            self.full.untyped_storage().resize_(self.padded * self.full.element_size())
            if self.device.type == "cpu":
                # A tensor a collective sees through NumPy/DLPack can never be resized again;
                # stage 3 must free this storage between uses, so the allgather writes through
                # a raw byte view of it (valid until the next free, which waits for the gather).
                target = _raw_bytes(self.full)
                src = src.view(torch.uint8)
        elif src.data_ptr() == self.full.data_ptr() + self.lo * self.full.element_size():
            src = src.clone()    # the input may not alias its own slot of the output
        self.gather_src = src
        self.gather_work = self.comm.allgather(src, out=target, async_op=True)
        if not async_op:
            self.wait_gather()

    def wait_gather(self) -> None:
        if self.gather_work is not None:
            work, self.gather_work = self.gather_work, None
            work.wait()
            self.gather_src = None
            self.gathered, self.stale = True, False

    # -------------------------------------------------------------- gradients
    def _on_grad(self, flat) -> None:
        owner = self.owner
        owner.backward_started()
        if owner.require_sync:
            self.reduce_grad()
        if self.stage == 3 and self.index != owner.root_index:
            owner.after_backward_of(self)

    def reduce_grad(self) -> None:
        """Start reduce-scattering the full gradient ``flat.grad`` into this rank's shard."""
        flat = self.flat
        g = flat.grad
        if self.stage == 1:
            accumulate = (self.grad_pending if self.step_grad else self.master.grad is not None)
            out = torch.empty(self.shard_numel, dtype=self.dtype, device=self.device)
            self.drop_grad = True     # kept (stage 1 holds full gradients) until the next forward
        else:
            if self.grad_shard is None:
                self.grad_shard = torch.empty(self.shard_numel, dtype=self.dtype, device=self.device)
            accumulate = (self.grad_pending if self.step_grad else self.master.grad is not None)
            out = torch.empty_like(self.grad_shard) if accumulate else self.grad_shard
            flat.grad = None          # the reduce-scatter holds it until done
        self.rs_grad, self.rs_out, self.rs_accumulate = g, out, accumulate
        self.rs_work = self.comm.reduce_scatter(g, op="avg", out=out, async_op=True)
        self.owner.reducing(self)

    def finish_grad(self) -> None:
        """Wait for this unit's reduce-scatter; expose the shard as the master's gradient."""
        if self.rs_work is None:
            return
        work, self.rs_work = self.rs_work, None
        work.wait()
        out, g, self.rs_out, self.rs_grad = self.rs_out, self.rs_grad, None, None
        if self.stage == 1:
            # the reduced slice goes back into the full gradient, which stage 1 keeps
            dst = g[self.lo:self.hi]
            prev = self.grad_shard if self.step_grad else self.master.grad
            if self.rs_accumulate and prev is not None and prev.data_ptr() != dst.data_ptr():
                dst.copy_(prev).add_(out)
            else:
                dst.copy_(out)
            self.grad_shard = dst
        elif self.rs_accumulate:
            self.grad_shard.add_(out)
        if self.step_grad:
            self.grad_pending = True
        else:
            self.master.grad = self.grad_shard
        if self.stage < 3:
            self.stale = True         # the optimizer will update the shard: gather before use


def _find_units(model: nn.Module, classes):
    """Outermost unit modules of ``model`` in registration order: [(name, module)]."""
    found = []

    def is_unit(name, mod, parent):
        if classes is not None:
            return isinstance(mod, classes)
        if isinstance(parent, nn.ModuleList):
            return True
        return parent is model and isinstance(model, nn.Sequential)

    def walk(prefix, mod):
        for cname, child in mod.named_children():
            name = f"{prefix}{cname}"
            if is_unit(name, child, mod) and any(True for _ in child.parameters()):
                found.append((name, child))
            else:
                walk(name + ".", child)
    walk("", model)
    return found


class ShardedModel(nn.Module):
    """A module trained with ZeRO over ``comm``; its ``parameters()`` are this rank's shards.

    Build the optimizer after wrapping: ``opt = torch.optim.AdamW(model.parameters())``.
    ``state_dict()`` / ``load_state_dict()`` use the plain model's keys and
    full tensors (collective: every rank calls them); ``save_sharded`` and
    ``load_sharded`` (shoal.train.parallel) write one file per rank and
    reshard to another world size. ``module`` is the wrapped model.
    """

    def __init__(self, module: nn.Module, comm, strategy: ZeRO):
        super().__init__()
        self.module = module
        self.comm = comm
        self.strategy = strategy
        self.require_sync = True
        self._keys = list(module.state_dict().keys())
        self._check_same_model()
        self._broadcast_state()
        self.units: list[_Unit] = []
        self.order: list[int] = []           # non-root unit indices in forward order
        self._order_done = False
        self._callback_queued = False
        self._reducing: list = []            # units whose reduce-scatter is in flight
        self._build_units()
        self.shards = nn.ParameterList([u.master for u in self.units])
        self._hooks = [module.register_forward_pre_hook(self._root_pre_forward),
                       module.register_forward_hook(self._root_post_forward)]
        for u in self.units:
            u.owner = self
            if u.index != self.root_index:
                self._hooks.append(u.module.register_forward_pre_hook(self._make_pre_forward(u)))
                self._hooks.append(u.module.register_forward_hook(self._make_post_forward(u)))

    # ------------------------------------------------------------------ setup
    def _check_same_model(self) -> None:
        from shoal.train.ddp import model_signature
        sigs = self.comm.allgather_object(model_signature(self.module))
        bad = [r for r, s in enumerate(sigs) if s != sigs[0]]
        if bad:
            raise RankMismatchError(
                f"the model passed to ZeRO differs between ranks: ranks {bad} have other "
                "parameter names/shapes/dtypes than rank 0; build the same model on every rank")

    def _broadcast_state(self) -> None:
        broadcast_module_state(self.module, self.comm)

    def _build_units(self) -> None:
        spans = [("", self.module)] + _find_units(self.module, self.strategy.units)
        prefix = {m: n for n, m in self.module.named_modules(remove_duplicate=False)}
        where: dict = {}       # parameter -> [(module, attr)], every place it is registered
        for mod in self.module.modules():
            for attr, p in mod._parameters.items():
                if p is not None and p.requires_grad:
                    where.setdefault(p, []).append((mod, attr))
        owner = {p: ui for ui in range(1, len(spans)) for p in spans[ui][1].parameters()}
        entries: list[list] = [[] for _ in spans]
        for pname, p in self.module.named_parameters():
            if not p.requires_grad:
                continue       # frozen: stays a replicated parameter of the module
            ui = owner.get(p, 0)
            if ui:
                inside = set(spans[ui][1].modules())
                for mod, attr in where[p]:
                    if mod not in inside:
                        raise InvalidInputError(
                            f"parameter {pname!r} of unit {spans[ui][0]!r} is also registered "
                            f"outside it (as {prefix[mod]}.{attr}); ZeRO shards each unit on "
                            "its own. Tie parameters only within one unit (e.g. both in the "
                            "root), or pass other units=")
            entries[ui].append((pname, p, where[p]))
        self.root_index = -1
        for ui, es in enumerate(entries):
            if not es:
                continue
            kinds = sorted({str(p.dtype) for _, p, _ in es})
            if len(kinds) > 1:
                raise InvalidInputError(f"unit {spans[ui][0] or '<root>'!r} mixes parameter "
                                        f"dtypes {kinds}; cast the model to one dtype")
            for _, _, locs in es:
                for mod, attr in locs:
                    del mod._parameters[attr]
            if ui == 0:
                self.root_index = len(self.units)
            unit = _Unit(len(self.units), spans[ui][0] or "<root>", spans[ui][1], es,
                         self.comm, self.strategy)
            unit.keys = [[f"{prefix[m]}.{a}".lstrip(".") for m, a in locs] for _, _, locs in es]
            self.units.append(unit)
        if not self.units:
            raise InvalidInputError("the model has no trainable parameters to shard")

    @property
    def _root(self):
        return self.units[self.root_index] if self.root_index >= 0 else None

    # ---------------------------------------------------------------- forward
    def forward(self, *args, **kwargs):
        """Run the wrapped module (gathering each unit's parameters as it is reached)."""
        return self.module(*args, **kwargs)

    def _root_pre_forward(self, module, args):
        if self._callback_queued:        # a backward did not run to its end: settle it
            self._end_of_backward()
        for u in self.units:
            if u.drop_grad:              # stage 1: last step's full gradient was consumed
                u.flat.grad = None
                u.drop_grad = False
        stage, root = self.strategy.stage, self._root
        if stage < 3:
            for u in self.units:         # everything stays resident: start every gather now
                u.gather(async_op=True)
        if root is not None:
            root.gather(async_op=False)
            root.use_views()
        if not self._order_done:
            self.order = []
        elif stage == 3 and self.strategy.prefetch and self.order:
            self.units[self.order[0]].gather(async_op=True)

    def _root_post_forward(self, module, args, output):
        self._order_done = True
        root = self._root
        if self.strategy.stage == 3 and root is not None:
            if torch.is_grad_enabled():
                self._hook_outputs(root, output)
            else:
                root.free()
            return None

    def _make_pre_forward(self, unit: _Unit):
        def hook(module, args):
            if not self._order_done:
                self.order.append(unit.index)
            unit.gather(async_op=False)
            unit.use_views()
            if self.strategy.stage == 3 and self.strategy.prefetch and self._order_done:
                pos = self.order.index(unit.index)
                if pos + 1 < len(self.order):
                    self.units[self.order[pos + 1]].gather(async_op=True)
            return None
        return hook

    def _make_post_forward(self, unit: _Unit):
        def hook(module, args, output):
            if self.strategy.stage == 3:
                unit.free()
                if torch.is_grad_enabled():
                    self._hook_outputs(unit, output)
            return None
        return hook

    def _hook_outputs(self, unit: _Unit, output) -> None:
        def pre_backward(grad):
            self._pre_backward(unit)
            return grad
        for t in _tensors(output):
            if t.requires_grad:
                t.register_hook(pre_backward)

    # --------------------------------------------------------------- backward
    def _pre_backward(self, unit: _Unit) -> None:
        """Stage 3: the unit's backward is next; gather it and prefetch the one before."""
        self.backward_started()
        unit.gather(async_op=False)
        if self.strategy.prefetch and unit.index in self.order:
            pos = self.order.index(unit.index)
            if pos >= 1:
                self.units[self.order[pos - 1]].gather(async_op=True)
        elif self.strategy.prefetch and unit.index == self.root_index and self.order:
            self.units[self.order[-1]].gather(async_op=True)

    def after_backward_of(self, unit: _Unit) -> None:
        """Stage 3: a unit's gradient is out; its parameters are no longer needed."""
        if unit.gather_work is None:
            unit.free()

    def reducing(self, unit: _Unit) -> None:
        """A unit's reduce-scatter started: settle the finished ones, and all but the last
        two, so that at most two full gradients are alive during backward."""
        self._reducing.append(unit)
        keep = []
        for i, u in enumerate(self._reducing):
            if len(self._reducing) - i > 2 or (u.rs_work is not None and u.rs_work.is_completed()):
                u.finish_grad()
            else:
                keep.append(u)
        self._reducing = keep

    def backward_started(self) -> None:
        """Make sure the end of this backward settles every unit (an engine callback)."""
        if not self._callback_queued:
            self._callback_queued = True
            torch.autograd.Variable._execution_engine.queue_callback(self._end_of_backward)

    def _end_of_backward(self) -> None:
        self._callback_queued = False
        self._reducing = []
        for u in self.units:
            u.finish_grad()
        if self.strategy.stage == 3:
            for u in self.units:
                u.wait_gather()
                u.free()

    @contextlib.contextmanager
    def no_sync(self):
        """Accumulate full gradients locally; the first backward after the block reduces them."""
        old, self.require_sync = self.require_sync, False
        try:
            yield
        finally:
            self.require_sync = old

    @torch.no_grad()
    def sync_gradients(self) -> None:
        """Reduce the gradients now, outside a backward.

        For gradients accumulated under ``no_sync()`` and finished without
        autograd (a zero-bubble pipeline's weight gradients): every rank
        calls it once, where it would have run the reducing backward.
        """
        if self._callback_queued:        # a backward did not run to its end: settle it
            self._end_of_backward()
        for u in reversed(self.units):   # the same order on every rank
            if u.flat.grad is not None:  # as in a backward, a unit without one has none
                u.reduce_grad()
        self._end_of_backward()

    # -------------------------------------------------------------- utilities
    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: float, norm_type: float = 2.0) -> torch.Tensor:
        """Clip the (sharded) gradients to a global ``max_norm``; returns the total norm.

        Use this instead of ``torch.nn.utils.clip_grad_norm_``: the gradient is
        spread over the ranks (and, with mixed precision, held in bf16 until
        ``optimizer.step``).
        """
        grads = [g for u in self.units for g in
                 [(u.grad_shard if u.grad_pending else None) if u.step_grad else u.master.grad]
                 if g is not None]
        if float(norm_type) == math.inf:
            local = torch.stack([g.abs().max().float() for g in grads]).max() if grads \
                else torch.zeros(())
            total = self.comm.allreduce(local.reshape(1).clone(), op="max")[0]
        else:
            local = sum((g.float().norm(norm_type) ** norm_type for g in grads), torch.zeros(()))
            total = self.comm.allreduce(local.reshape(1).clone(), op="sum")[0] ** (1.0 / norm_type)
        coef = max_norm / (float(total) + 1e-6)
        if coef < 1.0:
            for g in grads:
                g.mul_(coef)
        return total

    @torch.no_grad()
    def state_dict(self, *args, **kwargs):
        """The plain model's state_dict with full tensors, on every rank (collective)."""
        rest = self.module.state_dict(*args, **kwargs)     # buffers and frozen parameters
        full = {}
        for u in self.units:
            for keys, t in zip(u.keys, self._full_params(u)):
                for k in keys:
                    full[k] = t
        return {k: full[k] if k in full else rest[k] for k in self._keys}

    def _full_params(self, u: _Unit) -> list:
        shard = u.master.detach().to(u.device, u.param_dtype).contiguous()
        whole = torch.empty(u.padded, dtype=u.param_dtype, device=u.device)
        self.comm.allgather(shard, out=whole)
        return [t.view(s).clone() for t, s in zip(whole.split(u.numels + [u.padded - u.numel]),
                                                  u.shapes)]

    @torch.no_grad()
    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load a plain (unsharded) state_dict: each rank keeps its own slices."""
        missing = [n for u in self.units for n in u.names if n not in state_dict]
        if missing and strict:
            raise InvalidInputError(f"state_dict lacks parameters {missing[:5]}; it is not a "
                                    "state_dict of this model")
        for u in self.units:
            flat = torch.zeros(u.padded, dtype=torch.float32)
            off = 0
            for name, shape, n in zip(u.names, u.shapes, u.numels):
                if name in state_dict:
                    t = state_dict[name]
                    if tuple(t.shape) != tuple(shape):
                        raise InvalidInputError(f"state_dict[{name!r}] has shape {tuple(t.shape)}; "
                                                f"the model's is {tuple(shape)}")
                    flat[off:off + n] = t.reshape(-1).float().cpu()
                off += n
            self._set_shard(u, flat[u.lo:u.hi])
        rest = {k: v for k, v in state_dict.items() if k not in {n for u in self.units for n in u.names}}
        self.module.load_state_dict(rest, strict=False)
        return None

    def _set_shard(self, u: _Unit, values: torch.Tensor) -> None:
        """Make ``values`` (this rank's slice, any dtype/device) the unit's parameters."""
        u.master.data.copy_(values.to(u.master.device, u.master.dtype))
        u.master_dirty, u.stale = True, True
        if self.strategy.stage == 3:
            u.free()
        else:
            u.gathered = True

    def num_parameters(self) -> int:
        """Parameters of the whole (unsharded) model that ZeRO manages."""
        return sum(u.numel for u in self.units)


def _raw_bytes(t: torch.Tensor) -> np.ndarray:
    """A NumPy byte view of ``t``'s memory that torch does not know of (its storage stays
    resizable); the caller keeps ``t`` allocated while the view is in use."""
    n = t.numel() * t.element_size()
    return np.ctypeslib.as_array((ctypes.c_uint8 * n).from_address(t.data_ptr()))


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)
