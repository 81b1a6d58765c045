"""Algorithm: the training loop every algorithm shares.

``train()`` runs one iteration (the subclass's ``training_step``: sample,
learn, publish weights) and returns a flat metrics dict; it prints a
progress line (``verbose=1``) and appends a row to ``run_dir/result.csv``.
``save``/``from_checkpoint`` keep the config, the learner's state and the
counters; ``compute_single_action`` / ``compute_actions`` run the policy in
this process.
"""
from __future__ import annotations

import collections
import csv
import os
import pickle
import time

import numpy as np

from shoal.rl.config import AlgorithmConfig
from shoal.rl.env import check_observation, check_spaces, env_name, make_env, portable
from shoal.rl.env_runner import RunnerSpec
from shoal.rl.runner_group import EnvRunnerGroup

_CHECKPOINT_FILE = "algorithm_state.pkl"


class Algorithm:
    """Base class of shoal.rl's algorithms (PPO, DQN); build one from its config."""

    config_class = AlgorithmConfig

    def __init__(self, config: AlgorithmConfig):
        config.validate()
        self.config = config
        name = env_name(config.env)
        probe = make_env(config.env, config.env_config)
        self.observation_space, self.action_space = probe.observation_space, probe.action_space
        probe.close()
        check_spaces(self.observation_space, self.action_space, name)
        self.iteration = 0
        self.env_steps_sampled = 0
        self.env_steps_trained = 0
        self.episodes_total = 0
        self.time_total = 0.0
        self.weights_version = 0
        self._returns = collections.deque(maxlen=config.metrics_num_episodes_for_smoothing)
        self._lengths = collections.deque(maxlen=config.metrics_num_episodes_for_smoothing)
        self._csv_fields = None
        self.run_dir = None
        if config.run_dir is not None:
            stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
            self.run_dir = os.path.join(os.path.expanduser(config.run_dir),
                                        f"{type(self).__name__}_{name}_{stamp}_{os.getpid()}")
            os.makedirs(self.run_dir, exist_ok=True)
        self.env_runner_group = None
        self.eval_env_runner_group = None
        self.learner_group = None
        try:
            self.setup()
        except BaseException:
            self.stop()
            raise

    # ------------------------------------------------------------------ for subclasses
    def setup(self) -> None:
        """Build the module factory, runners and learners (subclasses)."""
        raise NotImplementedError

    def training_step(self) -> dict:
        """One iteration's work; returns its metrics (subclasses)."""
        raise NotImplementedError

    def module_factory(self):
        """A callable (observation_space, action_space) -> torch module (subclasses)."""
        raise NotImplementedError

    def _runner_spec(self, **kwargs) -> RunnerSpec:
        c = self.config
        return RunnerSpec(env=portable(c.env), env_config=c.env_config, num_envs=c.num_envs_per_env_runner,
                          module_factory=self.module_factory(), fragment_length=c.fragment_length(),
                          seed=c.seed, **kwargs)

    def _build_runners_and_learners(self, make_learner_group, **spec_kwargs) -> None:
        """Start the env runners and the learners, then publish the first weights.

        Runner actors are started first: their processes boot (each imports
        torch and Gymnasium) while this process builds the learner (torch's
        optimizers import torch._dynamo on first use, about a second), instead
        of one after the other before the first sample. Runners in this
        process (``num_env_runners=0``) are built after the learner, as
        before, so a seeded run samples the same actions.
        """
        remote = self.config.num_env_runners > 0
        if remote:
            self._make_runner_groups(**spec_kwargs)
        self.learner_group = make_learner_group()
        if not remote:
            self._make_runner_groups(**spec_kwargs)
        self._publish_weights()

    def _make_runner_groups(self, **spec_kwargs) -> None:
        c = self.config
        self.env_runner_group = EnvRunnerGroup(
            self._runner_spec(**spec_kwargs), c.num_env_runners, c.num_cpus_per_env_runner,
            c.restart_failed_env_runners, c.max_num_env_runner_restarts, c.sample_timeout_s)
        if c.evaluation_interval is not None:
            self.eval_env_runner_group = EnvRunnerGroup(
                self._runner_spec(**spec_kwargs), c.evaluation_num_env_runners,
                c.num_cpus_per_env_runner, c.restart_failed_env_runners,
                c.max_num_env_runner_restarts, c.sample_timeout_s, seed_offset=10_000_000)

    def _publish_weights(self) -> None:
        weights = self.learner_group.get_weights()
        self.weights_version += 1
        self.env_runner_group.set_weights(weights, self.weights_version)
        if self.eval_env_runner_group is not None:
            self.eval_env_runner_group.set_weights(weights, self.weights_version)
        self._local_weights_version = -1   # compute_actions reloads lazily

    def _record_episodes(self, batches: list) -> int:
        n = 0
        for b in batches:
            self._returns.extend(b["episode_returns"].tolist())
            self._lengths.extend(b["episode_lengths"].tolist())
            n += len(b["episode_returns"])
        self.episodes_total += n
        return n

    # ------------------------------------------------------------------ the loop
    def train(self) -> dict:
        """Run one training iteration; returns its metrics.

        Keys: ``training_iteration``, ``episode_return_mean``/``_min``/``_max``
        and ``episode_len_mean`` (over the last
        ``metrics_num_episodes_for_smoothing`` episodes; NaN before the first
        ends), ``episodes_this_iter``, ``episodes_total``,
        ``num_env_steps_sampled``/``_trained`` (this iteration) and their
        ``_lifetime`` totals, ``env_steps_per_s``, ``time_this_iter_s``,
        ``time_total_s``, ``num_env_runner_restarts``, the learner's losses,
        and ``evaluation/...`` on evaluation iterations.
        """
        t0 = time.perf_counter()
        result = self.training_step()
        self.iteration += 1
        c = self.config
        if c.evaluation_interval is not None and self.iteration % c.evaluation_interval == 0:
            result.update({f"evaluation/{k}": v for k, v in self.evaluate().items()})
        dt = time.perf_counter() - t0
        self.time_total += dt
        rets = np.asarray(self._returns) if self._returns else np.asarray([np.nan])
        lens = np.asarray(self._lengths) if self._lengths else np.asarray([np.nan])
        out = {
            "training_iteration": self.iteration,
            "episode_return_mean": float(rets.mean()),
            "episode_return_min": float(rets.min()),
            "episode_return_max": float(rets.max()),
            "episode_len_mean": float(lens.mean()),
            "episodes_total": self.episodes_total,
            "num_env_steps_sampled_lifetime": self.env_steps_sampled,
            "num_env_steps_trained_lifetime": self.env_steps_trained,
            "env_steps_per_s": result.get("num_env_steps_sampled", 0) / dt if dt > 0 else 0.0,
            "time_this_iter_s": dt,
            "time_total_s": self.time_total,
            "num_env_runner_restarts": self.env_runner_group.num_restarts,
            "num_learner_restarts": self.learner_group.num_restarts,
        }
        out.update(result)
        if c.verbose:
            print(f"[{type(self).__name__} {env_name(c.env)}] iter {self.iteration:4d}  "
                  f"return {out['episode_return_mean']:8.2f}  "
                  f"steps {self.env_steps_sampled:9d}  {out['env_steps_per_s']:9.0f} steps/s  "
                  f"{dt:6.2f}s", flush=True)
        if self.run_dir is not None:
            self._write_csv(out)
        return out

    def _write_csv(self, row: dict) -> None:
        path = os.path.join(self.run_dir, "result.csv")
        if self._csv_fields is None:
            self._csv_fields = list(row)
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self._csv_fields, extrasaction="ignore")
            if f.tell() == 0:
                w.writeheader()
            w.writerow(row)

    def evaluate(self) -> dict:
        """Run ``evaluation_duration`` episodes with the current weights (greedy unless
        ``evaluation_explore``); their return mean/min/max and length mean."""
        c = self.config
        if self.eval_env_runner_group is None:
            self.eval_env_runner_group = EnvRunnerGroup(
                self._runner_spec(), c.evaluation_num_env_runners, c.num_cpus_per_env_runner,
                c.restart_failed_env_runners, c.max_num_env_runner_restarts,
                c.sample_timeout_s, seed_offset=10_000_000)
            self.eval_env_runner_group.set_weights(self.learner_group.get_weights(),
                                                   self.weights_version)
        results = self.eval_env_runner_group.sample_episodes(c.evaluation_duration,
                                                             explore=c.evaluation_explore)
        rets = np.concatenate([r["episode_returns"] for r in results])
        lens = np.concatenate([r["episode_lengths"] for r in results])
        return {"episode_return_mean": float(rets.mean()), "episode_return_min": float(rets.min()),
                "episode_return_max": float(rets.max()), "episode_len_mean": float(lens.mean()),
                "num_episodes": int(len(rets))}

    # ------------------------------------------------------------------ inference
    def get_module(self):
        """The policy as a torch module in this process, with the latest weights."""
        if getattr(self, "_local_module", None) is None:
            self._local_module = self.module_factory()(self.observation_space, self.action_space)
            self._local_module.eval()
            self._local_weights_version = -1
        if self._local_weights_version != self.weights_version:
            from shoal.rl.models import load_numpy_state
            load_numpy_state(self._local_module, self.learner_group.get_weights())
            self._local_weights_version = self.weights_version
        return self._local_module

    def compute_actions(self, obs_batch, explore: bool = False) -> np.ndarray:
        """Actions for a batch of observations (greedy unless ``explore``).

        Raises:
            SpaceMismatchError: the batch does not fit the observation space.
        """
        obs = check_observation(self.observation_space, obs_batch, "compute_actions()", batched=True)
        return self.get_module().act(obs.astype(self.observation_space.dtype, copy=False),
                                     explore)["actions"]

    def compute_single_action(self, obs, explore: bool = False):
        """The action for one observation (greedy unless ``explore``).

        Raises:
            SpaceMismatchError: ``obs`` does not fit the observation space.
        """
        arr = check_observation(self.observation_space, obs, "compute_single_action()")
        a = self.compute_actions(arr[None], explore)[0]
        return int(a) if a.ndim == 0 and a.dtype.kind in "iu" else a

    # ------------------------------------------------------------------ checkpoints
    def save(self, path: str) -> str:
        """Write a checkpoint into directory ``path``; returns ``path``.

        The checkpoint is a pickle (the config's environment may be a
        class): load only checkpoints you trust, as with ``torch.load``.
        """
        import cloudpickle
        os.makedirs(path, exist_ok=True)
        state = {"algorithm": type(self), "config": self.config,
                 "learner": self.learner_group.get_state(),
                 "counters": {"iteration": self.iteration, "env_steps_sampled": self.env_steps_sampled,
                              "env_steps_trained": self.env_steps_trained,
                              "episodes_total": self.episodes_total, "time_total": self.time_total},
                 "extra": self._extra_state()}
        tmp = os.path.join(path, _CHECKPOINT_FILE + ".tmp")
        with open(tmp, "wb") as f:
            cloudpickle.dump(state, f)
        os.replace(tmp, os.path.join(path, _CHECKPOINT_FILE))   # a crash leaves the old one whole
        return path

    def _extra_state(self) -> dict:
        return {}

    def _load_extra_state(self, state: dict) -> None:
        pass

    def restore(self, path: str) -> None:
        """Load a checkpoint written by ``save`` into this algorithm."""
        state = _read_checkpoint(path)
        self.learner_group.set_state(state["learner"])
        for k, v in state["counters"].items():
            setattr(self, k, v)
        self._load_extra_state(state["extra"])
        self._publish_weights()

    @classmethod
    def from_checkpoint(cls, path: str, **config_overrides) -> "Algorithm":
        """Build the algorithm a checkpoint was saved from and load its state.

        ``config_overrides`` replace config fields (e.g. ``num_env_runners=0``
        for inference only).
        """
        state = _read_checkpoint(path)
        algo_cls = state["algorithm"]
        if not issubclass(algo_cls, cls):
            raise TypeError(f"{path} holds a {algo_cls.__name__} checkpoint, not a {cls.__name__}")
        config = state["config"]
        for k, v in config_overrides.items():
            if not hasattr(config, k):
                raise ValueError(f"from_checkpoint: {type(config).__name__} has no field {k!r}")
            setattr(config, k, v)
        algo = algo_cls(config)
        algo.restore(path)
        return algo

    # ------------------------------------------------------------------ lifecycle
    def stop(self) -> None:
        """Stop the runner and learner actors."""
        for g in (self.env_runner_group, self.eval_env_runner_group, self.learner_group):
            if g is not None:
                g.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def _read_checkpoint(path: str) -> dict:
    file = os.path.join(path, _CHECKPOINT_FILE)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{path} is not a shoal.rl checkpoint (no {_CHECKPOINT_FILE}); "
                                f"pass the directory given to algo.save()")
    with open(file, "rb") as f:
        return pickle.load(f)
