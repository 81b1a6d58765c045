"""shoal.tune against Ray Tune and Optuna, side by side in one run, on this machine.

    python benchmarks/tune.py [--quick] [--rounds 3] [--only overhead|asha|pbt]

1. overhead: N trials (default 500) of a function that returns at once, random
   search, 2 CPUs. Trials per second of ``Tuner.fit()`` for shoal.tune and
   Ray Tune (each trial in a worker process), and Optuna in-process
   (``study.optimize(n_jobs=2)``, RandomSampler). shoal twice: as it comes
   (trials that return at once keep their results in the experiment database
   only, which is how Ray Tune runs here, ``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1``)
   and with ``RunConfig(trial_files=True)`` (each trial's
   params.json/result.json/progress.csv too). ``init`` includes the cluster's
   start (shoal: until a first task ran), ``fit`` the trials: each system's
   modules are imported before the clock starts (``import optuna`` too).
2. asha: 32 trials of a small torch CNN on scikit-learn's digits, at most 10
   epochs, learning rate and width searched, ASHA (grace 1, reduction 3):
   wall time and best test accuracy for shoal and Ray Tune with the same
   space, seeds and scheduler settings, and shoal ASHA vs shoal FIFO.
3. pbt: the same CNN (width 4), 8 trials of 10 epochs, PBT and PB2 on the
   learning rate (perturbation every 2 epochs, checkpoints every epoch)
   against a random search of the same budget (8 x 10 epochs, the same 8
   starting rates).

Each system runs in its own fresh process, one after the other (rounds
alternate the systems; the best round is kept), so they do not compete for
the cores. Ratios matter, not absolute times: the machine is shared.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------- overhead
def overhead_shoal(n: int, tmp: str, trial_files: bool | None = None) -> dict:
    import shoal
    from shoal import tune
    tune.Tuner, tune.TuneConfig, tune.RunConfig, tune.uniform   # noqa: B018 - import them
    t = time.perf_counter()
    shoal.init(num_cpus=2)
    shoal.get(shoal.remote(lambda: None).remote())    # the workers are up
    init_s = time.perf_counter() - t

    def objective(config):
        return {"loss": (config["x"] - 3) ** 2}
    t = time.perf_counter()
    grid = tune.Tuner(objective, param_space={"x": tune.uniform(0, 10)},
                      tune_config=tune.TuneConfig(metric="loss", mode="min", num_samples=n,
                                                  seed=0),
                      run_config=tune.RunConfig(storage_path=tmp, verbose=0,
                                                trial_files=trial_files)).fit()
    fit_s = time.perf_counter() - t
    assert len(grid) == n and grid.num_errors == 0
    shoal.shutdown()
    return {"init_s": init_s, "fit_s": fit_s, "trials_per_s": n / fit_s, "trials": n}


def overhead_ray(n: int, tmp: str) -> dict:
    import ray
    from ray import tune
    t = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             _temp_dir=os.path.join(tmp, "ray"))
    init_s = time.perf_counter() - t

    def objective(config):
        return {"loss": (config["x"] - 3) ** 2}
    t = time.perf_counter()
    grid = tune.Tuner(objective, param_space={"x": tune.uniform(0, 10)},
                      tune_config=tune.TuneConfig(metric="loss", mode="min", num_samples=n),
                      run_config=tune.RunConfig(storage_path=os.path.join(tmp, "res"),
                                                verbose=0)).fit()
    fit_s = time.perf_counter() - t
    assert len(grid) == n and grid.num_errors == 0
    ray.shutdown()
    return {"init_s": init_s, "fit_s": fit_s, "trials_per_s": n / fit_s, "trials": n}


def overhead_optuna(n: int, tmp: str) -> dict:
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def objective(trial):
        return (trial.suggest_float("x", 0, 10) - 3) ** 2
    t = time.perf_counter()
    study = optuna.create_study(direction="minimize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(objective, n_trials=n, n_jobs=2)
    fit_s = time.perf_counter() - t
    assert len(study.trials) == n
    return {"init_s": 0.0, "fit_s": fit_s, "trials_per_s": n / fit_s, "trials": n}


# ---------------------------------------------------------------- asha on a CNN
def _digits():
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    return train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)


def train_cnn(config, data=None, report=None):
    """A small CNN on digits: one report (test accuracy) per epoch."""
    import torch
    from torch import nn
    torch.set_num_threads(1)
    Xtr, Xte, ytr, yte = data
    torch.manual_seed(config["seed"])
    w = config["width"]
    model = nn.Sequential(nn.Conv2d(1, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(2 * w * 4, 10))
    opt = torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=0.9)
    Xtr, ytr = torch.from_numpy(Xtr), torch.from_numpy(ytr)
    Xte, yte = torch.from_numpy(Xte), torch.from_numpy(yte)
    g = torch.Generator().manual_seed(config["seed"])
    for epoch in range(10):
        model.train()
        perm = torch.randperm(len(Xtr), generator=g)
        for i in range(0, len(Xtr), 32):
            idx = perm[i:i + 32]
            opt.zero_grad()
            nn.functional.cross_entropy(model(Xtr[idx]), ytr[idx]).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            acc = (model(Xte).argmax(1) == yte).float().mean().item()
        report({"accuracy": acc, "epoch": epoch})


def _configs(n: int) -> list:
    """The same 32 configs for every system (lr log-uniform, width a choice)."""
    import random
    rng = random.Random(0)
    return [{"lr": 10 ** rng.uniform(-3, -0.5), "width": rng.choice([4, 8, 16, 32]), "seed": i}
            for i in range(n)]


def asha_shoal(n: int, tmp: str, scheduler: str = "asha") -> dict:
    t0 = time.perf_counter()
    import shoal
    from shoal import tune
    shoal.init(num_cpus=2)
    data = _digits()

    sched = (tune.ASHAScheduler(max_t=10, grace_period=1, reduction_factor=3)
             if scheduler == "asha" else tune.FIFOScheduler())
    # grid_search over whole configs keeps the 32 configs identical across systems
    grid = tune.Tuner(tune.with_parameters(lambda c, data: train_cnn(c["cfg"], data, tune.report),
                                           data=data),
                      param_space={"cfg": tune.grid_search(_configs(n))},
                      tune_config=tune.TuneConfig(metric="accuracy", mode="max",
                                                  scheduler=sched),
                      run_config=tune.RunConfig(storage_path=tmp, verbose=0)).fit()
    wall = time.perf_counter() - t0
    best = grid.get_best_result(scope="all")
    epochs = sum(len(r.metrics_history) for r in grid)
    shoal.shutdown()
    return {"wall_s": wall, "best_accuracy": max(h["accuracy"] for h in best.metrics_history),
            "epochs_run": epochs, "errors": grid.num_errors}


def asha_ray(n: int, tmp: str) -> dict:
    t0 = time.perf_counter()
    import ray
    from ray import tune
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             _temp_dir=os.path.join(tmp, "ray"))
    data = _digits()

    def trainable(config, data):
        train_cnn(config["cfg"], data, tune.report)
    grid = tune.Tuner(tune.with_parameters(trainable, data=data),
                      param_space={"cfg": tune.grid_search(_configs(n))},
                      tune_config=tune.TuneConfig(
                          metric="accuracy", mode="max",
                          scheduler=tune.schedulers.ASHAScheduler(max_t=10, grace_period=1,
                                                                  reduction_factor=3)),
                      run_config=tune.RunConfig(storage_path=os.path.join(tmp, "res"),
                                                verbose=0)).fit()
    wall = time.perf_counter() - t0
    best = grid.get_best_result(scope="all")
    epochs = sum(len(r.metrics_dataframe) for r in grid)
    ray.shutdown()
    return {"wall_s": wall, "best_accuracy": float(best.metrics_dataframe["accuracy"].max()),
            "epochs_run": epochs, "errors": len(grid.errors)}


# ---------------------------------------------------------------- pbt on a CNN
def train_cnn_ckpt(config, data=None, width=4, epochs=10):
    """The CNN with the learning rate from ``config``, resumable: a checkpoint
    (model, optimizer, epoch) per epoch, as PBT needs."""
    import torch
    from torch import nn

    from shoal import tune
    torch.set_num_threads(1)
    Xtr, Xte, ytr, yte = data
    torch.manual_seed(config["seed"])
    model = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * width * 4, 10))
    opt = torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=0.9)
    start = 0
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        state = ckpt.to_dict()
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = state["epoch"] + 1
        for g in opt.param_groups:      # PBT's explored rate replaces the donor's
            g["lr"] = config["lr"]
    Xtr, ytr = torch.from_numpy(Xtr), torch.from_numpy(ytr)
    Xte, yte = torch.from_numpy(Xte), torch.from_numpy(yte)
    for epoch in range(start, epochs):
        g = torch.Generator().manual_seed(config["seed"] * 1000 + epoch)
        model.train()
        perm = torch.randperm(len(Xtr), generator=g)
        for i in range(0, len(Xtr), 32):
            idx = perm[i:i + 32]
            opt.zero_grad()
            nn.functional.cross_entropy(model(Xtr[idx]), ytr[idx]).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            acc = (model(Xte).argmax(1) == yte).float().mean().item()
        tune.report({"accuracy": acc, "epoch": epoch, "lr": config["lr"]},
                    checkpoint=tune.Checkpoint.from_dict(
                        {"model": model.state_dict(), "opt": opt.state_dict(), "epoch": epoch}))


def _pbt_lrs(n: int) -> list:
    import random
    rng = random.Random(1)
    return [10 ** rng.uniform(-4, -0.5) for _ in range(n)]


def pbt_shoal(n: int, tmp: str, scheduler: str = "pbt") -> dict:
    t0 = time.perf_counter()
    import shoal
    from shoal import tune
    shoal.init(num_cpus=2)
    data = _digits()
    lrs = _pbt_lrs(n)
    if scheduler == "pbt":
        sched = tune.PopulationBasedTraining(
            perturbation_interval=2, quantile_fraction=0.25, seed=0,
            hyperparam_mutations={"lr": tune.loguniform(1e-4, 10 ** -0.5)})
    elif scheduler == "pb2":
        sched = tune.PB2(perturbation_interval=2, quantile_fraction=0.25, seed=0,
                         hyperparam_bounds={"lr": tune.loguniform(1e-4, 10 ** -0.5)})
    else:
        sched = tune.FIFOScheduler()
    grid = tune.Tuner(tune.with_parameters(train_cnn_ckpt, data=data),
                      param_space={"lr": tune.sample_from(lambda spec: lrs[spec.config.seed]),
                                   "seed": tune.grid_search(list(range(n)))},
                      tune_config=tune.TuneConfig(metric="accuracy", mode="max",
                                                  scheduler=sched),
                      run_config=tune.RunConfig(
                          storage_path=tmp, verbose=0,
                          checkpoint_config=tune.CheckpointConfig(num_to_keep=2))).fit()
    wall = time.perf_counter() - t0
    final = [r.metrics["accuracy"] for r in grid if r.metrics]
    epochs = sum(len(r.metrics_history) for r in grid)
    shoal.shutdown()
    return {"wall_s": wall, "best_final_accuracy": max(final),
            "mean_final_accuracy": sum(final) / len(final),
            "best_accuracy": max(h["accuracy"] for r in grid for h in r.metrics_history),
            "epochs_run": epochs, "errors": grid.num_errors}


# ---------------------------------------------------------------- driver
def _child(args) -> None:
    tmp = tempfile.mkdtemp(prefix="tb_", dir="/tmp")
    try:
        fn = {"overhead_shoal": overhead_shoal, "overhead_ray": overhead_ray,
              "overhead_optuna": overhead_optuna, "asha_shoal": asha_shoal,
              "asha_ray": asha_ray,
              "fifo_shoal": lambda n, tmp: asha_shoal(n, tmp, "fifo"),
              "overhead_shoal_files": lambda n, tmp: overhead_shoal(n, tmp, True),
              "pbt_shoal": pbt_shoal,
              "pb2_shoal": lambda n, tmp: pbt_shoal(n, tmp, "pb2"),
              "random_shoal": lambda n, tmp: pbt_shoal(n, tmp, "random")}[args.child]
        out = fn(args.n, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("RESULT " + json.dumps(out), flush=True)


def _run_child(name: str, n: int, timeout: float) -> dict | None:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               RAY_DEDUP_LOGS="0")
    if name.startswith("overhead"):
        # no per-trial files (shoal's default for such trials); the ASHA runs keep
        # Ray Tune's loggers, which its ResultGrid reads the metrics history from
        env["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    p = subprocess.run([sys.executable, __file__, "--child", name, "--n", str(n)], env=env,
                       capture_output=True, text=True, timeout=timeout)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    print(f"{name} failed:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}", file=sys.stderr)
    return None


def _best(rounds: list, key: str, larger: bool) -> dict | None:
    ok = [r for r in rounds if r]
    if not ok:
        return None
    return (max if larger else min)(ok, key=lambda r: r[key])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer trials and one round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", choices=["overhead", "asha", "pbt"])
    ap.add_argument("--trials", type=int, default=500, help="trials of the overhead test")
    ap.add_argument("--ray-trials", type=int, default=None,
                    help="trials for Ray Tune's overhead run (default: same)")
    ap.add_argument("--skip-ray", action="store_true", help="leave Ray Tune out (e.g. when it "
                    "cannot start on an overloaded machine)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args)
        return
    rounds = 1 if args.quick else args.rounds
    load = os.getloadavg()
    print(f"# shoal.tune benchmark, load average before: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    if args.only in (None, "overhead"):
        n = 100 if args.quick else args.trials
        nray = args.ray_trials or n
        res = {"shoal": [], "shoal_files": [], "ray": [], "optuna": []}
        for _ in range(rounds):
            res["shoal"].append(_run_child("overhead_shoal", n, 600))
            res["shoal_files"].append(_run_child("overhead_shoal_files", n, 600))
            if not args.skip_ray:
                res["ray"].append(_run_child("overhead_ray", nray, 1200))
            res["optuna"].append(_run_child("overhead_optuna", n, 600))
        best = {k: _best(v, "trials_per_s", True) for k, v in res.items()}
        print(f"\n## overhead: {n} trials returning at once, random search, 2 CPUs "
              f"(best of {rounds})\n")
        print("| system | trials | trials/s | fit s | init s | shoal vs it | "
              "shoal (trial_files=True) vs it |")
        print("|---|---|---|---|---|---|---|")
        for k, label in (("shoal", "shoal"), ("shoal_files", "shoal, trial_files=True"),
                         ("ray", "Ray Tune"), ("optuna", "Optuna in-process")):
            b = best[k]
            if b is None:
                print(f"| {label} | - | failed | | | | |")
                continue
            r1, r2 = (best[s]["trials_per_s"] / b["trials_per_s"] if best[s] else 0
                      for s in ("shoal", "shoal_files"))
            print(f"| {label} | {b['trials']} | {b['trials_per_s']:.1f} | {b['fit_s']:.2f} | "
                  f"{b['init_s']:.2f} | {r1:.2f}x | {r2:.2f}x |")
    if args.only in (None, "asha"):
        n = 8 if args.quick else 32
        res = {"asha_shoal": [], "asha_ray": [], "fifo_shoal": []}
        for _ in range(rounds):
            for k in res:
                if not (args.skip_ray and k == "asha_ray"):
                    res[k].append(_run_child(k, n, 1800))
        best = {k: _best(v, "wall_s", False) for k, v in res.items()}
        print(f"\n## ASHA on a small CNN, digits, {n} trials, <= 10 epochs, 2 CPUs "
              f"(best of {rounds}; wall time includes start-up)\n")
        print("| run | wall s | best test accuracy | epochs run | shoal ASHA faster by |")
        print("|---|---|---|---|---|")
        base = best["asha_shoal"]
        for k, label in (("asha_shoal", "shoal ASHA"), ("asha_ray", "Ray Tune ASHA"),
                         ("fifo_shoal", "shoal FIFO")):
            b = best[k]
            if b is None:
                print(f"| {label} | failed | | | |")
                continue
            ratio = b["wall_s"] / base["wall_s"] if base else 0
            print(f"| {label} | {b['wall_s']:.1f} | {b['best_accuracy']:.4f} | "
                  f"{b['epochs_run']} | {ratio:.2f}x |")
    if args.only in (None, "pbt"):
        n = 8
        res = {"pbt_shoal": [], "pb2_shoal": [], "random_shoal": []}
        for _ in range(rounds):
            for k in res:
                res[k].append(_run_child(k, n, 1800))
        print(f"\n## PBT on the learning rate vs random search, CNN on digits, {n} trials "
              f"x 10 epochs, 2 CPUs (every round)\n")
        print("| round | run | best final accuracy | mean final accuracy | best accuracy seen | "
              "epochs run | wall s |")
        print("|---|---|---|---|---|---|---|")
        for i in range(rounds):
            for k, label in (("pbt_shoal", "shoal PBT"), ("pb2_shoal", "shoal PB2"),
                             ("random_shoal", "shoal random")):
                b = res[k][i]
                if b is None:
                    print(f"| {i + 1} | {label} | failed | | | | |")
                    continue
                print(f"| {i + 1} | {label} | {b['best_final_accuracy']:.4f} | "
                      f"{b['mean_final_accuracy']:.4f} | {b['best_accuracy']:.4f} | "
                      f"{b['epochs_run']} | {b['wall_s']:.1f} |")
    load = os.getloadavg()
    print(f"\nload average after: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")


if __name__ == "__main__":
    main()
