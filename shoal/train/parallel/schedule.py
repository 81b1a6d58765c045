"""Pipeline schedules: GPipe, 1F1B, interleaved 1F1B and zero bubble, one rank's part of a pipeline.

    stages = split_model(model, num_stages=pp_group.world_size)      # or split_points=[...]
    sched = PipelineSchedule(stages[pp_group.rank], pp_group, schedule="1f1b",
                             num_microbatches=8, loss_fn=nn.functional.cross_entropy)
    loss = sched.step(x, y)       # forward + backward of every micro-batch; loss on the last stage
    opt.step(); opt.zero_grad()

A batch is cut into micro-batches along dimension 0. Stage ``s`` receives
micro-batch activations from ``s - 1`` and sends them to ``s + 1``; in
backward the gradients of those activations travel the other way. With
``virtual_stages=v`` (schedule "interleaved") the model is cut into ``p * v``
stages and rank ``r`` runs stages ``r, r + p, r + 2p, ...`` (Megatron-LM's
interleaved 1F1B), which divides the bubble by ``v`` for ``v`` times the
messages. Schedule "zb" (ZB-H1 of Qi et al., "Zero Bubble Pipeline
Parallelism", 2024) splits each backward in two: "I", the gradient of the
stage's input, which the stage before waits for, and "W", the gradients of
the linear layers' weights (``nn.Linear``, column- and row-parallel layers;
``deferred.py``), which nobody waits for and which fill the time a
rank would otherwise wait; with the three equal the bubble falls from
``(p - 1) / (m + p - 1)`` to ``(p - 1) / (3 m + p - 1)`` at 1F1B's memory
(``(p - 1) / (3 v m + p - 1)`` with ``v`` virtual stages per rank).

A stage never waits for a neighbour to take an activation: on CPU the
training thread writes what the connection takes at once and the group's
sender thread the rest; it reads a neighbour's messages in the order the
neighbour sends them (each rank derives every rank's schedule) when it needs
one, keeping those read on the way in a buffer per (stage, micro-batch), so a
stage waits only for data its schedule needs and that has not been sent yet,
and a message costs no hand-off between threads. On a GPU a sender thread
and a receiver thread per neighbour do this off the training thread. Every wait is bounded by the group's
timeout. Shapes are negotiated when the micro-batch sizes of a step differ
from the previous step's, so a steady loop moves only the payload and one
small step header per link.

The loss of each micro-batch is weighted by its share of the batch, so the
accumulated gradients equal those of ``loss_fn`` (a mean) over the whole
batch in one process. ``stats`` times every forward and backward (wall and
CPU time) and every wait, and ``replay_bubble`` replays the timelines of all
ranks without communication or other load, which separates the bubble the
schedule itself implies from the time lost to messages and a busy host.
"""
from __future__ import annotations

import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

from shoal.exceptions import CollectiveError, InvalidInputError
from shoal.train.parallel import deferred
from shoal.train.parallel.pp_comm import _TAG_ACT, _TAG_GRAD, _TAG_SHAPE, _TAG_STEP, Links, encode_meta

SCHEDULES = ("gpipe", "1f1b", "interleaved", "zb")


# ------------------------------------------------------------------ the order of work
def pipeline_actions(schedule: str, num_stages: int, rank: int, num_microbatches: int,
                     virtual_stages: int = 1) -> list[tuple[str, int, int]]:
    """One rank's forwards ``("F", chunk, i)`` and backwards ``("B", chunk, i)``, in order.

    ``chunk`` indexes the rank's stages (always 0 without virtual stages);
    chunk ``c`` of rank ``r`` is stage ``c * num_stages + r`` of the model.
    "1f1b" runs ``p - r - 1`` warm-up forwards, then alternates; "interleaved"
    is Megatron-LM's order (forwards in groups of ``p`` micro-batches per
    chunk, warm-up ``2 (p - r - 1) + (v - 1) p``). "zb" is 1F1B's order (with
    virtual stages, the interleaved order with a warm-up of ``p - r - 1 +
    (v - 1) p``) with each backward split into ``("I", c, i)`` (the input's
    gradient) and ``("W", c, i)`` (the weights'): rank ``r`` runs its first
    ``r`` steady rounds without a W and its last ``r`` W's after every I, so
    the W's fill the drain at the end of the step (ZB-H1).
    """
    p, m, v = num_stages, num_microbatches, virtual_stages
    if schedule == "gpipe":
        return [("F", 0, i) for i in range(m)] + [("B", 0, i) for i in range(m)]
    if schedule == "1f1b":
        warmup = min(p - rank - 1, m)
        out = [("F", 0, i) for i in range(warmup)]
        for i in range(m - warmup):
            out += [("F", 0, warmup + i), ("B", 0, i)]
        return out + [("B", 0, i) for i in range(m - warmup, m)]

    def fwd(k):
        return (k % (p * v)) // p, (k // (p * v)) * p + k % p

    def bwd(k):
        c, i = fwd(k)
        return v - 1 - c, i
    total = m * v
    if schedule == "zb":
        # torch's and the paper's ZB-H1 warm-up: one forward per later stage, not two; the W of
        # the k-th backward follows the (k + rank)-th
        warmup = min(p - rank - 1 + (v - 1) * p, total)
        out = [("F", *fwd(k)) for k in range(warmup)]
        weights = 0
        for k in range(total):
            if k + warmup < total:
                out.append(("F", *fwd(k + warmup)))
            out.append(("I", *bwd(k)))
            if k >= rank:
                out.append(("W", *bwd(weights)))
                weights += 1
        return out + [("W", *bwd(k)) for k in range(weights, total)]
    warmup = total if m == p else min(2 * (p - rank - 1) + (v - 1) * p, total)
    out = [("F", *fwd(k)) for k in range(warmup)]
    for k in range(total - warmup):
        out += [("F", *fwd(warmup + k)), ("B", *bwd(k))]
    return out + [("B", *bwd(k)) for k in range(total - warmup, total)]


# ------------------------------------------------------------------ timing
@dataclass
class StepStats:
    """Timing of the last ``PipelineSchedule.step`` on this rank.

    ``events`` holds one ``(kind, stage, microbatch, start, end, cpu_s)`` per
    forward ("F") and backward ("B"; "zb": the input's gradient "I" and the
    weights' "W"), ``start``/``end`` on
    ``time.perf_counter``'s clock (the same for every process of a host) and
    ``cpu_s`` the CPU time this thread spent in it: a forward whose wall time
    is far above its CPU time was descheduled by other load.

    Attributes:
        wall_s: the whole step.
        compute_s: wall time inside forwards and backwards.
        compute_cpu_s: CPU time inside them.
        cpu_s: CPU time of the training thread over the whole step (what is
            left after ``compute_cpu_s`` is the schedule's own work).
        wait_s: time blocked waiting for the step header from the rank before,
            a neighbour's activation or gradient, and at the end of the step
            for the last sends to leave.
    """

    wall_s: float = 0.0
    compute_s: float = 0.0
    compute_cpu_s: float = 0.0
    cpu_s: float = 0.0
    wait_s: float = 0.0
    num_microbatches: int = 0
    events: list = field(default_factory=list)

    @property
    def bubble(self) -> float:
        """The share of the step this rank spent not computing: 1 - compute_s / wall_s."""
        return 1.0 - self.compute_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def overhead_s(self) -> float:
        """Neither computing nor waiting: bookkeeping, the step header, handing off sends."""
        return max(0.0, self.wall_s - self.compute_s - self.wait_s)


def replay_bubble(timelines: list[list], cpu: bool = False) -> list[float]:
    """The bubble each rank would see if only the schedule's dependencies made it wait.

    Replays every rank's forwards and backwards in their order, with their
    measured durations (``cpu=True``: their CPU times, i.e. without the
    time other processes took the core) and messages that take no time: an
    op starts when its rank finished the previous op and its input exists
    (the forward of the stage before, or the backward of the stage after).

    Args:
        timelines: ``stats.events`` of every rank of the pipeline, in rank order.
        cpu: replay with CPU times instead of wall times.

    Returns:
        Per rank, 1 - (its busy time) / (the replayed step's length).

    Raises:
        InvalidInputError: timelines that cannot all run (not one step of one
            schedule).
    """
    clock, busy = _replay(timelines, cpu)
    span = max(clock)
    return [1.0 - b / span if span > 0 else 0.0 for b in busy]


def _replay(timelines, cpu=False):
    # each rank's end time and busy time, messages free: the schedule's dependencies alone
    last_stage = max(e[1] for tl in timelines for e in tl)
    done: dict = {}
    clock = [0.0] * len(timelines)
    pos = [0] * len(timelines)
    busy = [0.0] * len(timelines)
    remaining = sum(len(tl) for tl in timelines)
    while remaining:
        progressed = False
        for r, tl in enumerate(timelines):
            while pos[r] < len(tl):
                kind, s, i, start, end, cpu_s = tl[pos[r]]
                # an input's gradient ("I", zero bubble) stands where a backward would; a weight
                # gradient ("W") waits only for its own rank's earlier work
                key = "B" if kind == "I" else kind
                dep = ("F", s - 1, i) if kind == "F" else ("B", s + 1, i)
                if (kind == "F" and s == 0) or (key == "B" and s == last_stage) or kind == "W":
                    ready = 0.0
                elif dep in done:
                    ready = done[dep]
                else:
                    break
                dur = cpu_s if cpu else end - start
                clock[r] = max(clock[r], ready) + dur
                busy[r] += dur
                done[(key, s, i)] = clock[r]
                pos[r] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            raise InvalidInputError("replay_bubble: the timelines' dependencies cannot all be met; "
                                    "pass the events of one step of every rank, in rank order")
    return clock, busy


def span_bubble(timelines: list[list]) -> list[float]:
    """The bubble each rank measured in one step, over the pipeline's span rather than its own call.

    The span runs from the first forward of any rank to the last backward
    of any rank (``stats.events`` of one step of every rank; one clock,
    ``time.perf_counter``, for every process of a host); a rank's bubble is
    the share of it that rank was not computing: the definition behind the
    theory ``(p - 1) / (v m + p - 1)``. ``StepStats.bubble`` instead divides
    by the rank's own ``step`` call, which also counts as idle the time a
    rank waits while the others are between steps (``zero_grad``, the
    optimizer, the loop), and excludes nothing a rank itself does.

    Returns:
        Per rank, 1 - (its compute wall time) / (the step's span).
    """
    start = min(e[3] for tl in timelines for e in tl)
    end = max(e[4] for tl in timelines for e in tl)
    span = end - start
    return [1.0 - sum(e[4] - e[3] for e in tl) / span if span > 0 else 0.0 for tl in timelines]


def theoretical_bubble(num_stages: int, num_microbatches: int, virtual_stages: int = 1,
                       schedule: str | None = None) -> float:
    """The bubble of a balanced pipeline: ``(p - 1) / (v m + p - 1)``.

    For ``schedule="zb"``, with the forward, the input's gradient and the
    weights' taking equal time, ``(p - 1) / (3 v m + p - 1)``: only the
    warm-up's forward and input gradient wait, a W fills the rest.
    """
    p, m, v = num_stages, num_microbatches, virtual_stages
    if schedule == "zb":
        return (p - 1) / (3 * v * m + p - 1)
    return (p - 1) / (v * m + p - 1)


# ------------------------------------------------------------------ the schedule
class PipelineSchedule:
    """Runs this rank's stage(s) of a pipeline through GPipe, 1F1B, interleaved 1F1B or zero bubble.

    Args:
        stage: this rank's stage (a ``split_model`` stage or any module taking
            and returning one tensor), or, for "interleaved", a list of its
            ``virtual_stages`` stages (``split_model(model, p * v)[rank::p]``).
        pp_group: a shoal.collective communicator over the pipeline's ranks;
            rank ``r`` of it runs stage ``r`` (and ``r + p``, ... interleaved).
        schedule: "gpipe" (every forward, then every backward: activations of
            all micro-batches held at once), "1f1b" (after a warm-up, one
            forward then one backward: at most ``p - r`` micro-batches held
            on rank ``r``), both with the bubble ``(p - 1) / (m + p - 1)``;
            or "interleaved" (1F1B over ``v`` stages per rank:
            ``(p - 1) / (v m + p - 1)``; ``m`` must be a multiple of ``p``);
            or "zb" (zero bubble, ZB-H1: 1F1B's order and memory, or
            interleaved 1F1B's given a list of stages, each backward split
            into the input's gradient and, later, the linear layers' weight
            gradients; ``(p - 1) / (3 v m + p - 1)`` when the three take equal
            time). A DDP or ZeRO stage under "zb" accumulates its gradients
            over the step and averages them (``sync_gradients()``) after the
            last W, where the other schedules average during the last
            backward.
        num_microbatches: micro-batches per step (``m``).
        loss_fn: ``loss_fn(output, targets)`` -> a mean loss; needed on the
            rank holding the last stage.
        broadcast_loss: also return the loss on every other rank (one small
            broadcast per step), e.g. for ``report()`` on rank 0.

    Raises:
        InvalidInputError: bad schedule, num_microbatches, stage list, or no
            loss_fn on the last rank.
    """

    def __init__(self, stage, pp_group, schedule: str = "1f1b", num_microbatches: int = 4,
                 loss_fn=None, broadcast_loss: bool = False):
        if schedule not in SCHEDULES:
            raise InvalidInputError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        if not isinstance(num_microbatches, int) or num_microbatches < 1:
            raise InvalidInputError(f"num_microbatches must be a positive int, got "
                                    f"{num_microbatches!r}")
        chunks = list(stage) if isinstance(stage, (list, tuple, nn.ModuleList)) else [stage]
        self.rank, self.num_stages = pp_group.rank, pp_group.world_size
        if schedule == "interleaved" or (schedule == "zb" and len(chunks) > 1):
            if self.num_stages < 2:
                raise InvalidInputError(f"schedule={schedule!r} with several stages per rank needs "
                                        "a pipeline group of at least 2 ranks; on one rank run "
                                        "the stages as one module")
            if len(chunks) < 2:
                raise InvalidInputError(
                    f"schedule='interleaved' needs a list of this rank's virtual stages (at least "
                    f"2, e.g. split_model(model, {self.num_stages} * 2)[rank::{self.num_stages}]); "
                    f"got {len(chunks)}")
            if num_microbatches % self.num_stages:
                raise InvalidInputError(
                    f"schedule={schedule!r} with several stages per rank needs num_microbatches a "
                    f"multiple of the {self.num_stages} pipeline ranks, got {num_microbatches}")
        elif len(chunks) != 1:
            raise InvalidInputError(f"schedule={schedule!r} runs one stage per rank, got "
                                    f"{len(chunks)}; use schedule='interleaved' or 'zb' for several")
        # data-parallel stages (DDP, ZeRO): under "zb" every op runs under no_sync() and the
        # stage's sync_gradients() follows the last W; elsewhere the last backward synchronizes
        self._synced = [getattr(c, "no_sync", None) is not None for c in chunks]
        bad = [c for c, syncs in zip(chunks, self._synced)
               if syncs and not callable(getattr(c, "sync_gradients", None))]
        if schedule == "zb" and bad:
            raise InvalidInputError(
                f"schedule='zb' computes weight gradients after the backward of each micro-batch, "
                f"but this stage ({type(bad[0]).__name__}) synchronizes them across data-parallel "
                "ranks inside that backward and has no sync_gradients() to call after them; use "
                "schedule='1f1b', or a DDP or ZeRO stage from shoal.train")
        self.chunks, self.group, self.schedule = chunks, pp_group, schedule
        self.stage = chunks[0] if len(chunks) == 1 else nn.ModuleList(chunks)
        self.virtual_stages = len(chunks)
        self.num_microbatches, self.loss_fn = num_microbatches, loss_fn
        self.broadcast_loss = broadcast_loss
        self.total_stages = self.num_stages * self.virtual_stages
        self.is_first, self.is_last = self.rank == 0, self.rank == self.num_stages - 1
        if self.is_last and loss_fn is None:
            raise InvalidInputError(f"stage {self.total_stages - 1} is the last of "
                                    f"{self.total_stages}, on rank {self.rank}: it needs "
                                    "loss_fn(output, targets)")
        self.stats = StepStats()
        params = next(iter(self.stage.parameters()), None)
        self.device = params.device if params is not None else torch.device("cpu")
        self._step = 0
        self._key = None             # micro-batch sizes of the previous step
        self._meta: dict = {}        # ("in"|"out", stage, i) -> (shape, dtype, requires_grad)
        self._links: Links | None = None
        self._plans: dict = {}
        # "zb": per chunk, the plain Linears routed through deferred.linear in forwards and I's
        self._linears = [deferred.linear_forwards(c, synced) if schedule == "zb" else []
                         for c, synced in zip(chunks, self._synced)]

    # -------------------------------------------------------------- public
    def step(self, inputs=None, targets=None):
        """Forward and backward of every micro-batch of one batch on this rank.

        Gradients accumulate into the stages' ``.grad`` (call
        ``optimizer.step()`` and ``zero_grad()`` as usual).

        Args:
            inputs: the batch (a tensor; dimension 0 is the batch), on rank 0;
                ignored elsewhere.
            targets: the batch's targets, on the last rank; ignored elsewhere.

        Returns:
            On the last rank the batch's loss (a 0-dim tensor, the
            micro-batch losses weighted by size); on the other ranks None,
            or the same loss with ``broadcast_loss``.
        """
        t0, c0 = time.perf_counter(), time.thread_time()
        stats = self.stats = StepStats(num_microbatches=self.num_microbatches)
        self._step += 1
        m, p = self.num_microbatches, self.num_stages
        micro_in = self._split("inputs", inputs) if self.is_first else None
        w = time.perf_counter()    # the header: a wait for the rank before to start the step
        key = self._exchange_key([len(x) for x in micro_in] if self.is_first else None)
        stats.wait_s += time.perf_counter() - w
        renegotiate = key != self._key
        self._key = key
        if renegotiate:
            self._meta.clear()
        if self.is_last:
            if targets is None or len(targets) != sum(key):
                n = "no" if targets is None else len(targets)
                raise InvalidInputError(f"targets hold {n} rows but the first stage's inputs "
                                        f"hold {sum(key)}; pass the same batch's targets")
            micro_tg = torch.tensor_split(targets, list(_cumsum(key))[:-1])
            weights = [k / sum(key) for k in key]
        links = self._start_links(renegotiate) if p > 1 else None
        actions = self._actions()
        last_backward = {}
        for k, (kind, c, i) in enumerate(actions):
            if kind in "BI":
                last_backward[c] = k
        inputs_of, outputs_of, losses = {}, {}, []

        stores: dict = {}      # "zb": (chunk, micro-batch) -> its deferred weight gradients

        def context(c, i, sync=True):
            """What an op of chunk ``c`` runs in: "zb" defers weight gradients (and holds a
            data-parallel stage's synchronization for sync_gradients); the others hold it
            until the chunk's last backward."""
            no_sync = self.chunks[c].no_sync if self._synced[c] else None
            if self.schedule != "zb":
                return no_sync() if no_sync is not None and not sync else nullcontext()
            defer = deferred.deferring(stores.setdefault((c, i), []), self._linears[c],
                                       self._synced[c])
            if no_sync is None:
                return defer
            stack = ExitStack()
            stack.enter_context(no_sync())
            stack.enter_context(defer)
            return stack

        def wait_for(what, s, i):
            w = time.perf_counter()
            t = links.take((what, s, i))
            stats.wait_s += time.perf_counter() - w
            return t

        def forward(c, i):
            s = c * p + self.rank
            if s == 0:
                x = micro_in[i]
            else:
                x = wait_for("act", s, i).detach()
                if self._meta[("in", s, i)][2]:
                    x.requires_grad_(True)
            w, cpu = time.perf_counter(), time.thread_time()
            with context(c, i):
                out = self.chunks[c](x)
            if s == self.total_stages - 1:
                out = self.loss_fn(out, micro_tg[i]) * weights[i]
                losses.append(out.detach())
            self._timed(stats, "F", s, i, w, cpu)
            inputs_of[(c, i)], outputs_of[(c, i)] = x, out
            if s < self.total_stages - 1:
                self._send_activation(links, s, i, out, renegotiate)

        def backward(c, i, sync, kind):
            s = c * p + self.rank
            out, grad = outputs_of.pop((c, i)), None
            if s < self.total_stages - 1:
                if not self._meta[("out", s, i)][2]:
                    out = None    # nothing upstream of the next stage needs a gradient
                else:
                    grad = wait_for("grad", s, i)
            w, cpu = time.perf_counter(), time.thread_time()
            if out is not None and out.requires_grad:
                # "I" defers what checkpointed layers recompute, as their forward did
                with context(c, i, sync):
                    torch.autograd.backward(out, grad)
            # the micro-batch's graph goes with its output: freeing it is part of its backward
            # (it grows with the stage's layers), so it counts in the op's time
            out = grad = None
            self._timed(stats, kind, s, i, w, cpu)
            x = inputs_of.pop((c, i))
            if s > 0 and self._meta[("in", s, i)][2]:
                g = x.grad if x.grad is not None else torch.zeros_like(x)
                links.send(g, (s - 1) % p, _TAG_GRAD)

        def weight_grads(c, i):
            w, cpu = time.perf_counter(), time.thread_time()
            deferred.weight_gradients(stores.pop((c, i), ()))
            self._timed(stats, "W", c * p + self.rank, i, w, cpu)

        with torch.enable_grad():
            for k, (kind, c, i) in enumerate(actions):
                if kind == "F":
                    forward(c, i)
                elif kind == "W":
                    weight_grads(c, i)
                else:
                    backward(c, i, k == last_backward[c], kind)
            if self.schedule == "zb":
                for c, synced in zip(self.chunks, self._synced):
                    if synced:
                        c.sync_gradients()
        if links is not None:
            w = time.perf_counter()
            links.drain()
            stats.wait_s += time.perf_counter() - w
        loss = torch.stack(losses).sum().reshape(1) if self.is_last else None
        if self.broadcast_loss and p > 1:
            loss = torch.empty(1, dtype=torch.float32) if loss is None else loss.float()
            self.group.broadcast(loss, src=p - 1)
        stats.wall_s = time.perf_counter() - t0
        stats.cpu_s = time.thread_time() - c0
        return None if loss is None else loss.reshape(())

    def _actions(self) -> list[tuple[str, int, int]]:
        return pipeline_actions(self.schedule, self.num_stages, self.rank, self.num_microbatches,
                                self.virtual_stages)

    def close(self) -> None:
        """Stop the send and receive threads (a later ``step`` starts new ones)."""
        if self._links is not None:
            self._links.close()
            self._links = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    # -------------------------------------------------------------- helpers
    @staticmethod
    def _timed(stats, kind, s, i, start, cpu):
        end = time.perf_counter()
        cpu_s = time.thread_time() - cpu
        stats.compute_s += end - start
        stats.compute_cpu_s += cpu_s
        stats.events.append((kind, s, i, start, end, cpu_s))

    def _start_links(self, renegotiate):
        if self._links is None:
            self._links = Links(self.group, self._meta, self.device)
        # every message a neighbour sends to this rank in one step, in its order
        plans = self._plans.get(self.num_microbatches)
        if plans is None:
            plans = self._plans[self.num_microbatches] = self._incoming()
        for peer, messages in plans.items():
            self._links.receive(peer, (messages, renegotiate, self.device))
        return self._links

    def _incoming(self) -> dict:
        p, last = self.num_stages, self.total_stages - 1
        plans: dict = {}
        for q in {(self.rank - 1) % p, (self.rank + 1) % p} - {self.rank}:
            msgs = []
            for kind, c, i in pipeline_actions(self.schedule, p, q, self.num_microbatches,
                                               self.virtual_stages):
                s = c * p + q
                if kind == "F" and s < last and (s + 1) % p == self.rank:
                    msgs.append(("act", s + 1, i))
                elif kind in "BI" and s > 0 and (s - 1) % p == self.rank:
                    msgs.append(("grad", s - 1, i))
            if msgs:
                plans[q] = msgs
        return plans

    def _split(self, what: str, batch):
        if not isinstance(batch, torch.Tensor):
            raise InvalidInputError(f"rank {self.rank} needs {what} as a tensor (dimension 0 the "
                                    f"batch), got {type(batch).__name__}")
        if batch.dim() == 0 or len(batch) < self.num_microbatches:
            n = 0 if batch.dim() == 0 else len(batch)
            raise InvalidInputError(f"{what} has a batch of {n}, fewer than num_microbatches="
                                    f"{self.num_microbatches}; pass a batch of at least "
                                    f"{self.num_microbatches} or fewer micro-batches")
        return torch.tensor_split(batch, self.num_microbatches)

    def _exchange_key(self, sizes):
        # the step header: step number + micro-batch sizes, passed down the pipeline's ranks
        head = torch.empty(self.num_microbatches + 1, dtype=torch.int64)
        if self.is_first:
            head[0] = self._step
            head[1:] = torch.tensor(sizes)
        else:
            self.group.recv(head, self.rank - 1, tag=_TAG_STEP)
            if int(head[0]) != self._step:
                raise CollectiveError(
                    f"pipeline rank {self.rank} is at step {self._step} but rank {self.rank - 1} "
                    f"sent step {int(head[0])}: every rank must call step() once per batch")
        if not self.is_last:
            self.group.send(head, self.rank + 1, tag=_TAG_STEP)
        return tuple(int(v) for v in head[1:])

    def _send_activation(self, links, s, i, out, renegotiate):
        if not isinstance(out, torch.Tensor):
            raise InvalidInputError(f"stage {s} returned {type(out).__name__}; a pipeline "
                                    "stage must return one tensor")
        meta = (tuple(out.shape), out.dtype, bool(out.requires_grad))
        dst = (s + 1) % self.num_stages
        if renegotiate:
            links.note_meta(("out", s, i), meta)
            links.send(encode_meta(meta), dst, _TAG_SHAPE)
        elif meta != self._meta[("out", s, i)]:
            old = self._meta[("out", s, i)]
            raise InvalidInputError(
                f"stage {s}'s output for micro-batch {i} is {meta[0]} {meta[1]}, but it was "
                f"{old[0]} {old[1]} for the same micro-batch sizes before; a stage's output "
                "shape must depend only on its input's")
        links.send(out.detach().contiguous(), dst, _TAG_ACT)


def _cumsum(sizes):
    total = 0
    for s in sizes:
        total += s
        yield total


__all__ = ["PipelineSchedule", "StepStats", "pipeline_actions", "replay_bubble", "span_bubble",
           "theoretical_bubble", "SCHEDULES"]
