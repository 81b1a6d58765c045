"""Pipeline parallelism: a model cut into stages, one stage (or several) per rank of a pipeline group.

    stages = split_model(model, num_stages=pp_group.world_size)      # or split_points=[...]
    sched = PipelineSchedule(stages[pp_group.rank], pp_group, schedule="1f1b",
                             num_microbatches=8, loss_fn=nn.functional.cross_entropy)
    loss = sched.step(x, y)       # forward + backward of every micro-batch; loss on the last stage

This module cuts the model; ``schedule.py`` runs the stages (GPipe, 1F1B,
interleaved 1F1B) and is re-exported here.
"""
from __future__ import annotations

from torch import nn

from shoal.exceptions import InvalidInputError
from shoal.train.parallel.schedule import (SCHEDULES, PipelineSchedule, StepStats, pipeline_actions,
                                           replay_bubble, span_bubble, theoretical_bubble)


# ------------------------------------------------------------------ splitting
def pipeline_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model as an ordered list of ``(name, layer)`` that a pipeline may cut between.

    An ``nn.Sequential`` gives its children. Any other model must hold its
    blocks in exactly one ``nn.ModuleList``; its children, in registration
    order with that list expanded (``blocks.0``, ``blocks.1``, ...), must
    compute what its ``forward`` computes (e.g. ``embed``, ``blocks``,
    ``norm``, ``head``).

    A layer or block that defines ``pipeline_sublayers()``, returning the
    names of some of its children in order, is expanded into them
    (``blocks.3.attn``, ``blocks.3.mlp``), so a cut may fall inside it: those
    children, run in that order, must compute its ``forward`` (e.g. a
    transformer block whose attention and MLP are each a residual child
    module), and must hold all its parameters.

    Raises:
        InvalidInputError: no list of blocks, several, parameters held by
            the model itself (they would belong to no stage), or a
            ``pipeline_sublayers()`` that names no child, a missing child, a
            child twice, or leaves parameters of its layer outside them.
    """
    if isinstance(model, nn.Sequential):
        return [sub for name, child in model.named_children() for sub in _sublayers(name, child)]
    lists = [n for n, c in model.named_children() if isinstance(c, nn.ModuleList)]
    if len(lists) != 1:
        raise InvalidInputError(
            f"{type(model).__name__} has {len(lists)} nn.ModuleList children "
            f"({', '.join(lists) or 'none'}); a pipeline needs an nn.Sequential or a model with "
            "exactly one nn.ModuleList of blocks. Pass split_model an nn.Sequential of its layers")
    own = _own_tensors(model)
    if own:
        raise InvalidInputError(
            f"{type(model).__name__} holds parameters/buffers {own} outside its layers; they would "
            "belong to no pipeline stage. Move them into a child module (e.g. an embedding layer)")
    layers = []
    for name, child in model.named_children():
        if name == lists[0]:
            for i, block in child.named_children():
                layers += _sublayers(f"{name}.{i}", block)
        else:
            layers += _sublayers(name, child)
    return layers


def _own_tensors(module: nn.Module) -> list[str]:
    return [n for n, _ in module.named_parameters(recurse=False)] + \
           [n for n, _ in module.named_buffers(recurse=False)]


def _sublayers(name: str, layer: nn.Module) -> list[tuple[str, nn.Module]]:
    # a layer that lists its sub-layers is cut between them; any other is one unit
    if not hasattr(layer, "pipeline_sublayers"):
        return [(name, layer)]
    what = f"{name} ({type(layer).__name__})"
    subs = layer.pipeline_sublayers()
    if isinstance(subs, str) or not subs or not all(isinstance(s, str) for s in subs):
        raise InvalidInputError(f"{what}.pipeline_sublayers() must return a non-empty list of "
                                f"names of its children, got {subs!r}")
    children = dict(layer.named_children())
    missing = [s for s in subs if s not in children]
    if missing:
        raise InvalidInputError(f"{what}.pipeline_sublayers() names {missing}, which are not its "
                                f"children; its children are {list(children)}")
    twice = sorted({s for s in subs if list(subs).count(s) > 1})
    if twice:
        raise InvalidInputError(f"{what}.pipeline_sublayers() names {twice} more than once; each "
                                "child may run once")
    left = [c for c, mod in children.items() if c not in subs
            and any(True for _ in [*mod.parameters(), *mod.buffers()])] + _own_tensors(layer)
    if left:
        raise InvalidInputError(f"{what} holds parameters in {left}, outside the sub-layers "
                                f"{list(subs)} that pipeline_sublayers() names; they would belong "
                                "to no stage. List those children too, or move them into one")
    return [(f"{name}.{s}", children[s]) for s in subs]


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
            *parents, leaf = name.split(".")
            holder = self
            for part in parents:   # blocks.3.attn -> blocks["3"]["attn"], keeping the names
                if part not in holder._modules:
                    holder.add_module(part, nn.ModuleDict())
                holder = holder._modules[part]
            holder.add_module(leaf, layer)
        # looked up by name at every call, so a wrapper put in a layer's place later
        # (sharded data parallel, activation checkpointing) is the one that runs
        self._path = [tuple(n.split(".")) for n in self.layer_names]

    def forward(self, x):
        """Run this stage's layers in order."""
        for path in self._path:
            layer = self
            for part in path:
                layer = layer._modules[part]
            x = layer(x)
        return x

    def extra_repr(self) -> str:
        """The layer's settings, shown in ``repr(model)``."""
        return f"stage {self.index} of {self.num_stages}: {', '.join(self.layer_names)}"


def split_model(model: nn.Module, num_stages: int, split_points=None, balance="params",
                sample=None, loss_fn=None, group=None) -> list[PipelineStage]:
    """Cut ``model`` into ``num_stages`` consecutive stages.

    Args:
        model: an ``nn.Sequential`` or a model with one ``nn.ModuleList`` of
            blocks (see ``pipeline_layers``). Its modules are shared, not copied.
        num_stages: number of stages (the pipeline group's world size).
        split_points: where stages 1..num_stages-1 begin: layer indices into
            ``pipeline_layers(model)`` or layer names (``"blocks.2"``).
        balance: without split points, "params" (the default) cuts so the
            largest stage holds as few parameters as possible; "layers"
            gives every stage the same number of layers; "time" times every
            layer's forward and backward on ``sample`` (``profile_layers``:
            the loss on the last layer, no input gradient on the first) and
            cuts so the slowest stage is as fast as possible; or a list of
            per-layer costs (e.g. ``profile_layers``' result), cut the same way.
        sample: for balance="time", ``(inputs, targets)`` of one micro-batch
            (targets may be None without ``loss_fn``).
        loss_fn: for balance="time", ``loss_fn(output, targets)`` as the
            pipeline's last stage computes it.
        group: for balance="time", the pipeline group: its ranks' timings
            are averaged and rank 0's cut is used by all, so every rank
            cuts the model the same way (timings differ between processes).

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
    elif isinstance(balance, str) and balance == "params":
        sizes = [sum(p.numel() for p in layer.parameters()) for _, layer in layers]
        starts = _balanced_starts(sizes, num_stages)
    elif isinstance(balance, str) and balance == "time":
        if sample is None:
            raise InvalidInputError("balance='time' needs sample=(inputs, targets): one "
                                    "micro-batch to time each layer's forward and backward on")
        inputs, targets = sample if isinstance(sample, (tuple, list)) else (sample, None)
        costs = profile_layers(model, inputs, targets, loss_fn, group=group)
        starts = _agreed(_balanced_starts(costs, num_stages), group)
    elif isinstance(balance, (list, tuple)):
        if len(balance) != n or not all(isinstance(c, (int, float)) and c >= 0 for c in balance):
            raise InvalidInputError(f"balance as per-layer costs needs {n} non-negative numbers "
                                    f"(one per layer of {type(model).__name__}), got {balance!r}")
        starts = _balanced_starts([float(c) for c in balance], num_stages)
    else:
        raise InvalidInputError(f"balance must be 'params', 'layers', 'time' or a list of "
                                f"per-layer costs, got {balance!r}")
    return _stages_at(layers, starts, num_stages)


# ------------------------------------------------------------------ balancing by measured time
def profile_layers(model: nn.Module, inputs, targets=None, loss_fn=None, repeats: int = 5,
                   warmup: int = 2, group=None) -> list[float]:
    """Seconds each layer of ``pipeline_layers(model)`` takes for one micro-batch, forward + backward.

    Runs the model layer by layer on ``inputs`` the way pipeline stages
    would: every layer but the first gets its input as a leaf that needs a
    gradient (a stage boundary could fall before it; inside a stage the
    gradient is computed anyway), the first gets ``inputs`` as given (no
    input gradient, as on the first stage), and ``loss_fn(output, targets)``
    and its backward count as part of the last layer. Each layer's forward
    and backward are timed separately over ``repeats`` runs after ``warmup``;
    the median is kept. On CPU with one intra-op thread the clock is the
    thread's CPU time (other load on the host barely moves it); otherwise
    wall time (with ``torch.cuda.synchronize`` on a GPU).

    Args:
        model: what ``split_model`` would cut.
        inputs: one micro-batch of the model's input, on the model's device.
        targets: its targets, for ``loss_fn``.
        loss_fn: ``loss_fn(output, targets)``; without it the last layer's
            output is reduced by ``sum()`` for the backward.
        group: a communicator: the timings are averaged over its ranks
            (one allreduce), so every rank gets the same costs.

    Returns:
        One cost in seconds per layer, in ``pipeline_layers`` order. The
        model's gradients are left as they were.
    """
    import statistics
    import time

    import torch
    layers = pipeline_layers(model)
    param = next(model.parameters(), None)
    cuda = param is not None and param.device.type == "cuda"
    cpu_clock = not cuda and torch.get_num_threads() == 1

    def now():
        if cuda:
            torch.cuda.synchronize(param.device)
        return time.thread_time() if cpu_clock else time.perf_counter()

    times = [[] for _ in layers]
    was_training = model.training
    held = {p: p.grad for p in model.parameters()}   # the caller's gradients, put back after
    model.train()
    try:
        for p in held:
            p.grad = None     # autograd would add into the caller's tensors otherwise
        for rep in range(warmup + repeats):
            fwd, xs, outs, x = [], [], [], inputs
            with torch.enable_grad():
                for k, (_, layer) in enumerate(layers):
                    if k > 0 and isinstance(x, torch.Tensor) and x.is_floating_point():
                        x = x.detach().requires_grad_(True)
                    t = now()
                    out = layer(x)
                    if k == len(layers) - 1:
                        out = loss_fn(out, targets) if loss_fn is not None else out.sum()
                    fwd.append(now() - t)
                    xs.append(x)
                    outs.append(out)
                    x = out
            grad, bwd = None, [0.0] * len(layers)
            for k in reversed(range(len(layers))):
                t = now()
                if outs[k].requires_grad:
                    torch.autograd.backward(outs[k], grad)
                bwd[k] = now() - t
                x = xs[k]
                grad = x.grad if isinstance(x, torch.Tensor) and x.grad is not None else None
                if k > 0 and grad is None:
                    grad = torch.zeros_like(x) if isinstance(x, torch.Tensor) else None
            if rep >= warmup:
                for k in range(len(layers)):
                    times[k].append(fwd[k] + bwd[k])
    finally:
        for p, g in held.items():
            p.grad = g
        model.train(was_training)
    costs = [statistics.median(t) for t in times]
    if group is not None and group.world_size > 1:
        total = torch.tensor(costs, dtype=torch.float64)
        group.allreduce(total)
        costs = [c / group.world_size for c in total.tolist()]
    return costs


def rebalance(model: nn.Module, pp_group, sample, loss_fn, schedule: str = "1f1b",
              num_microbatches: int = 4, virtual_stages: int = 1, costs=None, steps: int = 3,
              tries: int = 3, warmup: int = 1, min_gain: float = 0.02) -> list[PipelineStage]:
    """Cut ``model`` into stages that are equal as the pipeline runs them, not as profiled alone.

    A layer timed on its own (``profile_layers``) does not cost what it costs
    inside a running pipeline: the stages' ranks hold different numbers of
    activations, share caches and cores with other work, and the first and
    last stages carry the embedding and the loss. With ``m`` micro-batches a
    stage ``e`` above the mean makes the bubble about ``1 + m e`` times the
    theory, so a few percent matter. This starts from the profiled cut, runs
    ``steps`` pipeline steps of the real schedule on ``sample`` (after
    ``warmup``), measures every stage's compute in situ (the CPU time of its
    forwards and backwards, including the loss on the last stage; wall time
    on a GPU or with several intra-op threads), scales each layer's cost by
    the ratio of its stage's measured to predicted compute, and cuts again;
    up to ``tries`` cuts are run, and a later one replaces the one held only
    if its step, replayed from the stages' measured compute, is shorter by
    more than ``min_gain`` (2%): on a busy host a stage's compute measured
    minutes apart differs by a few percent, so a smaller gain is noise. Call it before the optimizer is created: no optimizer
    step is taken, the parameters are unchanged and their gradients are put
    back as they were. Every rank of ``pp_group`` must call it with the same
    arguments; all get the same cut.

    Args:
        model: what ``split_model`` would cut; every rank holds all of it.
        pp_group: the pipeline group (rank ``r`` runs stage ``r``, and
            ``r + p``, ... with virtual stages).
        sample: ``(inputs, targets)``: one batch as ``PipelineSchedule.step``
            takes it (inputs used on rank 0, targets on the last rank).
        loss_fn: ``loss_fn(output, targets)``, as the last stage computes it.
        schedule, num_microbatches: as ``PipelineSchedule`` will run them.
        virtual_stages: stages per rank ("interleaved"): the model is cut
            into ``p * virtual_stages`` stages.
        costs: per-layer costs to start from (``profile_layers``' result);
            by default ``profile_layers`` on one micro-batch of ``sample``.
        steps: measured steps per cut; warmup: unmeasured steps before them.
        tries: the most cuts to run.
        min_gain: the share by which a re-cut's replayed step must be
            shorter to replace the cut held.

    Returns:
        Every stage, in order, as ``split_model`` returns them; a rank keeps
        ``stages[rank::p]``. ``rebalance.last`` holds the measured compute
        (seconds per step) of every stage of every cut tried.

    Raises:
        InvalidInputError: bad ``steps``/``tries``, or what ``split_model``
            and ``PipelineSchedule`` reject.
    """
    import statistics

    import torch
    if not (isinstance(steps, int) and steps >= 1 and isinstance(tries, int) and tries >= 1
            and isinstance(warmup, int) and warmup >= 0 and 0 <= min_gain < 1):
        raise InvalidInputError(f"rebalance needs steps >= 1, tries >= 1, warmup >= 0 and "
                                f"0 <= min_gain < 1, got steps={steps!r}, tries={tries!r}, "
                                f"warmup={warmup!r}, min_gain={min_gain!r}")
    p, rank = pp_group.world_size, pp_group.rank
    n_stages = p * virtual_stages
    layers = pipeline_layers(model)
    if len(layers) < n_stages:
        raise InvalidInputError(f"{type(model).__name__} has {len(layers)} layers, fewer than "
                                f"{n_stages} stages; use fewer stages or virtual stages")
    inputs, targets = sample if isinstance(sample, (tuple, list)) else (sample, None)
    if costs is None:
        mb = max(1, len(inputs) // num_microbatches)
        costs = profile_layers(model, inputs[:mb], None if targets is None else targets[:mb],
                               loss_fn, group=pp_group)
    elif len(costs) != len(layers):
        raise InvalidInputError(f"costs has {len(costs)} entries; {type(model).__name__} has "
                                f"{len(layers)} layers")
    costs = [float(c) for c in costs]
    param = next(model.parameters(), None)
    wall = (param is not None and param.device.type == "cuda") or torch.get_num_threads() != 1
    held = {q: q.grad for q in model.parameters()}
    measured: dict = {}                 # cut -> every stage's compute per step
    starts = _agreed(_best_cut(costs, schedule, p, virtual_stages, num_microbatches), pp_group)
    try:
        for q in held:
            q.grad = None
        for _ in range(tries):
            if tuple(starts) in measured:
                break                   # the calibrated costs lead back to a cut already run
            stages = _stages_at(layers, starts, n_stages)
            mine = stages[rank::p]
            sched = PipelineSchedule(mine if virtual_stages > 1 else mine[0], pp_group,
                                     schedule=schedule, num_microbatches=num_microbatches,
                                     loss_fn=loss_fn)
            per_step = []
            try:
                for k in range(warmup + steps):
                    sched.step(inputs, targets)
                    if k >= warmup:
                        spent = [0.0] * n_stages
                        for kind, s, i, start, end, cpu_s in sched.stats.events:
                            spent[s] += (end - start) if wall else cpu_s
                        per_step.append(spent)
                    for q in model.parameters():
                        q.grad = None
            finally:
                sched.close()
            # each stage runs on one rank: the sum over ranks is that rank's figure, exactly
            total = torch.tensor([statistics.median(col) for col in zip(*per_step)],
                                 dtype=torch.float64)
            if p > 1:
                pp_group.allreduce(total)
            spent = total.tolist()
            measured[tuple(starts)] = spent
            bounds = [0] + list(starts) + [len(layers)]
            for s, (a, b) in enumerate(zip(bounds, bounds[1:])):
                predicted = sum(costs[a:b])
                if predicted > 0 and spent[s] > 0:
                    scale = spent[s] / (num_microbatches * predicted)
                    costs[a:b] = [c * scale for c in costs[a:b]]
            starts = _agreed(_best_cut(costs, schedule, p, virtual_stages, num_microbatches),
                             pp_group)
    finally:
        for q, g in held.items():
            q.grad = g
    actions = [pipeline_actions(schedule, p, r, num_microbatches, virtual_stages) for r in range(p)]
    best, best_span = None, 0.0
    for cut, spent in measured.items():     # in the order tried: the profiled cut first
        span = _step_span(spent, actions, p)
        # a later cut must beat the one held by more than in-situ timings repeat to
        if best is None or span < (1.0 - min_gain) * best_span:
            best, best_span = cut, span
    rebalance.last = {cut: list(v) for cut, v in measured.items()}
    return _stages_at(layers, list(best), n_stages)


rebalance.last = {}


def _best_cut(costs, schedule, p, v, m) -> list[int]:
    """The cut of ``costs`` into ``p * v`` stages whose step is shortest under the schedule.

    One stage per rank: the cut whose slowest stage is fastest. Several per
    rank (interleaved): among the cuts whose slowest stage is within 25% of
    that, the one whose step, replayed with forward = 1/3 and backward = 2/3
    of a stage's cost, is shortest: a rank's stages together set the pace of
    the steady state, so their sums matter as much as the slowest stage.
    """
    k = p * v
    starts = _balanced_starts(costs, k)
    if v == 1 or len(costs) <= k:
        return starts
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    n = len(costs)
    bounds = [0] + starts + [n]
    limit = 1.25 * max(prefix[b] - prefix[a] for a, b in zip(bounds, bounds[1:])) + 1e-12
    actions = [pipeline_actions(schedule, p, r, m, v) for r in range(p)]

    def span(cut):
        b = [0] + cut + [n]
        return _step_span([prefix[b[s + 1]] - prefix[b[s]] for s in range(k)], actions, p)

    best, best_span = starts, span(starts)

    def walk(cut, at):
        nonlocal best, best_span
        left = k - 1 - len(cut)         # stages still to start after this one
        if left == 0:
            if prefix[n] - prefix[at] <= limit:
                t = span(cut)
                if t < best_span - 1e-12:
                    best, best_span = list(cut), t
            return
        for nxt in range(at + 1, n - left + 1):
            if prefix[nxt] - prefix[at] > limit:
                break
            if prefix[n] - prefix[nxt] <= limit * left:
                walk(cut + [nxt], nxt)
    walk([], 0)
    return best


_SHARE = {"F": 1 / 3, "B": 2 / 3, "I": 1 / 3, "W": 1 / 3}   # of a stage's cost, per kind of op


def _step_span(stage_costs, actions, p) -> float:
    # one step replayed with each stage's cost split by _SHARE, messages free
    from shoal.train.parallel.schedule import _replay
    tls = [[(kind, c * p + r, i, 0.0, stage_costs[c * p + r] * _SHARE[kind], 0)
            for kind, c, i in actions[r]] for r in range(p)]
    return max(_replay(tls)[0])


def _stages_at(layers, starts, num_stages) -> list[PipelineStage]:
    bounds = [0] + list(starts) + [len(layers)]
    return [PipelineStage(layers[a:b], i, num_stages) for i, (a, b) in enumerate(zip(bounds, bounds[1:]))]


def _agreed(starts: list[int], group) -> list[int]:
    # every rank must cut at the same layers: rank 0's choice is everyone's
    if group is None or group.world_size == 1 or not starts:
        return starts
    import torch
    t = torch.tensor(starts, dtype=torch.int64)
    group.broadcast(t, src=0)
    return [int(v) for v in t]


def stage_costs(costs, stages: list[PipelineStage], model: nn.Module) -> list[float]:
    """Sum of per-layer ``costs`` (e.g. ``profile_layers``') over each stage's layers."""
    index = {name: k for k, (name, _) in enumerate(pipeline_layers(model))}
    return [sum(costs[index[n]] for n in s.layer_names) for s in stages]


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


__all__ = ["PipelineSchedule", "PipelineStage", "StepStats", "pipeline_actions", "pipeline_layers",
           "profile_layers", "rebalance", "replay_bubble", "span_bubble", "split_model", "stage_costs", "theoretical_bubble",
           "SCHEDULES"]
