"""Model parallelism on CPU: each section runs shoal and its anchor in the same processes.

    python benchmarks/parallel.py [--only sharded,pipeline,tensor] [--quick] [--rounds 5]
        [--pipeline-configs gpt,gpt-32,gpt-wide,compute-bound,overhead-bound]
        [--balance measured|time|params|layers]
        [--schedules gpipe,1f1b,interleaved,zb,zb-v2,interleaved-v4]

Sections (``--only`` picks some):

sharded
    shoal's ZeRO stage 3 (FSDP) against torch's ``fully_shard`` (FSDP2) over
    Gloo on the same GPT-style model (embedding, transformer blocks, norm,
    head; each block a unit / ``fully_shard``-ed module, then the root), the
    same batches and Adam, 2 ranks, one thread each. Each round times a window
    of full steps (forward, backward, optimizer step, zero_grad) of each
    system, the order alternating; the best window of each is kept. Peak
    memory per rank: the bytes of torch tensors reachable from Python (one
    count per storage; parameters, gradients, optimizer state, gather
    buffers; activations autograd holds in C++ are not counted, the same for
    both), sampled after every block's forward and before its backward, and
    after backward and the optimizer step, over one step of each system.


pipeline
    shoal's PipelineSchedule against ``torch.distributed.pipelining``
    (PipelineStage + ScheduleGPipe / Schedule1F1B / ScheduleInterleaved1F1B /
    ScheduleInterleavedZeroBubble over Gloo) on the same stages (the stage modules deep-copied so
    each system has its own), the same batch and micro-batches, 2 ranks, one thread each: GPipe,
    1F1B and zero bubble (ZB-H1) on 2 stages, interleaved 1F1B and zero bubble on 4 stages (2 per
    rank), interleaved 1F1B on 8 stages (4 per rank, "interleaved-v4"). Models: GPTs (embedding, blocks, norm, vocabulary head,
    cross-entropy; each block's attention and MLP halves are layers a cut may fall between,
    or with ``--whole-blocks`` only whole blocks): 16 and 32 blocks of width 128, and 16 of
    width 256 ("gpt-wide": about 3x the compute per micro-batch, messages twice the size), and two stacks of residual MLP
    blocks (MSE loss). The stages are cut by
    ``--balance`` (default "measured": ``rebalance`` starts from the cut by ``profile_layers``'
    per-layer forward + backward on one micro-batch, the loss counted on the last layer, runs a
    few steps of shoal's pipeline, scales each layer's cost by its stage's compute measured there
    and re-cuts, keeping the best cut tried; "time" is the profiled cut alone; "params" and
    "layers" for comparison). Each round times a
    window of steps (forward + backward of every micro-batch, then zero_grad) of each system, the
    order alternating; the best window of each is kept. Reported: samples/s, the ratio, and
    shoal's measured bubble (the share of a step a rank spends not computing) against the
    theory (p - 1) / (v m + p - 1); the bubble ``replay_bubble`` gives for the ops' measured
    wall and CPU times (the schedule's own bubble, without communication and load); the shares
    of the step spent waiting, in overhead (with the CPU the training thread used in it) and
    descheduled inside compute: what a loaded host adds; and the profiled cost of each stage
    under each way of cutting.

tensor
    A stack of transformer blocks split 2 ways by a plan (qkv and fc1
    column-parallel, proj and fc2 row-parallel), and the same with sequence
    parallelism (norms on half the sequence, "_sp" layers), against the whole
    stack in one process (rank 0, while rank 1 waits), alternating windows.
    Reported: step time of each, and the communication of one tp step counted
    at the tp group (each collective's whole tensor) against the expected 2
    allreduces per block in forward and 2 in backward of (batch x seq x dim)
    fp32 values.
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import secrets
import socket
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402


# ------------------------------------------------------------------ harness
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(section, rank, world, ports, secret, args, out):
    torch.set_num_threads(1)
    if args.get("pin"):      # each rank (its threads too) on a core of its own
        cores = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cores[rank % len(cores)]})
    try:
        import torch.distributed as dist

        from shoal import collective
        from shoal.core.kv import TCPStore
        store = TCPStore("127.0.0.1", ports[0], secret=secret, is_server=rank == 0)
        config = collective.NativeConfig(p2p_ring_bytes=0) if args.get("p2p_tcp") else None
        comm = collective.init_group(rank, world, store, name=f"bench-{section}", timeout=120,
                                     config=config)
        dist.init_process_group("gloo", rank=rank, world_size=world,
                                init_method=f"tcp://127.0.0.1:{ports[1]}")
        try:
            out.put((rank, SECTIONS[section](rank, comm, args)))
        finally:
            dist.destroy_process_group()
            comm.destroy()
            store.close()
    except BaseException as e:  # reported by the parent
        import traceback
        out.put((rank, {"error": f"{type(e).__name__}: {e}\n{traceback.format_exc()}"}))


def _run(section, world, args):
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    ports, secret = (_free_port(), _free_port()), secrets.token_bytes(16)
    procs = [ctx.Process(target=_rank_main, args=(section, r, world, ports, secret, args, out))
             for r in range(world)]
    for p in procs:
        p.start()
    try:
        results = dict(out.get(timeout=1800) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    for r, res in results.items():
        if "error" in res:
            raise RuntimeError(f"rank {r} of section {section} failed: {res['error']}")
    return [results[r] for r in range(world)]


def _windows(systems, rounds, steps, warmup, barrier, cpu=None):
    """Best seconds per step of each system: alternating rounds, each a timed window.

    With a ``cpu`` dict, it also gets the best CPU seconds per step of this
    process (all its threads): a figure other load on the host disturbs much
    less than wall-clock time.
    """
    best = {name: math.inf for name in systems}
    if cpu is not None:
        cpu.update({name: math.inf for name in systems})
    for rnd in range(rounds):
        order = list(systems) if rnd % 2 == 0 else list(systems)[::-1]
        for name in order:
            step = systems[name]
            for _ in range(warmup):
                step()
            barrier()
            t, c = time.perf_counter(), time.process_time()
            for _ in range(steps):
                step()
            c = time.process_time() - c
            barrier()
            best[name] = min(best[name], (time.perf_counter() - t) / steps)
            if cpu is not None:
                cpu[name] = min(cpu[name], c / steps)
    return best


# ------------------------------------------------------------------ pipeline
class ResidualMLP(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.ln, self.fc1, self.fc2 = nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x):
        return x + self.fc2(F.gelu(self.fc1(self.ln(x))))


class _Embed(nn.Module):
    def __init__(self, vocab, dim, seq):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, dim), nn.Embedding(seq, dim)

    def forward(self, ids):
        return self.tok(ids) + self.pos(torch.arange(ids.shape[-1], device=ids.device))


class _Attention(nn.Module):
    """``x + attention(norm(x))``: a transformer block's first half, as ``Block`` computes it."""

    def __init__(self, dim, n_head):
        super().__init__()
        self.n_head, self.head_dim = n_head, dim // n_head
        self.ln, self.qkv, self.proj = nn.LayerNorm(dim), nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = (z.reshape(b, t, self.n_head, self.head_dim).transpose(1, 2)
                   for z in self.qkv(self.ln(x)).chunk(3, dim=-1))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return x + self.proj(a.transpose(1, 2).reshape(b, t, self.n_head * self.head_dim))


class PipeBlock(nn.Module):
    """A transformer block as its attention half and MLP half (``Block``'s computation)."""

    def __init__(self, dim, n_head):
        super().__init__()
        self.attn, self.mlp = _Attention(dim, n_head), ResidualMLP(dim)

    def forward(self, x):
        return self.mlp(self.attn(x))


class HalvedPipeBlock(PipeBlock):
    """``PipeBlock`` whose halves a pipeline may cut between."""

    def pipeline_sublayers(self):
        return ["attn", "mlp"]


class GPTPipe(nn.Module):
    """Embedding (token + position), ``PipeBlock``s, final norm and head: a model pipeline_layers cuts."""

    def __init__(self, vocab, dim, n_head, layers, seq, halves=True):
        super().__init__()
        self.embed = _Embed(vocab, dim, seq)
        block = HalvedPipeBlock if halves else PipeBlock
        self.blocks = nn.ModuleList(block(dim, n_head) for _ in range(layers))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, vocab, bias=False)

    def forward(self, ids):
        x = self.embed(ids)
        for b in self.blocks:
            x = b(x)
        return self.head(self.norm(x))


PIPELINE_CONFIGS = {  # name -> model and batch
    "gpt": {"kind": "gpt", "layers": 16, "dim": 128, "heads": 4, "vocab": 2048, "seq": 32,
            "batch": 32},
    "gpt-32": {"kind": "gpt", "layers": 32, "dim": 128, "heads": 4, "vocab": 2048, "seq": 32,
               "batch": 32},
    "gpt-wide": {"kind": "gpt", "layers": 16, "dim": 256, "heads": 8, "vocab": 2048, "seq": 32,
                 "batch": 32},
    "compute-bound": {"kind": "mlp", "layers": 8, "dim": 256, "batch": 128},
    "overhead-bound": {"kind": "mlp", "layers": 8, "dim": 64, "batch": 32},
}


def _pipeline(rank, comm, args):
    return [row for name in args["pipeline_configs"]
            for row in _pipeline_config(rank, comm, dict(args, name=name, **PIPELINE_CONFIGS[name]))]


def _pipeline_model(args):
    """The config's model, a batch (inputs, targets) and its loss function."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if args["kind"] == "gpt":
        v = args["vocab"]
        model = GPTPipe(v, args["dim"], args["heads"], args["layers"], args["seq"],
                        halves=not args["whole_blocks"])
        x = torch.randint(0, v, (args["batch"], args["seq"]), generator=g)
        y = torch.randint(0, v, (args["batch"], args["seq"]), generator=g)
        return model, x, y, lambda out, t: F.cross_entropy(out.reshape(-1, v), t.reshape(-1))
    model = nn.Sequential(*[ResidualMLP(args["dim"]) for _ in range(args["layers"])])
    x = torch.randn(args["batch"], args["dim"], generator=g)
    y = torch.randn(args["batch"], args["dim"], generator=g)
    return model, x, y, F.mse_loss


def _split_costs(costs, model, splits):
    """Profiled cost of each stage (seconds per micro-batch) for each way of splitting."""
    from shoal.train.parallel import stage_costs
    return {how: stage_costs(costs, stages, model) for how, stages in splits.items()}


# --schedules names -> (PipelineSchedule's schedule, stages per rank); torch runs its namesake
_SCHEDULE_RUNS = {"gpipe": ("gpipe", 1), "1f1b": ("1f1b", 1), "interleaved": ("interleaved", 2),
                  "zb": ("zb", 1), "zb-v2": ("zb", 2), "interleaved-v4": ("interleaved", 4)}


def _pipeline_config(rank, comm, args):
    import torch.distributed as dist
    from torch.distributed.pipelining import (PipelineStage, Schedule1F1B, ScheduleGPipe,
                                              ScheduleInterleaved1F1B,
                                              ScheduleInterleavedZeroBubble)

    from shoal.train.parallel import (PipelineSchedule, pipeline_layers, profile_layers,
                                      rebalance, split_model)
    model, x, y, loss_fn = _pipeline_model(args)
    m = args["microbatches"]
    # every layer's forward + backward on one micro-batch (loss on the last), averaged over
    # both ranks; rank 0's figures are everyone's, so both cut the model the same way
    costs = torch.tensor(profile_layers(model, x[:len(x) // m], y[:len(y) // m], loss_fn,
                                        repeats=args["profile_repeats"], group=comm),
                         dtype=torch.float64)
    comm.broadcast(costs, src=0)
    costs = costs.tolist()
    rows = []
    for name in args["schedules"]:
        schedule, v = _SCHEDULE_RUNS[name]
        splits = {how: split_model(model, 2 * v, balance=costs if how == "time" else how)
                  for how in ("params", "time")}
        tried = {}
        if args["balance"] == "measured":
            # start from the profiled cut, time the stages inside the pipeline, re-cut
            splits["measured"] = rebalance(model, comm, (x, y), loss_fn, schedule=schedule,
                                           num_microbatches=m, virtual_stages=v, costs=costs)
            tried = {"/".join(map(str, c)): [1e3 * t for t in ms]
                     for c, ms in rebalance.last.items()}
        if len(pipeline_layers(model)) % (2 * v) == 0:
            splits["layers"] = split_model(model, 2 * v, balance="layers")
        chunks = splits[args["balance"]][rank::2]
        ours = PipelineSchedule(chunks if v > 1 else chunks[0], comm, schedule=schedule,
                                num_microbatches=m, loss_fn=loss_fn)
        theirs_mods = [copy.deepcopy(c) for c in chunks]
        tstages = [PipelineStage(mod, rank + 2 * c, 2 * v, torch.device("cpu"))
                   for c, mod in enumerate(theirs_mods)]
        if schedule == "zb":        # torch's ZB-H1 ("ZB1P"), with one or two stages per rank
            tsched = ScheduleInterleavedZeroBubble(tstages, n_microbatches=m, loss_fn=loss_fn)
        elif v > 1:
            tsched = ScheduleInterleaved1F1B(tstages, n_microbatches=m, loss_fn=loss_fn)
        else:
            cls = ScheduleGPipe if schedule == "gpipe" else Schedule1F1B
            tsched = cls(tstages[0], n_microbatches=m, loss_fn=loss_fn)
        stats = []

        def shoal_step():
            ours.step(x, y)
            stats.append(ours.stats)
            for c in chunks:
                c.zero_grad(set_to_none=True)

        def torch_step():
            if rank == 0:
                tsched.step(x)
            else:
                tsched.step(target=y, losses=[])
            for mod in theirs_mods:
                mod.zero_grad(set_to_none=True)

        cpu = {}
        best = _windows({"shoal": shoal_step, "torch": torch_step}, args["rounds"], args["steps"],
                        args["warmup"], lambda: dist.barrier(), cpu)
        timed = stats[-args["steps"]:]   # the last window's steps (steady state)
        ours.close()
        rows.append({"config": args["name"], "model": _describe(args), "batch": args["batch"],
                     "schedule": schedule, "v": v, "balance": args["balance"],
                     "layers_per_stage": [len(s.layer_names) for s in splits[args["balance"]]],
                     "stage_costs": _split_costs(costs, model, splits), "costs": costs,
                     "tried": tried,
                     "shoal_s": best["shoal"], "torch_s": best["torch"],
                     "shoal_cpu": cpu["shoal"], "torch_cpu": cpu["torch"],
                     "steps": [{"bubble": st.bubble, "wait": st.wait_s / st.wall_s,
                                "overhead": st.overhead_s / st.wall_s,
                                "overhead_cpu": (st.cpu_s - st.compute_cpu_s) / st.wall_s,
                                "descheduled": (st.compute_s - st.compute_cpu_s) / st.wall_s,
                                "events": st.events} for st in timed]})
    return rows


def _describe(a):
    if a["kind"] == "gpt":
        return (f"GPT {a['layers']} blocks, dim {a['dim']}, vocab {a['vocab']}, seq {a['seq']}, "
                f"batch {a['batch']}")
    return f"{a['name']}: {a['layers']} residual MLP blocks, dim {a['dim']}, batch {a['batch']}"


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def _imbalance(stage_costs):
    return max(stage_costs) / (sum(stage_costs) / len(stage_costs))


def _report_pipeline(results, args):
    from shoal.train.parallel import replay_bubble, span_bubble, theoretical_bubble
    p, m = 2, args["microbatches"]
    print(f"\n## pipeline: 2 ranks, {m} micro-batches, 1 thread per rank, stages cut by "
          f"balance={args['balance']!r}", flush=True)
    print("| model | schedule | layers per stage | shoal samples/s | torch.pipelining samples/s | "
          "shoal / torch | theory | bubble measured (rank 0 / 1) | measured / theory | "
          "over the step's span / theory | "
          "replayed, wall / CPU op times | replayed (CPU) / theory | "
          "waiting / overhead (its CPU) / descheduled in compute (share of step) | "
          "compute CPU ms/step rank 0 / 1 | process CPU ms/step per rank, shoal / torch |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for i, row in enumerate(results[0]):
        shoal_s = max(r[i]["shoal_s"] for r in results)
        torch_s = max(r[i]["torch_s"] for r in results)
        theory = theoretical_bubble(p, m, row["v"], row["schedule"])
        steps = list(zip(*[r[i]["steps"] for r in results]))   # per step, every rank's
        measured = [_median(st[k]["bubble"] for st in steps) for k in range(p)]
        wall = [sum(replay_bubble([s["events"] for s in st])) / p for st in steps]
        spans = [sum(span_bubble([s["events"] for s in st])) / p for st in steps]
        cpu = [sum(replay_bubble([s["events"] for s in st], cpu=True)) / p for st in steps]
        share = {k: _median(sum(s[k] for s in st) / p for st in steps)
                 for k in ("wait", "overhead", "overhead_cpu", "descheduled")}
        mean = sum(measured) / p
        work = [1e3 * _median(sum(e[5] for e in st[k]["events"]) for st in steps) for k in range(p)]
        name = _row_name(row)
        print(f"| {row['model']} | {name} | {'/'.join(map(str, row['layers_per_stage']))} | "
              f"{row['batch'] / shoal_s:,.0f} | {row['batch'] / torch_s:,.0f} | "
              f"{torch_s / shoal_s:.2f}x | {theory:.3f} | {measured[0]:.3f} / {measured[1]:.3f} | "
              f"{mean / theory:.2f} | {_median(spans) / theory:.2f} | {_median(wall):.3f} / {_median(cpu):.3f} | "
              f"{_median(cpu) / theory:.2f} | {share['wait']:.3f} / {share['overhead']:.3f} "
              f"({share['overhead_cpu']:.3f}) / {share['descheduled']:.3f} | "
              f"{work[0]:.1f} / {work[1]:.1f} | {_cpu_ms(results, i, 'shoal')} / "
              f"{_cpu_ms(results, i, 'torch')} |", flush=True)
    print("(measured: 1 - compute / step wall time per rank, median step; over the span: "
          "1 - compute / (first op of any rank to last op of any rank), shoal.train.parallel."
          "span_bubble, mean of the ranks; replayed: "
          "shoal.train.parallel.replay_bubble of both ranks' op timelines, messages taking no time; "
          "overhead: neither computing nor waiting, with the CPU time the training thread spent "
          "in it; descheduled: wall minus CPU time inside forwards and backwards)")
    print("\n### profiled stage costs (profile_layers: forward + backward of one micro-batch, "
          "loss on the last layer), ms per micro-batch per stage, and slowest / mean stage")
    print("| model | stages | cut by params | cut by layers | cut by measured time | "
          "heaviest layer / (total / stages) |")
    print("|---|---|---|---|---|---|")
    shown = set()
    for row in results[0]:
        if (row["config"], row["v"]) in shown:
            continue        # the same profiled cuts as the config's first schedule with as many stages
        shown.add((row["config"], row["v"]))
        sc, k = row["stage_costs"], 2 * row["v"]

        def cell(how):
            if how not in sc:
                return "-"
            return f"{' / '.join(f'{1e3 * c:.2f}' for c in sc[how])} ({_imbalance(sc[how]):.3f})"
        heavy = max(row["costs"]) / (sum(row["costs"]) / k)
        print(f"| {row['model']} | {k} | {cell('params')} | {cell('layers')} | {cell('time')} | "
              f"{heavy:.2f} |")
    for row in results[0]:
        if row.get("tried"):
            name = _row_name(row)
            print(f"(rebalance, {row['config']} {name}: cuts tried (first layer of "
                  "each stage after the first) -> compute measured in the pipeline, ms per step "
                  "per stage: " + "; ".join(f"{cut} -> {' / '.join(f'{t:.1f}' for t in ms)}"
                                           for cut, ms in row["tried"].items()) + ")")
    first = {}                  # one row per config: the profile is the config's, not the schedule's
    for row in results[0]:
        first.setdefault(row["config"], row)
    print("(per-layer ms: " + "; ".join(
        f"{row['config']}: " + " ".join(f"{1e3 * c:.2f}" for c in row["costs"])
        for row in first.values()) + ")", flush=True)


def _row_name(row):
    return row["schedule"] + (f" (v={row['v']})" if row["v"] > 1 else "")


def _cpu_ms(results, i, system, raw=False):
    ms = 1e3 * sum(r[i][f"{system}_cpu"] for r in results) / len(results)
    return ms if raw else f"{ms:.1f}"


# ------------------------------------------------------------------ tensor
class Block(nn.Module):
    def __init__(self, dim, n_head):
        super().__init__()
        self.n_head, self.head_dim = n_head, dim // n_head
        self.ln1, self.qkv, self.proj = nn.LayerNorm(dim), nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.ln2, self.fc1, self.fc2 = nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x):
        qkv = self.qkv(self.ln1(x))
        b, t, _ = qkv.shape      # the whole sequence, also when x holds a part (sequence parallel)
        q, k, v = (z.reshape(b, t, self.n_head, self.head_dim).transpose(1, 2)
                   for z in qkv.chunk(3, dim=-1))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, self.n_head * self.head_dim))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class _Counting:
    """The tp group, counting each collective and its payload (the whole tensor reduced or gathered)."""

    def __init__(self, comm):
        self.comm, self.rank, self.world_size = comm, comm.rank, comm.world_size
        self.count, self.bytes, self.on = {}, {}, False

    def _note(self, op, nbytes):
        if self.on:
            self.count[op] = self.count.get(op, 0) + 1
            self.bytes[op] = self.bytes.get(op, 0) + nbytes

    def allreduce(self, t, *a, **kw):
        self._note("allreduce", t.numel() * t.element_size())
        return self.comm.allreduce(t, *a, **kw)

    def reduce_scatter(self, t, *a, **kw):
        self._note("reduce_scatter", t.numel() * t.element_size())
        return self.comm.reduce_scatter(t, *a, **kw)

    def allgather(self, t, *a, **kw):
        self._note("allgather", self.world_size * t.numel() * t.element_size())
        return self.comm.allgather(t, *a, **kw)


def _tensor(rank, comm, args):
    import torch.distributed as dist

    from shoal.train.parallel.tensor import apply_tensor_parallel
    torch.manual_seed(0)
    layers, dim, heads = args["tp_layers"], args["tp_dim"], args["tp_heads"]
    full = nn.Sequential(*[Block(dim, heads) for _ in range(layers)])
    plan = {"*": "heads", "*.qkv": "colwise_qkv", "*.proj": "rowwise", "*.fc1": "colwise",
            "*.fc2": "rowwise"}
    sp_plan = {"*": "heads", "*.ln1": "sequence", "*.ln2": "sequence", "*.qkv": "colwise_qkv_sp",
               "*.proj": "rowwise_sp", "*.fc1": "colwise_sp", "*.fc2": "rowwise_sp"}
    groups = {"tp2": _Counting(comm), "tp2+sp": _Counting(comm)}
    models = {"tp2": apply_tensor_parallel(copy.deepcopy(full), groups["tp2"], plan),
              "tp2+sp": apply_tensor_parallel(copy.deepcopy(full), groups["tp2+sp"], sp_plan)}
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args["tp_batch"], args["tp_seq"], dim, generator=g)
    t = args["tp_seq"] // 2
    inputs = {"tp2": x, "tp2+sp": x[:, rank * t:(rank + 1) * t]}   # sp: this rank's half

    def stepper(name):
        def step():
            y = models[name](inputs[name])
            (y.square().sum() / x.numel()).backward()
            models[name].zero_grad(set_to_none=True)
        return step

    def one_step():
        if rank == 0:
            (full(x).square().sum() / x.numel()).backward()
            full.zero_grad(set_to_none=True)

    steps = {name: stepper(name) for name in models}
    for name, grp in groups.items():
        grp.on = True
        steps[name]()
        grp.on = False
    best = _windows({**steps, "one": one_step}, args["rounds"], args["steps"], args["warmup"],
                    lambda: dist.barrier())
    return {"one_s": best["one"], **{f"{n}_s": best[n] for n in models},
            **{f"{n}_count": grp.count for n, grp in groups.items()},
            **{f"{n}_bytes": grp.bytes for n, grp in groups.items()}}


def _report_tensor(results, args):
    r = results[0]
    layers, b, t, d = args["tp_layers"], args["tp_batch"], args["tp_seq"], args["tp_dim"]
    act = b * t * d * 4
    exp_count, exp_bytes = 4 * layers, 4 * layers * act
    print(f"\n## tensor parallel: {layers} transformer blocks (dim {d}, {args['tp_heads']} heads), "
          f"batch {b} x seq {t}, 2 ranks vs one process, 1 thread per rank")
    print("| | step ms | collectives / step | payload / step (whole tensors) | "
          "expected: 2 fwd + 2 bwd allreduces of (batch x seq x dim) per block |")
    print("|---|---|---|---|---|")
    print(f"| one process | {r['one_s'] * 1e3:.1f} | 0 | 0 | - |")
    for name in ("tp2", "tp2+sp"):
        counts = ", ".join(f"{v} {k}" for k, v in sorted(r[f"{name}_count"].items()))
        big = {k: v for k, v in r[f"{name}_bytes"].items()}
        total = sum(big.values())
        parts = ", ".join(f"{k} {v / 2**20:.2f} MiB" for k, v in sorted(big.items()))
        print(f"| {name} (shoal) | {max(x[f'{name}_s'] for x in results) * 1e3:.1f} | {counts} | "
              f"{parts} | {exp_count} x {act / 2**10:.0f} KiB = {exp_bytes / 2**20:.2f} MiB "
              f"({total / exp_bytes:.2f}x{'; sp: each allreduce = reduce-scatter + allgather, so 2x the payload counted, the same bytes on the wire' if name == 'tp2+sp' else ''}) |")
    print(f"tp2 step / one-process step: {max(x['tp2_s'] for x in results) / r['one_s']:.2f}; "
          f"tp2+sp / tp2: {max(x['tp2+sp_s'] for x in results) / max(x['tp2_s'] for x in results):.2f}",
          flush=True)


# ------------------------------------------------------------------ sharded data parallel
class GPTBench(nn.Module):
    """Embedding, ``Block``s, final norm and head: the sharded section's model."""

    def __init__(self, vocab, dim, n_head, layers, seq):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, dim), nn.Embedding(seq, dim)
        self.blocks = nn.ModuleList(Block(dim, n_head) for _ in range(layers))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, vocab, bias=False)

    def forward(self, ids):
        x = self.tok(ids) + self.pos(torch.arange(ids.shape[-1]))
        for b in self.blocks:
            x = b(x)
        return self.head(self.norm(x))


def _held_tensor_bytes() -> int:
    import gc
    seen, total = set(), 0
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor):
            if hasattr(obj, "_local_tensor"):      # a DTensor: its local shard is what is held
                obj = obj._local_tensor
            s = obj.untyped_storage()
            if s.nbytes() and s.data_ptr() not in seen:
                seen.add(s.data_ptr())
                total += s.nbytes()
    return total


def _resting_bytes(model, opt) -> int:
    """Bytes of a system's own parameters (local shards), gradients and optimizer state."""
    ts = []
    for p in model.parameters():
        ts += [p, p.grad] if p.grad is not None else [p]
    for st in opt.state.values():
        ts += [v for v in st.values() if torch.is_tensor(v)]
    seen, total = set(), 0
    for t in ts:
        t = getattr(t, "_local_tensor", t)
        s = t.untyped_storage()
        if s.data_ptr() not in seen:
            seen.add(s.data_ptr())
            total += s.nbytes()
    return total


def _peak_of_step(model, blocks, step) -> int:
    """Held tensor bytes over one ``step()`` above those before it, sampled at block boundaries."""
    import gc
    gc.collect()
    before = _held_tensor_bytes()
    peak = [before]

    def sample(*_):
        peak[0] = max(peak[0], _held_tensor_bytes())

    def on_output(module, args, out):
        sample()
        if out.requires_grad:
            out.register_hook(lambda g: sample())
    hooks = [b.register_forward_hook(on_output) for b in blocks]
    try:
        step(after_backward=sample)
        sample()
    finally:
        for h in hooks:
            h.remove()
    return peak[0] - before


def _sharded(rank, comm, args):
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    from shoal.train.parallel import ZeRO
    v, d, h, n, t, b = (args["z_vocab"], args["z_dim"], args["z_heads"], args["z_layers"],
                        args["z_seq"], args["z_batch"])
    torch.manual_seed(0)
    base = GPTBench(v, d, h, n, t)
    psi = sum(p.numel() for p in base.parameters())
    ours = ZeRO(stage=3).prepare(copy.deepcopy(base), comm)
    theirs = copy.deepcopy(base)
    for blk in theirs.blocks:
        fully_shard(blk)
    fully_shard(theirs)
    del base
    opts = {"shoal": torch.optim.Adam(ours.parameters(), lr=1e-4),
            "torch": torch.optim.Adam(theirs.parameters(), lr=1e-4)}
    models = {"shoal": ours, "torch": theirs}
    g = torch.Generator().manual_seed(1 + rank)
    ids = torch.randint(0, v, (b, t), generator=g)
    tg = torch.randint(0, v, (b, t), generator=g)
    losses = {"shoal": [], "torch": []}

    def stepper(name):
        model, opt = models[name], opts[name]

        def step(after_backward=None):
            loss = F.cross_entropy(model(ids).reshape(-1, v), tg.reshape(-1))
            loss.backward()
            if after_backward:
                after_backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses[name].append(loss.item())
        return step

    steps = {name: stepper(name) for name in models}
    peaks = {}
    for name in models:     # one untimed step each first: Adam's state exists in both
        steps[name]()
    for name, model in models.items():   # each system's own state + what its step adds on top
        blocks = ours.module.blocks if name == "shoal" else theirs.blocks
        peaks[name] = _resting_bytes(model, opts[name]) + _peak_of_step(model, blocks, steps[name])
    rest = {f"{name}_rest": _resting_bytes(model, opts[name]) for name, model in models.items()}
    cpu = {}
    best = _windows(steps, args["rounds"], args["steps"], args["warmup"], lambda: dist.barrier(),
                    cpu=cpu)
    return {"shoal_s": best["shoal"], "torch_s": best["torch"], "psi": psi,
            "shoal_peak": peaks["shoal"], "torch_peak": peaks["torch"],
            "shoal_cpu": cpu["shoal"], "torch_cpu": cpu["torch"],
            "loss_gap": abs(losses["shoal"][0] - losses["torch"][0]), **rest}


def _report_sharded(results, args):
    b, world = args["z_batch"], len(results)
    r0 = results[0]
    print(f"\n## sharded data parallel: ZeRO-3 vs torch fully_shard (Gloo), GPT {args['z_layers']} "
          f"blocks, dim {args['z_dim']}, vocab {args['z_vocab']}, seq {args['z_seq']} "
          f"({r0['psi'] / 1e6:.1f}M parameters), batch {b}/rank, {world} ranks, Adam, 1 thread per rank")
    print("| | samples/s (all ranks) | CPU ms/step rank 0 | peak MiB rank 0 / rank 1 | "
          "at rest MiB rank 0 |")
    print("|---|---|---|---|---|")
    for name, label in (("torch", "torch fully_shard"), ("shoal", "shoal ZeRO(stage=3)")):
        s = max(r[f"{name}_s"] for r in results)
        peaks = " / ".join(f"{r[f'{name}_peak'] / 2**20:.1f}" for r in results)
        print(f"| {label} | {world * b / s:,.1f} | {r0[f'{name}_cpu'] * 1e3:.0f} | {peaks} | "
              f"{r0[f'{name}_rest'] / 2**20:.1f} |")
    print(f"(at rest, after zero_grad(set_to_none=True): parameters + Adam state = 12 Psi / N = "
          f"{12 * r0['psi'] / world / 2**20:.1f} MiB per rank)")
    t_s = max(r["torch_s"] for r in results)
    s_s = max(r["shoal_s"] for r in results)
    mem = max(r["shoal_peak"] for r in results) / max(r["torch_peak"] for r in results)
    print(f"shoal / torch: throughput {t_s / s_s:.2f}x, CPU time per step "
          f"{r0['torch_cpu'] / r0['shoal_cpu']:.2f}x less, peak memory {mem:.2f}x; first-step loss "
          f"gap {r0['loss_gap']:.2e} (same model and batch)")


SECTIONS = {"sharded": _sharded, "pipeline": _pipeline, "tensor": _tensor}
REPORTS = {"sharded": _report_sharded, "pipeline": _report_pipeline, "tensor": _report_tensor}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(SECTIONS),
                    help=f"comma-separated sections to run ({', '.join(SECTIONS)})")
    ap.add_argument("--quick", action="store_true", help="fewer rounds and steps")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--microbatches", type=int, default=8)
    ap.add_argument("--pipeline-configs", default=",".join(PIPELINE_CONFIGS),
                    help=f"pipeline models to run ({', '.join(PIPELINE_CONFIGS)})")
    ap.add_argument("--balance", default="measured",
                    choices=("measured", "time", "params", "layers"),
                    help="how the pipeline section cuts its models into stages (default "
                         "\"measured\": rebalance, re-cut from compute timed inside the pipeline; "
                         "\"time\": by the forward + backward time profile_layers measures alone)")
    ap.add_argument("--schedules", default=",".join(_SCHEDULE_RUNS),
                    help="pipeline schedules to run, each against torch's of the same kind "
                         "(zb, zb-v2: ScheduleInterleavedZeroBubble with one / two stages per "
                         "rank; interleaved, interleaved-v4: two / four stages per rank)")
    ap.add_argument("--p2p-tcp", action="store_true",
                    help="shoal's send/recv over loopback TCP instead of shared-memory rings "
                         "(NativeConfig(p2p_ring_bytes=0)), to see what the rings change")
    ap.add_argument("--pin", action="store_true",
                    help="pin rank r to the r-th core this process may use (both systems alike)")
    ap.add_argument("--whole-blocks", action="store_true",
                    help="cut the GPTs between whole blocks only (by default between a block's "
                         "attention and MLP halves too)")
    args = ap.parse_args(argv)
    cfg = {"whole_blocks": args.whole_blocks, "pin": args.pin, "p2p_tcp": args.p2p_tcp,
           "rounds": 2 if args.quick else args.rounds, "steps": 5 if args.quick else args.steps,
           "warmup": 2, "microbatches": args.microbatches, "balance": args.balance,
           "pipeline_configs": [c for c in args.pipeline_configs.split(",") if c],
           "schedules": [c for c in args.schedules.split(",") if c],
           "profile_repeats": 10,
           "tp_layers": 4, "tp_dim": 256, "tp_heads": 8, "tp_batch": 8, "tp_seq": 64,
           "z_vocab": 256, "z_dim": 128, "z_heads": 4, "z_layers": 6, "z_seq": 32, "z_batch": 4}
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in only if s not in SECTIONS]
    if unknown:
        ap.error(f"unknown section(s) {unknown}; choose from {sorted(SECTIONS)}")
    bad = [c for c in cfg["schedules"] if c not in _SCHEDULE_RUNS]
    if bad:
        ap.error(f"unknown schedule(s) {bad}; choose from {list(_SCHEDULE_RUNS)}")
    bad = [c for c in cfg["pipeline_configs"] if c not in PIPELINE_CONFIGS]
    if bad:
        ap.error(f"unknown pipeline config(s) {bad}; choose from {list(PIPELINE_CONFIGS)}")
    print(f"load average before: {os.getloadavg()}", flush=True)
    for section in only:
        REPORTS[section](_run(section, 2, cfg), cfg)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
