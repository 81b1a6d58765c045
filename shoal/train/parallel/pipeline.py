"""Pipeline parallelism: a model cut into stages, one stage per rank of a pipeline group.

    stages = split_model(model, num_stages=pp_group.world_size)      # or split_points=[...]
    sched = PipelineSchedule(stages[pp_group.rank], pp_group, schedule="1f1b",
                             num_microbatches=8, loss_fn=nn.functional.cross_entropy)
    loss = sched.step(x, y)       # forward + backward of every micro-batch; loss on the last stage
    opt.step(); opt.zero_grad()

A batch is cut into micro-batches along dimension 0. Stage ``s`` receives
micro-batch activations from ``s - 1`` and sends them to ``s + 1``; in
backward the gradients of those activations travel the other way. Sends and
receives are plain blocking calls in the training thread (no hand-off to a
thread that would wait for the GIL while the peer idles). They cannot
deadlock: on every link both stages handle the link's messages in one order
(in 1F1B's steady state a stage receives the next activation from ``s - 1``
before it sends ``s - 1`` the last gradient, the order in which ``s - 1``
sends and receives them), and on a chain of stages that is enough. Every
receive goes into a buffer allocated once per micro-batch shape. Shapes are negotiated when the micro-batch sizes of a step
differ from the previous step's, so a steady loop moves only the payload and
one small step header per link.

The loss of each micro-batch is weighted by its share of the batch, so the
accumulated gradients equal those of ``loss_fn`` (a mean) over the whole
batch in one process.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from shoal.exceptions import CollectiveError, InvalidInputError

SCHEDULES = ("gpipe", "1f1b")
_MAX_DIMS = 8
_TAG_STEP, _TAG_SHAPE, _TAG_ACT, _TAG_GRAD = 0x5001, 0x5002, 0x5003, 0x5004
_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
           torch.int16, torch.int8, torch.uint8, torch.bool)


# ------------------------------------------------------------------ splitting
def pipeline_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model as an ordered list of ``(name, layer)`` that a pipeline may cut between.

    An ``nn.Sequential`` gives its children. Any other model must hold its
    blocks in exactly one ``nn.ModuleList``; its children, in registration
    order with that list expanded (``blocks.0``, ``blocks.1``, ...), must
    compute what its ``forward`` computes (e.g. ``embed``, ``blocks``,
    ``norm``, ``head``).

    Raises:
        InvalidInputError: no list of blocks, several, or parameters held by
            the model itself (they would belong to no stage).
    """
    if isinstance(model, nn.Sequential):
        return list(model.named_children())
    lists = [n for n, c in model.named_children() if isinstance(c, nn.ModuleList)]
    if len(lists) != 1:
        raise InvalidInputError(
            f"{type(model).__name__} has {len(lists)} nn.ModuleList children "
            f"({', '.join(lists) or 'none'}); a pipeline needs an nn.Sequential or a model with "
            "exactly one nn.ModuleList of blocks. Pass split_model an nn.Sequential of its layers")
    own = [n for n, _ in model.named_parameters(recurse=False)] + \
          [n for n, _ in model.named_buffers(recurse=False)]
    if own:
        raise InvalidInputError(
            f"{type(model).__name__} holds parameters/buffers {own} outside its layers; they would "
            "belong to no pipeline stage. Move them into a child module (e.g. an embedding layer)")
    layers = []
    for name, child in model.named_children():
        if name == lists[0]:
            layers += [(f"{name}.{i}", block) for i, block in child.named_children()]
        else:
            layers.append((name, child))
    return layers


class PipelineStage(nn.Module):
    """Consecutive layers of a model, run in order; one stage of a pipeline.

    Its parameter names are the original model's (``blocks.2.attn.qkv.weight``),
    so ``state_dict()`` of every stage together is the model's state_dict.

    Attributes:
        index: this stage's position (0 = first).
        num_stages: how many stages the model was cut into.
        layer_names: the original names of the layers it holds, in order.
    """

    def __init__(self, layers: list[tuple[str, nn.Module]], index: int, num_stages: int):
        super().__init__()
        self.index, self.num_stages = index, num_stages
        self.layer_names = [n for n, _ in layers]
        for name, layer in layers:
            parent, _, leaf = name.rpartition(".")
            if parent:
                if parent not in self._modules:
                    self.add_module(parent, nn.ModuleDict())
                self._modules[parent].add_module(leaf, layer)
            else:
                self.add_module(leaf, layer)
        # looked up by name at every call, so a wrapper put in a layer's place later
        # (sharded data parallel, activation checkpointing) is the one that runs
        self._path = [tuple(n.rpartition(".")[::2]) for n in self.layer_names]

    def forward(self, x):
        """Run this stage's layers in order."""
        for parent, leaf in self._path:
            x = (self._modules[parent]._modules[leaf] if parent else self._modules[leaf])(x)
        return x

    def extra_repr(self) -> str:
        """The layer's settings, shown in ``repr(model)``."""
        return f"stage {self.index} of {self.num_stages}: {', '.join(self.layer_names)}"


def split_model(model: nn.Module, num_stages: int, split_points=None,
                balance: str = "params") -> list[PipelineStage]:
    """Cut ``model`` into ``num_stages`` consecutive stages.

    Args:
        model: an ``nn.Sequential`` or a model with one ``nn.ModuleList`` of
            blocks (see ``pipeline_layers``). Its modules are shared, not copied.
        num_stages: number of stages (the pipeline group's world size).
        split_points: where stages 1..num_stages-1 begin: layer indices into
            ``pipeline_layers(model)`` or layer names (``"blocks.2"``).
        balance: without split points, "params" (the default) cuts so the
            largest stage holds as few parameters as possible; "layers"
            gives every stage the same number of layers.

    Returns:
        The stages, in order; a rank keeps ``stages[pp_group.rank]``.

    Raises:
        InvalidInputError: fewer layers than stages, a layer count that does
            not divide over the stages (balance="layers"), or bad split points;
            the message names the number at fault.
    """
    if not isinstance(num_stages, int) or num_stages < 1:
        raise InvalidInputError(f"num_stages must be a positive int, got {num_stages!r}")
    layers = pipeline_layers(model)
    n = len(layers)
    if n < num_stages:
        raise InvalidInputError(f"{type(model).__name__} has {n} layers, fewer than num_stages="
                                f"{num_stages}; use at most {n} stages")
    if split_points is not None:
        starts = _check_split_points(split_points, layers, num_stages)
    elif balance == "layers":
        if n % num_stages:
            raise InvalidInputError(
                f"{n} layers do not divide over num_stages={num_stages} ({n} % {num_stages} = "
                f"{n % num_stages}); use balance='params', explicit split_points, or a stage count "
                f"dividing {n}")
        starts = [i * (n // num_stages) for i in range(1, num_stages)]
    elif balance == "params":
        sizes = [sum(p.numel() for p in layer.parameters()) for _, layer in layers]
        starts = _balanced_starts(sizes, num_stages)
    else:
        raise InvalidInputError(f"balance must be 'params' or 'layers', got {balance!r}")
    bounds = [0] + starts + [n]
    return [PipelineStage(layers[a:b], i, num_stages) for i, (a, b) in enumerate(zip(bounds, bounds[1:]))]


def _check_split_points(points, layers, num_stages) -> list[int]:
    names = {name: i for i, (name, _) in enumerate(layers)}
    points = list(points)
    if len(points) != num_stages - 1:
        raise InvalidInputError(f"split_points has {len(points)} entries; {num_stages} stages need "
                                f"{num_stages - 1} (where stages 1..{num_stages - 1} begin)")
    starts = []
    for p in points:
        if isinstance(p, str):
            if p not in names:
                raise InvalidInputError(f"split point {p!r} is not a layer name; the layers are "
                                        f"{list(names)}")
            p = names[p]
        if not isinstance(p, int) or not 0 < p < len(layers):
            raise InvalidInputError(f"split point {p!r} is out of range: it must be a layer index "
                                    f"in 1..{len(layers) - 1} ({len(layers)} layers)")
        starts.append(p)
    if any(b <= a for a, b in zip(starts, starts[1:])):
        raise InvalidInputError(f"split_points {points} must be strictly increasing (each stage "
                                "needs at least one layer)")
    return starts


def _balanced_starts(sizes: list[int], k: int) -> list[int]:
    """Contiguous cut of ``sizes`` into ``k`` non-empty parts minimizing the largest sum."""
    n = len(sizes)
    prefix = [0]
    for s in sizes:
        prefix.append(prefix[-1] + s)
    inf = float("inf")
    # best[j][i]: the smallest possible largest part when the first i layers form j parts
    best = [[inf] * (n + 1) for _ in range(k + 1)]
    cut = [[0] * (n + 1) for _ in range(k + 1)]
    best[0][0] = 0
    for j in range(1, k + 1):
        for i in range(j, n - (k - j) + 1):
            for c in range(j - 1, i):
                v = max(best[j - 1][c], prefix[i] - prefix[c])
                if v < best[j][i]:
                    best[j][i], cut[j][i] = v, c
    starts, i = [], n
    for j in range(k, 1, -1):
        i = cut[j][i]
        starts.append(i)
    return starts[::-1]


# ------------------------------------------------------------------ schedule
@dataclass
class StepStats:
    """Timing of the last ``PipelineSchedule.step`` on this stage.

    ``bubble`` is the fraction of the step this stage spent not computing
    (waiting for its neighbours, or sending); the theoretical bubble of a
    balanced pipeline is ``(p - 1) / (m + p - 1)``.
    """

    wall_s: float = 0.0
    compute_s: float = 0.0
    num_microbatches: int = 0

    @property
    def bubble(self) -> float:
        """The share of the step this stage spent waiting: 1 - compute_s / wall_s."""
        return 1.0 - self.compute_s / self.wall_s if self.wall_s > 0 else 0.0


class PipelineSchedule:
    """Runs one stage of a pipeline through a GPipe or 1F1B schedule.

    Args:
        stage: this rank's stage (a ``split_model`` stage or any module taking
            and returning one tensor).
        pp_group: a shoal.collective communicator over the pipeline's ranks;
            rank ``s`` of it runs stage ``s``.
        schedule: "gpipe" (every forward, then every backward: activations of
            all micro-batches held at once) or "1f1b" (after a warm-up, one
            forward then one backward: at most ``p - s`` micro-batches held
            on stage ``s``). The same bubble, ``(p - 1) / (m + p - 1)``.
        num_microbatches: micro-batches per step (``m``).
        loss_fn: ``loss_fn(output, targets)`` -> a mean loss; needed on the
            last stage.
        broadcast_loss: also return the loss on every other stage (one small
            broadcast per step), e.g. for ``report()`` on rank 0.

    Every send and receive is bounded by the group's timeout.

    Raises:
        InvalidInputError: bad schedule, num_microbatches, or no loss_fn on
            the last stage.
    """

    def __init__(self, stage: nn.Module, pp_group, schedule: str = "1f1b",
                 num_microbatches: int = 4, loss_fn=None, broadcast_loss: bool = False):
        if schedule not in SCHEDULES:
            raise InvalidInputError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        if not isinstance(num_microbatches, int) or num_microbatches < 1:
            raise InvalidInputError(f"num_microbatches must be a positive int, got "
                                    f"{num_microbatches!r}")
        self.stage, self.group, self.schedule = stage, pp_group, schedule
        self.num_microbatches, self.loss_fn = num_microbatches, loss_fn
        self.broadcast_loss = broadcast_loss
        self.rank, self.num_stages = pp_group.rank, pp_group.world_size
        self.is_first, self.is_last = self.rank == 0, self.rank == self.num_stages - 1
        if self.is_last and loss_fn is None:
            raise InvalidInputError(f"stage {self.rank} is the last of {self.num_stages}: it needs "
                                    "loss_fn(output, targets)")
        self.stats = StepStats()
        params = next(iter(stage.parameters()), None)
        self.device = params.device if params is not None else torch.device("cpu")
        self._step = 0
        self._key = None             # micro-batch sizes of the previous step
        self._in_meta: list = []      # per micro-batch (shape, dtype, requires_grad) received
        self._out_meta: list = []     # per micro-batch (shape, dtype, requires_grad) sent
        self._in_bufs: dict = {}
        self._grad_bufs: dict = {}

    # -------------------------------------------------------------- public
    def step(self, inputs=None, targets=None):
        """Forward and backward of every micro-batch of one batch on this stage.

        Gradients accumulate into the stage's ``.grad`` (call
        ``optimizer.step()`` and ``zero_grad()`` as usual).

        Args:
            inputs: the batch (a tensor; dimension 0 is the batch), on the
                first stage; ignored elsewhere.
            targets: the batch's targets, on the last stage; ignored elsewhere.

        Returns:
            On the last stage the batch's loss (a 0-dim tensor, the
            micro-batch losses weighted by size); on the other stages None,
            or the same loss with ``broadcast_loss``.
        """
        t0 = time.perf_counter()
        self.stats = StepStats(num_microbatches=self.num_microbatches)
        self._step += 1
        m = self.num_microbatches
        micro_in = self._split("inputs", inputs) if self.is_first else None
        micro_tg = self._split("targets", targets) if self.is_last else None
        key = self._exchange_key([len(x) for x in micro_in] if self.is_first else None)
        renegotiate = key != self._key
        self._key = key
        if self.is_last:
            if len(targets) != sum(key):
                raise InvalidInputError(f"targets hold {len(targets)} rows but the first stage's "
                                        f"inputs hold {sum(key)}; pass the same batch's targets")
            micro_tg = torch.tensor_split(targets, list(_cumsum(key))[:-1])
            total = sum(key)
            weights = [k / total for k in key]
        inputs_of, outputs_of, losses = [None] * m, [None] * m, []
        pending_grad = []    # a gradient for s - 1 held back until the next activation arrived

        sync_ctx = getattr(self.stage, "no_sync", None)   # a DDP-wrapped stage: sync on the last backward

        def forward(i):
            if self.is_first:
                x = micro_in[i]
            else:
                x = self._recv_activation(i, renegotiate)
            while pending_grad:
                self.group.send(pending_grad.pop(), self.rank - 1, tag=_TAG_GRAD)
            c = time.perf_counter()
            out = self.stage(x)
            if self.is_last:
                loss = self.loss_fn(out, micro_tg[i]) * weights[i]
                losses.append(loss.detach())
                out = loss
            self.stats.compute_s += time.perf_counter() - c
            inputs_of[i], outputs_of[i] = x, out
            if not self.is_last:
                self._send_activation(i, out, renegotiate)

        def backward(i, last, forward_next):
            out = outputs_of[i]
            grad = None
            if not self.is_last:
                if not self._out_meta[i][2]:
                    out = None    # nothing upstream of the next stage needs a gradient
                else:
                    grad = self._recv_grad(i, out)
            c = time.perf_counter()
            if out is not None and out.requires_grad:
                if sync_ctx is not None and not last:
                    with sync_ctx():
                        torch.autograd.backward(out, grad)
                else:
                    torch.autograd.backward(out, grad)
            self.stats.compute_s += time.perf_counter() - c
            x = inputs_of[i]
            inputs_of[i] = outputs_of[i] = None
            if not self.is_first and self._in_meta[i][2]:
                g = x.grad if x.grad is not None else torch.zeros_like(x)
                if forward_next:
                    pending_grad.append(g)   # s - 1 sends that activation before it receives this
                else:
                    self.group.send(g, self.rank - 1, tag=_TAG_GRAD)

        actions = self._actions()
        with torch.enable_grad():
            for k, (kind, i) in enumerate(actions):
                if kind == "F":
                    forward(i)
                else:
                    nxt = actions[k + 1][0] if k + 1 < len(actions) else None
                    backward(i, i == m - 1, nxt == "F")
        loss = torch.stack(losses).sum().reshape(1) if self.is_last else None
        if self.broadcast_loss and self.num_stages > 1:
            loss = torch.empty(1, dtype=torch.float32) if loss is None else loss.float()
            self.group.broadcast(loss, src=self.num_stages - 1)
        self.stats.wall_s = time.perf_counter() - t0
        return None if loss is None else loss.reshape(())

    def _actions(self) -> list[tuple[str, int]]:
        """This stage's forwards ("F", i) and backwards ("B", i), in schedule order."""
        m = self.num_microbatches
        if self.schedule == "gpipe":
            return [("F", i) for i in range(m)] + [("B", i) for i in range(m)]
        warmup = min(self.num_stages - self.rank - 1, m)
        out = [("F", i) for i in range(warmup)]
        for i in range(m - warmup):
            out += [("F", warmup + i), ("B", i)]
        return out + [("B", i) for i in range(m - warmup, m)]

    def close(self) -> None:
        """Nothing to release (kept so a schedule can be used as a context manager)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -------------------------------------------------------------- helpers
    def _split(self, what: str, batch):
        if not isinstance(batch, torch.Tensor):
            raise InvalidInputError(f"stage {self.rank} needs {what} as a tensor (dimension 0 the "
                                    f"batch), got {type(batch).__name__}")
        if batch.dim() == 0 or len(batch) < self.num_microbatches:
            n = 0 if batch.dim() == 0 else len(batch)
            raise InvalidInputError(f"{what} has a batch of {n}, fewer than num_microbatches="
                                    f"{self.num_microbatches}; pass a batch of at least "
                                    f"{self.num_microbatches} or fewer micro-batches")
        return torch.tensor_split(batch, self.num_microbatches)

    def _exchange_key(self, sizes):
        # the step header: step number + micro-batch sizes, passed down the pipeline
        m = self.num_microbatches
        head = torch.empty(m + 1, dtype=torch.int64)
        if self.is_first:
            head[0] = self._step
            head[1:] = torch.tensor(sizes)
        else:
            self.group.recv(head, self.rank - 1, tag=_TAG_STEP)
            if int(head[0]) != self._step:
                raise CollectiveError(
                    f"pipeline stage {self.rank} is at step {self._step} but stage {self.rank - 1} "
                    f"sent step {int(head[0])}: every stage must call step() once per batch")
        if not self.is_last:
            self.group.send(head, self.rank + 1, tag=_TAG_STEP)
        return tuple(int(v) for v in head[1:])

    def _send_activation(self, i, out, renegotiate):
        if not isinstance(out, torch.Tensor):
            raise InvalidInputError(f"stage {self.rank} returned {type(out).__name__}; a pipeline "
                                    "stage must return one tensor")
        meta = (tuple(out.shape), out.dtype, bool(out.requires_grad))
        if renegotiate:
            if i == 0:
                self._out_meta = []
            self._out_meta.append(meta)
            self.group.send(_encode_meta(meta), self.rank + 1, tag=_TAG_SHAPE)
        elif meta != self._out_meta[i]:
            raise InvalidInputError(
                f"stage {self.rank}'s output for micro-batch {i} is {meta[0]} {meta[1]}, but it was "
                f"{self._out_meta[i][0]} {self._out_meta[i][1]} for the same micro-batch sizes "
                "before; a stage's output shape must depend only on its input's")
        self.group.send(out.detach().contiguous(), self.rank + 1, tag=_TAG_ACT)

    def _recv_activation(self, i, renegotiate):
        if renegotiate:
            if i == 0:
                self._in_meta, self._in_bufs = [], {}
            head = torch.empty(3 + _MAX_DIMS, dtype=torch.int64)
            self.group.recv(head, self.rank - 1, tag=_TAG_SHAPE)
            self._in_meta.append(_decode_meta(head))
        shape, dtype, requires_grad = self._in_meta[i]
        buf = self._in_bufs.get(i)
        if buf is None:
            buf = self._in_bufs[i] = torch.empty(shape, dtype=dtype, device=self.device)
        self.group.recv(buf, self.rank - 1, tag=_TAG_ACT)
        x = buf.detach()
        if requires_grad:
            x.requires_grad_(True)
        return x

    def _recv_grad(self, i, out):
        key = (tuple(out.shape), out.dtype)
        buf = self._grad_bufs.get(key)
        if buf is None:
            buf = self._grad_bufs[key] = torch.empty(key[0], dtype=key[1], device=out.device)
        self.group.recv(buf, self.rank + 1, tag=_TAG_GRAD)
        return buf


def _cumsum(sizes):
    total = 0
    for s in sizes:
        total += s
        yield total


def _encode_meta(meta) -> torch.Tensor:
    shape, dtype, requires_grad = meta
    if len(shape) > _MAX_DIMS:
        raise InvalidInputError(f"a pipeline activation has {len(shape)} dimensions; at most "
                                f"{_MAX_DIMS} are supported")
    if dtype not in _DTYPES:
        raise InvalidInputError(f"a pipeline activation has dtype {dtype}; supported: {_DTYPES}")
    head = torch.zeros(3 + _MAX_DIMS, dtype=torch.int64)
    head[0], head[1], head[2] = _DTYPES.index(dtype), len(shape), int(requires_grad)
    head[3:3 + len(shape)] = torch.tensor(shape, dtype=torch.int64)
    return head


def _decode_meta(head: torch.Tensor):
    code, ndim, requires_grad = (int(v) for v in head[:3])
    return tuple(int(v) for v in head[3:3 + ndim]), _DTYPES[code], bool(requires_grad)


__all__ = ["PipelineSchedule", "PipelineStage", "StepStats", "pipeline_layers", "split_model",
           "SCHEDULES"]
