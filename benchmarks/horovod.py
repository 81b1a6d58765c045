"""shoal.horovod's per-op cost: its negotiation (ops matched by name and checked on every
rank) against the bare shoal.collective op it runs, and against another shoal.horovod.

    python benchmarks/horovod.py [--ranks 2] [--rounds 3] [--compare /path/to/other/checkout]

Each round launches N ranks (``shoal launch``) that time, on one communicator:
  - ``hvd.allreduce`` of 1 KiB and 4 MiB (sync: submit, negotiate, run, return) against
    ``comm.allreduce`` of the same tensor (the anchor: no negotiation);
  - a training step (forward, backward, ``DistributedOptimizer.step``) of a 24-layer MLP
    (48 gradient tensors, 1.6 M parameters) against the same step with one
    ``comm.grouped_allreduce`` of every gradient after backward (the anchor).
With ``--compare DIR`` the same worker also runs with DIR's shoal (e.g. the main
checkout, before a change) in alternating rounds. Figures: best of the rounds, median
within a round; the ratio to the anchor (measured in the same process, so the host's load
touches both alike) is the median over rounds.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _timeit(fn, reps: int, warm: int = 5) -> float:
    for _ in range(warm):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def worker() -> None:
    import torch

    import shoal.horovod as hvd
    from shoal import collective
    torch.set_num_threads(1)
    comm = collective.init_group_from_env()
    hvd.init(comm=comm)
    out = {}
    for label, numel, reps in (("allreduce 1 KiB", 256, 400), ("allreduce 4 MiB", 1 << 20, 30)):
        t = torch.ones(numel)
        out[label] = {"hvd": _timeit(lambda: hvd.allreduce(t, op=hvd.Sum), reps),
                      "anchor": _timeit(lambda: comm.allreduce(t.clone(), op="sum"), reps)}
    torch.manual_seed(0)
    layers = []
    for _ in range(24):
        layers += [torch.nn.Linear(256, 256), torch.nn.Tanh()]
    model = torch.nn.Sequential(*layers)
    twin = copy.deepcopy(model)        # the anchor's (no Horovod hooks on its parameters)
    x = torch.randn(16, 256)
    opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=1e-4),
                                   named_parameters=model.named_parameters())

    def hvd_step():
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()
    plain = torch.optim.SGD(twin.parameters(), lr=1e-4)

    def anchor_step():
        plain.zero_grad()
        twin(x).sum().backward()
        comm.grouped_allreduce([p.grad for p in twin.parameters()], op="avg")
        plain.step()
    out["MLP training step"] = {"hvd": _timeit(hvd_step, 40), "anchor": _timeit(anchor_step, 40)}
    if comm.rank == 0:
        print("RESULT " + json.dumps(out), flush=True)
    hvd.shutdown()
    comm.destroy()


def _round(tree: str, ranks: int) -> dict:
    env = dict(os.environ, PYTHONPATH=tree, SHOAL_BENCH_WORKER="1")
    r = subprocess.run([sys.executable, "-m", "shoal.launch", "-np", str(ranks), "--no-prefix",
                        os.path.abspath(__file__)], env=env, capture_output=True, text=True,
                       timeout=600, cwd=tree, check=False)
    for line in r.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"benchmark round failed in {tree}:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--compare", default=None, help="another checkout of shoal to run too")
    args = ap.parse_args()
    trees = {"this": os.path.dirname(HERE)}
    if args.compare:
        trees["compare"] = os.path.abspath(args.compare)
    best: dict = {}
    ratios: dict = {}
    for _ in range(args.rounds):
        for name, tree in trees.items():       # alternating rounds
            for label, v in _round(tree, args.ranks).items():
                b = best.setdefault((name, label), dict(v))
                for k in v:
                    b[k] = min(b[k], v[k])
                ratios.setdefault((name, label), []).append(v["hvd"] / v["anchor"])
    print(f"shoal.horovod on {args.ranks} ranks, {args.rounds} rounds; times: best round "
          "(median within it); ratio: median over rounds of hvd / anchor measured in the same "
          "process (anchor = the bare shoal.collective op)")
    print(f"{'op':22s} {'tree':8s} {'hvd':>10s} {'anchor':>10s} {'hvd/anchor':>11s}")
    for (name, label), v in sorted(best.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        print(f"{label:22s} {name:8s} {v['hvd'] * 1e6:8.0f}us {v['anchor'] * 1e6:8.0f}us "
              f"{statistics.median(ratios[(name, label)]):10.2f}x")


if __name__ == "__main__":
    if os.environ.get("SHOAL_BENCH_WORKER"):
        worker()
    else:
        main()
