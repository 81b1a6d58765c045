"""Reinforcement learning: shoal.rl vs RLlib vs Stable-Baselines3 on CartPole-v1.

    python benchmarks/rl.py [--quick] [--seeds 3] [--what solve,throughput]

Time to solve: PPO until the mean return of the last 20 episodes reaches
475, every system with the same hyperparameters (below), the same policy
(two tanh layers of 64 for the policy and for the value, separate), 16
environments: shoal and RLlib with 2 env runners x 8 vectorised envs,
Stable-Baselines3 in one process (a DummyVecEnv of 16). Each run is its
own process, started fresh; the clock runs from building the algorithm
(runners started) to the iteration that solves, cluster start-up
excluded (shoal.init / ray.init); rounds alternate systems per seed.
Reported: wall time and env steps, and their ratios to shoal. Every
process runs torch on one thread (OMP_NUM_THREADS=1): on a loaded 2-core
host more threads only contend.

Sampling throughput: env steps per second of 2 runners x 8 CartPole envs
with the same MLP policy (fragments of 128 steps per env, batches returned
to the driver: shoal's runner group, RLlib's synchronous_parallel_sample
as its PPO calls it), each system in its own process, alternating rounds,
the best window of each kept.

Load averages are printed next to the figures: other work on the host
moves absolute numbers, much less the ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HYPER = dict(lr=1e-3, gamma=0.99, lambda_=0.95, clip_param=0.2, vf_loss_coeff=0.5, entropy_coeff=0.0,
             num_epochs=10, minibatch_size=256, train_batch_size=1024, grad_clip=0.5)
RUNNERS, ENVS_PER_RUNNER = 2, 8
FRAGMENT = HYPER["train_batch_size"] // (RUNNERS * ENVS_PER_RUNNER)
TARGET, WINDOW = 475.0, 20


# ---------------------------------------------------------------- one solve run per process
def solve_shoal(seed: int, max_steps: int, max_s: float) -> dict:
    import shoal
    from shoal.rl import PPOConfig
    shoal.init(num_cpus=4)
    t0 = time.perf_counter()
    algo = (PPOConfig().environment("CartPole-v1")
            .env_runners(num_env_runners=RUNNERS, num_envs_per_env_runner=ENVS_PER_RUNNER,
                         rollout_fragment_length=FRAGMENT)
            .training(**HYPER).rl_module(model_config={"hiddens": [64, 64], "activation": "tanh"})
            .reporting(metrics_num_episodes_for_smoothing=WINDOW, verbose=0)
            .debugging(seed=seed).build())
    ret = float("nan")
    while algo.env_steps_sampled < max_steps and time.perf_counter() - t0 < max_s:
        ret = algo.train()["episode_return_mean"]
        if ret >= TARGET:
            break
    out = {"wall_s": time.perf_counter() - t0, "env_steps": int(algo.env_steps_sampled),
           "solved": bool(ret >= TARGET), "return": float(ret)}
    algo.stop()
    shoal.shutdown()
    return out


def _rllib_config(seed: int | None):
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
    h = HYPER
    return (PPOConfig().environment("CartPole-v1")
            .env_runners(num_env_runners=RUNNERS, num_envs_per_env_runner=ENVS_PER_RUNNER,
                         rollout_fragment_length=FRAGMENT)
            .training(lr=h["lr"], gamma=h["gamma"], lambda_=h["lambda_"], clip_param=h["clip_param"],
                      vf_loss_coeff=h["vf_loss_coeff"], entropy_coeff=h["entropy_coeff"],
                      num_epochs=h["num_epochs"], minibatch_size=h["minibatch_size"],
                      train_batch_size_per_learner=h["train_batch_size"], grad_clip=h["grad_clip"],
                      grad_clip_by="global_norm", use_kl_loss=False, vf_clip_param=float("inf"))
            .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[64, 64], fcnet_activation="tanh",
                                                       vf_share_layers=False))
            .reporting(metrics_num_episodes_for_smoothing=WINDOW)
            .debugging(seed=seed))


def _ray_init(tmp: str):
    import ray
    # Ray's node start-up gives up after a fixed 30 s, which a loaded 2-core
    # host can exceed: try again (start-up is not part of the timings)
    for attempt in range(3):
        try:
            ray.init(num_cpus=4, include_dashboard=False, _temp_dir=tmp, log_to_driver=False,
                     configure_logging=False)
            return
        except Exception:  # noqa: BLE001 - "node timed out during startup"
            ray.shutdown()
            if attempt == 2:
                raise


def solve_rllib(seed: int, max_steps: int, max_s: float) -> dict:
    import ray
    with tempfile.TemporaryDirectory(prefix="ray_rl_bench_") as tmp:
        _ray_init(tmp)
        t0 = time.perf_counter()
        algo = _rllib_config(seed).build_algo()
        ret, steps = float("nan"), 0
        while steps < max_steps and time.perf_counter() - t0 < max_s:
            r = algo.train()
            ret = r["env_runners"].get("episode_return_mean", float("nan"))
            steps = r["env_runners"]["num_env_steps_sampled_lifetime"]
            if ret >= TARGET:
                break
        out = {"wall_s": time.perf_counter() - t0, "env_steps": int(steps),
               "solved": bool(ret >= TARGET), "return": float(ret)}
        algo.stop()
        ray.shutdown()
    return out


def solve_sb3(seed: int, max_steps: int, max_s: float) -> dict:
    import collections

    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    class StopAtTarget(BaseCallback):
        def __init__(self):
            super().__init__()
            self.returns = collections.deque(maxlen=WINDOW)
            self.t0 = time.perf_counter()

        def _on_step(self):
            for info in self.locals["infos"]:
                if "episode" in info:
                    self.returns.append(info["episode"]["r"])
            solved = len(self.returns) == WINDOW and sum(self.returns) / WINDOW >= TARGET
            return not solved and time.perf_counter() - self.t0 < max_s

    h = HYPER
    t0 = time.perf_counter()
    env = make_vec_env("CartPole-v1", n_envs=RUNNERS * ENVS_PER_RUNNER, seed=seed)
    model = PPO("MlpPolicy", env, learning_rate=h["lr"], n_steps=FRAGMENT, batch_size=h["minibatch_size"],
                n_epochs=h["num_epochs"], gamma=h["gamma"], gae_lambda=h["lambda_"],
                clip_range=h["clip_param"], ent_coef=h["entropy_coeff"], vf_coef=h["vf_loss_coeff"],
                max_grad_norm=h["grad_clip"], seed=seed, device="cpu",
                policy_kwargs={"net_arch": [64, 64], "activation_fn": torch.nn.Tanh})
    cb = StopAtTarget()
    model.learn(total_timesteps=max_steps, callback=cb)
    ret = sum(cb.returns) / max(1, len(cb.returns))
    return {"wall_s": time.perf_counter() - t0, "env_steps": int(model.num_timesteps),
            "solved": bool(len(cb.returns) == WINDOW and ret >= TARGET), "return": float(ret)}


SOLVERS = {"shoal": solve_shoal, "rllib": solve_rllib, "sb3": solve_sb3}


def run_child(system: str, seed: int, max_steps: int, max_s: float, kind: str = "solve") -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                           os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, os.path.abspath(__file__), "--child", system, "--seed", str(seed),
           "--max-steps", str(max_steps), "--max-s", str(max_s), "--kind", kind]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=max_s + 300)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": (proc.stderr or proc.stdout)[-1500:]}


def bench_solve(seeds: list, systems: list, max_steps: int, max_s: float) -> None:
    print(f"\n## time to solve CartPole-v1 (mean of last {WINDOW} episodes >= {TARGET:.0f})")
    print(f"hyperparameters: {HYPER}, {RUNNERS} runners x {ENVS_PER_RUNNER} envs, fragment {FRAGMENT}")
    rows = {s: [] for s in systems}
    for seed in seeds:                       # alternating rounds: every system once per seed
        for s in systems:
            load = os.getloadavg()
            r = run_child(s, seed, max_steps, max_s)
            r["load"] = load
            rows[s].append(r)
            print(f"  seed {seed} {s:6s} {json.dumps(r)}", flush=True)
    print(f"\n| system | seed | solved | wall s | env steps | load avg (1/5/15) |\n|---|---|---|---|---|---|")
    for s in systems:
        for seed, r in zip(seeds, rows[s]):
            if "error" in r:
                print(f"| {s} | {seed} | error | | | |")
                continue
            print(f"| {s} | {seed} | {r['solved']} | {r['wall_s']:.1f} | {r['env_steps']} | "
                  "%.1f/%.1f/%.1f |" % tuple(r["load"]))
    print("\n| system | median wall s | median env steps | wall vs shoal | steps vs shoal |\n|---|---|---|---|---|")
    med = {}
    for s in systems:
        ok = [r for r in rows[s] if "error" not in r]
        if ok:
            med[s] = (_median([r["wall_s"] for r in ok]), _median([r["env_steps"] for r in ok]))
    for s, (w, n) in med.items():
        base = med.get("shoal")
        ratio = (f"{w / base[0]:.2f}x", f"{n / base[1]:.2f}x") if base else ("", "")
        print(f"| {s} | {w:.1f} | {n:.0f} | {ratio[0]} | {ratio[1]} |")


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else 0.5 * (xs[len(xs) // 2 - 1] + xs[len(xs) // 2])


# ---------------------------------------------------------------- sampling throughput
SAMPLE_FRAGMENT = 128


def throughput_shoal(calls: int) -> dict:
    import shoal
    from shoal.rl import PPOConfig
    shoal.init(num_cpus=4)
    algo = (PPOConfig().environment("CartPole-v1")
            .env_runners(num_env_runners=RUNNERS, num_envs_per_env_runner=ENVS_PER_RUNNER,
                         rollout_fragment_length=SAMPLE_FRAGMENT)
            .rl_module(model_config={"hiddens": [64, 64], "activation": "tanh"})
            .reporting(verbose=0).debugging(seed=0).build())

    def one():
        return sum(b["env_steps"] for b in algo.env_runner_group.sample())
    out = _timed(one, calls)
    algo.stop()
    shoal.shutdown()
    return out


def throughput_rllib(calls: int) -> dict:
    import ray
    from ray.rllib.execution.rollout_ops import synchronous_parallel_sample
    steps_per_call = RUNNERS * ENVS_PER_RUNNER * SAMPLE_FRAGMENT
    with tempfile.TemporaryDirectory(prefix="ray_rl_bench_") as tmp:
        _ray_init(tmp)
        algo = (_rllib_config(0).env_runners(rollout_fragment_length=SAMPLE_FRAGMENT)
                .training(train_batch_size_per_learner=steps_per_call).build_algo())

        def one():
            # what RLlib's own PPO training_step calls to sample
            episodes = synchronous_parallel_sample(worker_set=algo.env_runner_group,
                                                   max_env_steps=steps_per_call, concat=True,
                                                   sample_timeout_s=120, _uses_new_env_runners=True)
            return sum(len(e) for e in episodes)
        out = _timed(one, calls)
        algo.stop()
        ray.shutdown()
    return out


def _timed(one, calls: int) -> dict:
    one()                                   # warm-up
    best = 0.0
    for _ in range(3):                      # best of 3 windows inside the process
        steps, t = 0, time.perf_counter()
        for _ in range(calls):
            steps += one()
        best = max(best, steps / (time.perf_counter() - t))
    return {"steps_per_s": float(best)}


THROUGHPUT = {"shoal": throughput_shoal, "rllib": throughput_rllib}


def bench_throughput(rounds: int, calls: int) -> None:
    print(f"\n## sampling throughput, {RUNNERS} runners x {ENVS_PER_RUNNER} CartPole envs, "
          f"fragments of {SAMPLE_FRAGMENT} steps per env, batches back in the driver")
    best = {"shoal": 0.0, "rllib": 0.0}
    for i in range(rounds):                 # alternating rounds, each system its own process
        for s in ("shoal", "rllib"):
            load = os.getloadavg()
            r = run_child(s, 0, calls, 600, kind="throughput")
            if "error" in r:
                print(f"  round {i} {s}: error {r['error'][-500:]}")
                continue
            best[s] = max(best[s], r["steps_per_s"])
            print(f"  round {i} {s}: {r['steps_per_s']:,.0f} env steps/s; load %.1f/%.1f/%.1f" % load,
                  flush=True)
    print(f"\n| system | env steps/s (best) | vs RLlib |\n|---|---|---|")
    for s in ("shoal", "rllib"):
        ratio = f"{best[s] / best['rllib']:.2f}x" if best["rllib"] else ""
        print(f"| {s} | {best[s]:,.0f} | {ratio} |")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 seed, 3 throughput rounds")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--what", default="throughput,solve")
    ap.add_argument("--systems", default="shoal,rllib,sb3")
    ap.add_argument("--max-steps", type=int, default=400_000)
    ap.add_argument("--max-s", type=float, default=900.0)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--kind", default="solve", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        fn = SOLVERS[a.child] if a.kind == "solve" else THROUGHPUT[a.child]
        args = (a.seed, a.max_steps, a.max_s) if a.kind == "solve" else (a.max_steps,)
        print("RESULT " + json.dumps(fn(*args)), flush=True)
        return
    print("load average before: %.2f %.2f %.2f" % os.getloadavg())
    what = a.what.split(",")
    if "throughput" in what:
        bench_throughput(2 if a.quick else 3, 5)
    if "solve" in what:
        seeds = list(range(1 if a.quick else a.seeds))
        bench_solve(seeds, a.systems.split(","), a.max_steps, a.max_s)
    print("load average after: %.2f %.2f %.2f" % os.getloadavg())


if __name__ == "__main__":
    main()
