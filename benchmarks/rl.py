"""Reinforcement learning: shoal.rl vs RLlib vs Stable-Baselines3.

    python benchmarks/rl.py [--quick] [--seeds 3] [--what throughput,solve,impala,dqn,pendulum]
    python benchmarks/rl.py --what solve --seed-list 1 --results r.jsonl   # one seed of a split sweep
    python benchmarks/rl.py --report r.jsonl        # the tables and plots of every saved result

Time to solve (solve): PPO on CartPole-v1 until the mean return of the
last 20 episodes reaches 475, every system with the same hyperparameters
(below), the same policy (two tanh layers of 64 for the policy and for the
value, separate), 16 environments: shoal and RLlib with 2 env runners x 8
vectorised envs, Stable-Baselines3 in one process (a DummyVecEnv of 16).
Each run is its own process, started fresh; the clock runs from building
the algorithm (runners started) to the iteration that solves, cluster
start-up excluded (shoal.init / ray.init, and until the task workers each
prestarts have booted: four half-second tasks run at once); every
driver's library imports are outside the clock too (SB3's torch and
stable_baselines3, shoal.rl, ray.rllib). shoal's pooled workers import
torch and Gymnasium as they boot (SHOAL_WORKER_PREIMPORT, set before
shoal.init) and its runner actors start in them; "shoal-cold" is the same
without, its runners importing torch inside the clock as RLlib's do.
Rounds alternate systems per seed. Episodes are counted the same way for every system: the mean of the
last 20 episodes that ended. (RLlib's own ``episode_return_mean`` averages
only the episodes that ended in the latest iteration, 1 to 3 once
episodes last ~500 steps, so it crosses 475 earlier; we keep RLlib's
figure next to ours as ``rllib_reported``.) Reported: wall time and env
steps, and their ratios to shoal. Every process runs torch on one thread
(OMP_NUM_THREADS=1): on a loaded 2-core host more threads only contend.

Sampling throughput (throughput): env steps per second of 2 runners x 8
CartPole envs with the same MLP policy (fragments of 128 steps per env,
batches returned to the driver: shoal's runner group, RLlib's
synchronous_parallel_sample as its PPO calls it), each system in its own
process, alternating rounds, the best window of each kept.

IMPALA (impala): shoal's IMPALA vs RLlib's IMPALA on CartPole-v1 (same
runners, fragments of 32, train batches of 512, lr 1e-3, same MLP), until
the same solve criterion; training throughput = env steps sampled / wall
time, with shoal's PPO run of the same seed as a reference row.

DQN (dqn) and continuous PPO (pendulum): shoal vs Stable-Baselines3 with
the RL Baselines3 Zoo's tuned hyperparameters (dqn.yml CartPole-v1: 50k
steps; ppo.yml Pendulum-v1: 100k steps), then 10 greedy evaluation
episodes; the final return is compared with the zoo's published
benchmark (benchmark.md: DQN CartPole-v1 500.0 +- 0.0, PPO Pendulum-v1
-172.2 +- 104.2). SB3's Pendulum runs use the zoo's gSDE exploration;
shoal's Gaussian policy has a state-independent log std instead.

Every section writes a plot of episode return over env steps per system
and seed to docs/images/rl_<section>.png (matplotlib, in the bench extra).

Load averages are printed next to the figures: other work on the host
moves absolute numbers, much less the ratios.
"""
from __future__ import annotations

import argparse
import collections
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
IMPALA_HYPER = dict(lr=1e-3, train_batch_size=512, rollout_fragment_length=32)


# ---------------------------------------------------------------- one solve run per process
def solve_shoal(seed: int, max_steps: int, max_s: float, preimport: bool = True) -> dict:
    import shoal
    from shoal.rl import PPOConfig
    _shoal_init(preimport)
    t0 = time.perf_counter()
    algo = (PPOConfig().environment("CartPole-v1")
            .env_runners(num_env_runners=RUNNERS, num_envs_per_env_runner=ENVS_PER_RUNNER,
                         rollout_fragment_length=FRAGMENT)
            .training(**HYPER).rl_module(model_config={"hiddens": [64, 64], "activation": "tanh"})
            .reporting(metrics_num_episodes_for_smoothing=WINDOW, verbose=0)
            .debugging(seed=seed).build())
    out = _solve_loop(algo, t0, max_steps, max_s)
    algo.stop()
    shoal.shutdown()
    return out


def solve_shoal_impala(seed: int, max_steps: int, max_s: float) -> dict:
    import shoal
    from shoal.rl import IMPALAConfig
    _shoal_init()
    t0 = time.perf_counter()
    algo = (IMPALAConfig().environment("CartPole-v1")
            .env_runners(num_env_runners=RUNNERS, num_envs_per_env_runner=ENVS_PER_RUNNER,
                         rollout_fragment_length=IMPALA_HYPER["rollout_fragment_length"])
            .training(lr=IMPALA_HYPER["lr"], train_batch_size=IMPALA_HYPER["train_batch_size"])
            .rl_module(model_config={"hiddens": [64, 64], "activation": "tanh"})
            .reporting(metrics_num_episodes_for_smoothing=WINDOW, verbose=0)
            .debugging(seed=seed).build())
    out = _solve_loop(algo, t0, max_steps, max_s)
    algo.stop()
    shoal.shutdown()
    return out


def _solve_loop(algo, t0: float, max_steps: int, max_s: float) -> dict:
    ret, curve = float("nan"), []
    while algo.env_steps_sampled < max_steps and time.perf_counter() - t0 < max_s:
        ret = algo.train()["episode_return_mean"]
        curve.append((int(algo.env_steps_sampled), float(ret)))
        if ret >= TARGET:
            break
    return {"wall_s": time.perf_counter() - t0, "env_steps": int(algo.env_steps_sampled),
            "solved": bool(ret >= TARGET), "return": float(ret), "iterations": algo.iteration,
            "curve": _thin(curve)}


def _thin(curve: list, n: int = 200) -> list:
    step = max(1, len(curve) // n)
    return curve[::step] + ([curve[-1]] if curve and (len(curve) - 1) % step else [])


class _LastEpisodes:
    """The mean return of the last ``n`` episodes, from per-iteration (mean, count) pairs.

    RLlib reports the mean over the episodes that ended in the iteration
    and how many did; the sum of their returns is exact, so the last ``n``
    episodes' mean is too (up to the split of the oldest iteration)."""

    def __init__(self, n: int):
        self.n, self.items = n, collections.deque()

    def add(self, mean: float, count: int) -> float:
        if count > 0 and mean == mean:
            self.items.append((float(mean), int(count)))
        total, seen = 0.0, 0
        for m, c in reversed(self.items):
            take = min(c, self.n - seen)
            total, seen = total + m * take, seen + take
            if seen == self.n:
                break
        return total / seen if seen == self.n else float("nan")


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


def solve_shoal_cold(seed: int, max_steps: int, max_s: float) -> dict:
    return solve_shoal(seed, max_steps, max_s, preimport=False)


def _shoal_init(preimport: bool = False):
    import shoal
    # The pooled workers import torch and Gymnasium as they boot (cluster
    # start-up, outside the clock as SB3's and every driver's imports are);
    # the env runner actors then start in them ("shoal-cold": without)
    if preimport:
        os.environ["SHOAL_WORKER_PREIMPORT"] = "torch,gymnasium"
    shoal.init(num_cpus=4)
    _settle(lambda f: shoal.get([shoal.remote(f).remote() for _ in range(4)], timeout=120))


def _pause():
    time.sleep(0.5)


def _settle(run_tasks) -> None:
    # Cluster start-up is excluded from the clock; that includes the task
    # workers each system prestarts in the background at init (one per CPU),
    # which would otherwise boot during the timed build, beside the runners.
    # Four half-second tasks at once need four booted workers.
    run_tasks(_pause)


def _ray_init(tmp: str):
    import ray
    # Ray's node start-up gives up after a fixed 30 s, which a loaded 2-core
    # host can exceed: try again (start-up is not part of the timings)
    for attempt in range(3):
        try:
            ray.init(num_cpus=4, include_dashboard=False, _temp_dir=tmp, log_to_driver=False,
                     configure_logging=False)
            _settle(lambda f: ray.get([ray.remote(f).remote() for _ in range(4)], timeout=120))
            return
        except Exception:  # noqa: BLE001 - "node timed out during startup"
            ray.shutdown()
            if attempt == 2:
                raise


def solve_rllib(seed: int, max_steps: int, max_s: float) -> dict:
    import ray
    with tempfile.TemporaryDirectory(prefix="ray_rl_bench_") as tmp:
        _ray_init(tmp)
        config = _rllib_config(seed)       # RLlib's imports, outside the clock as SB3's and shoal's
        t0 = time.perf_counter()
        algo = config.build_algo()
        out = _rllib_solve_loop(algo, t0, max_steps, max_s)
        algo.stop()
        ray.shutdown()
    return out


def _rllib_solve_loop(algo, t0: float, max_steps: int, max_s: float) -> dict:
    last = _LastEpisodes(WINDOW)
    ret, steps, curve, reported_at, iterations = float("nan"), 0, [], None, 0
    while steps < max_steps and time.perf_counter() - t0 < max_s:
        r = algo.train()
        iterations += 1
        er = r.get("env_runners", {})
        reported = er.get("episode_return_mean", float("nan"))
        ret = last.add(reported, er.get("num_episodes", 0))
        # IMPALA's asynchronous iterations may bring no runner results
        steps = er.get("num_env_steps_sampled_lifetime", steps)
        curve.append((int(steps), float(ret)))
        if reported_at is None and reported >= TARGET:
            reported_at = int(steps)        # where RLlib's own metric says solved
        if ret >= TARGET:
            break
    return {"wall_s": time.perf_counter() - t0, "env_steps": int(steps), "solved": bool(ret >= TARGET),
            "return": float(ret), "rllib_reported_solve_steps": reported_at,
            "iterations": iterations, "curve": _thin(curve)}


def solve_rllib_impala(seed: int, max_steps: int, max_s: float) -> dict:
    import ray
    from ray.rllib.algorithms.impala import IMPALAConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
    h = IMPALA_HYPER
    with tempfile.TemporaryDirectory(prefix="ray_rl_bench_") as tmp:
        _ray_init(tmp)
        t0 = time.perf_counter()
        algo = (IMPALAConfig().environment("CartPole-v1")
                .env_runners(num_env_runners=RUNNERS, num_envs_per_env_runner=ENVS_PER_RUNNER,
                             rollout_fragment_length=h["rollout_fragment_length"])
                .training(lr=h["lr"], train_batch_size_per_learner=h["train_batch_size"],
                          vf_loss_coeff=0.5, entropy_coeff=0.0, grad_clip=40.0)
                .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[64, 64], fcnet_activation="tanh",
                                                           vf_share_layers=False))
                .reporting(metrics_num_episodes_for_smoothing=WINDOW)
                .debugging(seed=seed)).build_algo()
        out = _rllib_solve_loop(algo, t0, max_steps, max_s)
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

            self.curve = []

        def _on_step(self):
            for info in self.locals["infos"]:
                if "episode" in info:
                    self.returns.append(info["episode"]["r"])
                    if len(self.returns) == WINDOW:
                        self.curve.append((int(self.num_timesteps), float(sum(self.returns) / WINDOW)))
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
            "solved": bool(len(cb.returns) == WINDOW and ret >= TARGET), "return": float(ret),
            "curve": _thin(cb.curve)}


SOLVERS = {"shoal": solve_shoal, "shoal-cold": solve_shoal_cold, "rllib": solve_rllib, "sb3": solve_sb3,
           "shoal-impala": solve_shoal_impala, "rllib-impala": solve_rllib_impala}


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


def bench_solve(seeds: list, systems: list, max_steps: int, max_s: float, name: str = "ppo",
                title: str = "PPO") -> None:
    print(f"\n## {title}: time to solve CartPole-v1 (mean of the last {WINDOW} episodes >= {TARGET:.0f})")
    if name == "ppo":
        print(f"hyperparameters: {HYPER}, {RUNNERS} runners x {ENVS_PER_RUNNER} envs, fragment {FRAGMENT}")
    else:
        print(f"hyperparameters: {IMPALA_HYPER}, {RUNNERS} runners x {ENVS_PER_RUNNER} envs")
    rows = {s: [] for s in systems}
    for seed in seeds:                       # alternating rounds: every system once per seed
        for s in systems:
            load = os.getloadavg()
            r = run_child(s, seed, max_steps, max_s)
            r["load"] = load
            rows[s].append(r)
            print(f"  seed {seed} {s:12s} " + json.dumps({k: v for k, v in r.items() if k != "curve"}),
                  flush=True)
            _save(name, s, seed, r)
    report_solve(rows, seeds, systems, name, title)


def report_solve(rows: dict, seeds: list, systems: list, name: str, title: str) -> None:
    """The solve tables and plot of ``rows`` (system -> one result per seed)."""
    print("\n| system | seed | solved | wall s | env steps | env steps/s | load avg (1/5/15) |\n"
          "|---|---|---|---|---|---|---|")
    for s in systems:
        for seed, r in zip(seeds, rows[s]):
            if "error" in r:
                print(f"| {s} | {seed} | error | | | | |")
                continue
            print(f"| {s} | {seed} | {r['solved']} | {r['wall_s']:.1f} | {r['env_steps']} | "
                  f"{r['env_steps'] / r['wall_s']:,.0f} | " + "%.1f/%.1f/%.1f |" % tuple(r["load"]))
    base_name = systems[0]
    print(f"\n| system | median wall s | median env steps | median env steps/s | wall vs {base_name} | "
          f"steps vs {base_name} |\n|---|---|---|---|---|---|")
    med = {}
    for s in systems:
        ok = [r for r in rows[s] if "error" not in r]
        if ok:
            med[s] = (_median([r["wall_s"] for r in ok]), _median([r["env_steps"] for r in ok]),
                      _median([r["env_steps"] / r["wall_s"] for r in ok]))
    for s, (w, n, tp) in med.items():
        base = med.get(base_name)
        ratio = (f"{w / base[0]:.2f}x", f"{n / base[1]:.2f}x") if base else ("", "")
        print(f"| {s} | {w:.1f} | {n:.0f} | {tp:,.0f} | {ratio[0]} | {ratio[1]} |")
    reported = [r.get("rllib_reported_solve_steps") for s in systems if s.startswith("rllib")
                for r in rows[s] if r.get("rllib_reported_solve_steps")]
    if reported:
        print(f"(RLlib's own episode_return_mean, over the episodes of one iteration, first read >= "
              f"{TARGET:.0f} at {reported} env steps)")
    plot(rows, seeds, f"rl_{name}.png", f"{title} on CartPole-v1 (mean of the last {WINDOW} episodes)",
         target=TARGET)


# ---------------------------------------------------------------- fixed budgets vs SB3's zoo
ZOO = {  # RL Baselines3 Zoo, benchmark.md: mean and std of the final greedy return
    "dqn": {"env": "CartPole-v1", "steps": 50_000, "mean": 500.0, "std": 0.0},
    "pendulum": {"env": "Pendulum-v1", "steps": 100_000, "mean": -172.225, "std": 104.159},
}
# the zoo's hyperparameters (dqn.yml CartPole-v1, ppo.yml Pendulum-v1), in each system's words
ZOO_DQN = dict(lr=2.3e-3, batch_size=64, buffer_size=100_000, learning_starts=1000, gamma=0.99,
               target_update_interval=10, train_freq=256, gradient_steps=128,
               exploration_fraction=0.16, exploration_final_eps=0.04, hiddens=[256, 256])
ZOO_PENDULUM = dict(n_envs=4, n_steps=1024, gae_lambda=0.95, gamma=0.9, n_epochs=10, ent_coef=0.0,
                    lr=1e-3, clip_range=0.2, batch_size=64)
EVAL_EPISODES = 10


def budget_shoal_dqn(seed: int, max_steps: int, max_s: float) -> dict:
    import shoal
    from shoal.rl import DQNConfig
    z = ZOO_DQN
    _shoal_init()
    t0 = time.perf_counter()
    algo = (DQNConfig().environment("CartPole-v1")
            .env_runners(num_env_runners=1, num_envs_per_env_runner=1,
                         rollout_fragment_length=z["train_freq"])
            .training(lr=z["lr"], gamma=z["gamma"], train_batch_size=z["batch_size"],
                      replay_buffer_capacity=z["buffer_size"],
                      num_steps_sampled_before_learning_starts=z["learning_starts"],
                      target_network_update_freq=z["target_update_interval"],
                      training_intensity=z["gradient_steps"] * z["batch_size"] / z["train_freq"],
                      epsilon_timesteps=int(z["exploration_fraction"] * max_steps),
                      epsilon_final=z["exploration_final_eps"], double_q=False, n_step=1, grad_clip=10.0)
            .rl_module(model_config={"hiddens": z["hiddens"], "activation": "relu", "dueling": False})
            .reporting(metrics_num_episodes_for_smoothing=WINDOW, verbose=0)
            .debugging(seed=seed).build())
    return _budget_loop(algo, t0, max_steps, max_s, shoal)


def budget_shoal_pendulum(seed: int, max_steps: int, max_s: float) -> dict:
    import shoal
    from shoal.rl import PPOConfig
    z = ZOO_PENDULUM
    _shoal_init()
    t0 = time.perf_counter()
    algo = (PPOConfig().environment("Pendulum-v1")
            .env_runners(num_env_runners=2, num_envs_per_env_runner=z["n_envs"] // 2,
                         rollout_fragment_length=z["n_steps"])
            .training(lr=z["lr"], gamma=z["gamma"], lambda_=z["gae_lambda"], num_epochs=z["n_epochs"],
                      entropy_coeff=z["ent_coef"], clip_param=z["clip_range"],
                      minibatch_size=z["batch_size"], train_batch_size=z["n_envs"] * z["n_steps"],
                      grad_clip=0.5, vf_loss_coeff=0.5)
            .rl_module(model_config={"hiddens": [64, 64], "activation": "tanh"})
            .reporting(metrics_num_episodes_for_smoothing=WINDOW, verbose=0)
            .debugging(seed=seed).build())
    return _budget_loop(algo, t0, max_steps, max_s, shoal)


def _budget_loop(algo, t0: float, max_steps: int, max_s: float, shoal) -> dict:
    curve = []
    while algo.env_steps_sampled < max_steps and time.perf_counter() - t0 < max_s:
        r = algo.train()
        curve.append((int(algo.env_steps_sampled), float(r["episode_return_mean"])))
    wall = time.perf_counter() - t0
    algo.config.evaluation_duration = EVAL_EPISODES
    ev = algo.evaluate()
    algo.stop()
    shoal.shutdown()
    return {"wall_s": wall, "env_steps": int(algo.env_steps_sampled), "eval_return": ev["episode_return_mean"],
            "train_return": curve[-1][1] if curve else float("nan"), "curve": _thin(curve)}


class _SB3Curve:
    def __init__(self):
        from stable_baselines3.common.callbacks import BaseCallback

        class Curve(BaseCallback):
            def __init__(self):
                super().__init__()
                self.returns = collections.deque(maxlen=WINDOW)
                self.curve = []

            def _on_step(self):
                for info in self.locals["infos"]:
                    if "episode" in info:
                        self.returns.append(info["episode"]["r"])
                        self.curve.append((int(self.num_timesteps), float(sum(self.returns) / len(self.returns))))
                return True
        self.callback = Curve()


def _sb3_finish(model, env_id: str, t0: float, cb, seed: int) -> dict:
    import gymnasium as gym
    from stable_baselines3.common.evaluation import evaluate_policy
    wall = time.perf_counter() - t0
    env = gym.make(env_id)
    env.reset(seed=seed + 10_000)
    mean, _ = evaluate_policy(model, env, n_eval_episodes=EVAL_EPISODES, deterministic=True)
    return {"wall_s": wall, "env_steps": int(model.num_timesteps), "eval_return": float(mean),
            "train_return": cb.curve[-1][1] if cb.curve else float("nan"), "curve": _thin(cb.curve)}


def budget_sb3_dqn(seed: int, max_steps: int, max_s: float) -> dict:
    from stable_baselines3 import DQN
    from stable_baselines3.common.env_util import make_vec_env
    z = ZOO_DQN
    t0 = time.perf_counter()
    env = make_vec_env("CartPole-v1", n_envs=1, seed=seed)
    model = DQN("MlpPolicy", env, learning_rate=z["lr"], batch_size=z["batch_size"],
                buffer_size=z["buffer_size"], learning_starts=z["learning_starts"], gamma=z["gamma"],
                target_update_interval=z["target_update_interval"], train_freq=z["train_freq"],
                gradient_steps=z["gradient_steps"], exploration_fraction=z["exploration_fraction"],
                exploration_final_eps=z["exploration_final_eps"], seed=seed, device="cpu",
                policy_kwargs={"net_arch": z["hiddens"]})
    cb = _SB3Curve().callback
    model.learn(total_timesteps=max_steps, callback=cb)
    return _sb3_finish(model, "CartPole-v1", t0, cb, seed)


def budget_sb3_pendulum(seed: int, max_steps: int, max_s: float) -> dict:
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    z = ZOO_PENDULUM
    t0 = time.perf_counter()
    env = make_vec_env("Pendulum-v1", n_envs=z["n_envs"], seed=seed)
    model = PPO("MlpPolicy", env, learning_rate=z["lr"], n_steps=z["n_steps"], batch_size=z["batch_size"],
                n_epochs=z["n_epochs"], gamma=z["gamma"], gae_lambda=z["gae_lambda"],
                clip_range=z["clip_range"], ent_coef=z["ent_coef"], use_sde=True, sde_sample_freq=4,
                seed=seed, device="cpu")
    cb = _SB3Curve().callback
    model.learn(total_timesteps=max_steps, callback=cb)
    return _sb3_finish(model, "Pendulum-v1", t0, cb, seed)


BUDGETS = {"shoal-dqn": budget_shoal_dqn, "sb3-dqn": budget_sb3_dqn,
           "shoal-pendulum": budget_shoal_pendulum, "sb3-pendulum": budget_sb3_pendulum}


def bench_budget(name: str, seeds: list, max_s: float) -> None:
    z = ZOO[name]
    systems = [f"shoal-{name}", f"sb3-{name}"]
    algo = "DQN" if name == "dqn" else "PPO"
    print(f"\n## {algo} on {z['env']}, {z['steps']:,} env steps with the RL Baselines3 Zoo's hyperparameters; "
          f"zoo's published return {z['mean']:.1f} +- {z['std']:.1f}")
    rows = {s: [] for s in systems}
    for seed in seeds:
        for s in systems:
            load = os.getloadavg()
            r = run_child(s, seed, z["steps"], max_s, kind="budget")
            r["load"] = load
            rows[s].append(r)
            print(f"  seed {seed} {s:15s} " + json.dumps({k: v for k, v in r.items() if k != "curve"}),
                  flush=True)
            _save(name, s, seed, r)
    report_budget(rows, seeds, name)


def report_budget(rows: dict, seeds: list, name: str) -> None:
    """The fixed-budget tables and plot of ``rows`` (system -> one result per seed)."""
    z = ZOO[name]
    systems = [f"shoal-{name}", f"sb3-{name}"]
    algo = "DQN" if name == "dqn" else "PPO"
    lo, hi = z["mean"] - z["std"], z["mean"] + z["std"]
    print(f"\n| system | seed | wall s | final greedy return ({EVAL_EPISODES} ep.) | within zoo range "
          f"[{lo:.0f}, {hi:.0f}] | load avg (1/5/15) |\n|---|---|---|---|---|---|")
    for s in systems:
        for seed, r in zip(seeds, rows[s]):
            if "error" in r:
                print(f"| {s} | {seed} | error | | | |")
                continue
            inside = r["eval_return"] >= lo - 1e-6
            print(f"| {s} | {seed} | {r['wall_s']:.1f} | {r['eval_return']:.1f} | {'yes' if inside else 'no'} | "
                  + "%.1f/%.1f/%.1f |" % tuple(r["load"]))
    ok = {s: [r for r in rows[s] if "error" not in r] for s in systems}
    if all(ok.values()):
        w = {s: _median([r["wall_s"] for r in ok[s]]) for s in systems}
        e = {s: _median([r["eval_return"] for r in ok[s]]) for s in systems}
        print(f"\n| system | median wall s | median final return | mean +- std final return | "
              f"wall vs shoal |\n|---|---|---|---|---|")
        for s in systems:
            ev = [r["eval_return"] for r in ok[s]]
            m = sum(ev) / len(ev)
            sd = (sum((x - m) ** 2 for x in ev) / len(ev)) ** 0.5
            print(f"| {s} | {w[s]:.1f} | {e[s]:.1f} | {m:.1f} +- {sd:.1f} | {w[s] / w[systems[0]]:.2f}x |")
    plot(rows, seeds, f"rl_{name}.png", f"{algo} on {z['env']} (mean of the last {WINDOW} training episodes)",
         target=None)


# ---------------------------------------------------------------- results across runs
RESULTS = None     # --results FILE: every result is appended there as a JSON line


def _save(section: str, system: str, seed: int, r: dict) -> None:
    if RESULTS:
        with open(RESULTS, "a") as f:
            f.write(json.dumps({"section": section, "system": system, "seed": seed, **r}) + "\n")


def report_file(path: str) -> None:
    """Tables and plots of every result saved in ``path`` by runs with ``--results``.

    Long sweeps are split into several short runs (one seed each, say),
    each appending to the same file; this renders them as one run would."""
    by: dict = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                by.setdefault(r["section"], {}).setdefault(r["system"], {})[r["seed"]] = r
    for section, systems in by.items():
        seeds = sorted({seed for per in systems.values() for seed in per})
        names = list(systems)
        full = [seed for seed in seeds if all(seed in systems[s] for s in names)]
        rows = {s: [systems[s][seed] for seed in full] for s in names}
        if section in ZOO:
            report_budget(rows, full, section)
        else:
            title = "PPO" if section == "ppo" else "IMPALA (shoal PPO for reference)"
            report_solve(rows, full, names, section, title)


# ---------------------------------------------------------------- plots
def plot(rows: dict, seeds: list, filename: str, title: str, target: float | None) -> None:
    """Episode return over env steps, one line per system and seed, into docs/images/."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib is not installed: no plot; pip install 'shoal[bench]')")
        return
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    colors = {}
    for s, results in rows.items():
        for seed, r in zip(seeds, results):
            if "error" in r or not r.get("curve"):
                continue
            xs, ys = zip(*r["curve"])
            color = colors.setdefault(s, f"C{len(colors)}")
            ax.plot(xs, ys, color=color, alpha=0.85, lw=1.4, label=s if seed == seeds[0] else None)
    if target is not None:
        ax.axhline(target, color="grey", ls="--", lw=1)
    ax.set_xlabel("env steps")
    ax.set_ylabel("episode return")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    out = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "images", filename)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    print(f"(plot: {os.path.relpath(out)})")


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else 0.5 * (xs[len(xs) // 2 - 1] + xs[len(xs) // 2])


# ---------------------------------------------------------------- sampling throughput
SAMPLE_FRAGMENT = 128


def throughput_shoal(calls: int) -> dict:
    import shoal
    from shoal.rl import PPOConfig
    _shoal_init()
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
    ap.add_argument("--what", default="throughput,solve,impala,dqn,pendulum")
    ap.add_argument("--systems", default="shoal,rllib,sb3")
    ap.add_argument("--impala-systems", default="shoal-impala,shoal,rllib-impala",
                    help="rllib-impala: RLlib's IMPALA (on a loaded 2-core host it may report no "
                         "env steps within --max-s)")
    ap.add_argument("--budget-seeds", type=int, default=None,
                    help="seeds of the dqn and pendulum sections (default: --seeds)")
    ap.add_argument("--max-steps", type=int, default=400_000)
    ap.add_argument("--max-s", type=float, default=900.0)
    ap.add_argument("--seed-list", default=None,
                    help="comma-separated seeds to run (instead of 0..--seeds-1): split a sweep into short runs")
    ap.add_argument("--results", default=None, help="append every result to this JSON-lines file")
    ap.add_argument("--report", default=None, help="print the tables and plots of a --results file and exit")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--kind", default="solve", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        fn = {"solve": SOLVERS, "budget": BUDGETS, "throughput": THROUGHPUT}[a.kind][a.child]
        args = (a.max_steps,) if a.kind == "throughput" else (a.seed, a.max_steps, a.max_s)
        print("RESULT " + json.dumps(fn(*args)), flush=True)
        return
    if a.report:
        report_file(a.report)
        return
    global RESULTS
    RESULTS = a.results
    print("load average before: %.2f %.2f %.2f" % os.getloadavg())
    what = a.what.split(",")
    if "throughput" in what:
        bench_throughput(2 if a.quick else 3, 5)
    seeds = list(range(1 if a.quick else a.seeds))
    if a.seed_list:
        seeds = [int(x) for x in a.seed_list.split(",")]
    if "solve" in what:
        bench_solve(seeds, a.systems.split(","), a.max_steps, a.max_s)
    if "impala" in what:
        bench_solve(seeds, a.impala_systems.split(","), a.max_steps, a.max_s,
                    name="impala", title="IMPALA (shoal PPO for reference)")
    budget_seeds = seeds if a.budget_seeds is None or a.seed_list else list(range(a.budget_seeds))
    for name in ("dqn", "pendulum"):
        if name in what:
            bench_budget(name, budget_seeds, a.max_s)
    print("load average after: %.2f %.2f %.2f" % os.getloadavg())


if __name__ == "__main__":
    main()
