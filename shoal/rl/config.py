"""Algorithm configuration: a dataclass with RLlib's chained builder methods.

    config = (PPOConfig()
              .environment("CartPole-v1")
              .env_runners(num_env_runners=2, num_envs_per_env_runner=8)
              .training(lr=3e-4, gamma=0.99)
              .learners(num_learners=1))
    algo = config.build()

Each builder method sets fields of its section and returns the config;
a name that is not a field of that section raises ValueError listing those
that are. ``validate()`` (called by ``build``) checks values.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field

from shoal.rl.models import ModelConfig

_SECTIONS = {
    "environment": ("env", "env_config"),
    "env_runners": ("num_env_runners", "num_envs_per_env_runner", "rollout_fragment_length",
                    "num_cpus_per_env_runner", "sample_timeout_s"),
    "learners": ("num_learners", "num_cpus_per_learner", "num_threads_per_learner"),
    "evaluation": ("evaluation_interval", "evaluation_duration", "evaluation_num_env_runners",
                   "evaluation_explore"),
    "fault_tolerance": ("restart_failed_env_runners", "max_num_env_runner_restarts",
                        "max_num_learner_restarts"),
    "debugging": ("seed",),
    "reporting": ("metrics_num_episodes_for_smoothing", "verbose", "run_dir"),
    "rl_module": ("model_config",),
}


@dataclass
class AlgorithmConfig:
    """Settings every algorithm shares; subclasses add their ``training`` fields.

    Environment: ``env`` (a Gymnasium id, an Env subclass or a factory),
    ``env_config`` (passed to the factory/class, or as ``gym.make`` kwargs).
    Env runners: ``num_env_runners`` actors (0: sample in the driver), each
    stepping ``num_envs_per_env_runner`` environments for
    ``rollout_fragment_length`` steps per call ("auto": the train batch
    split evenly), bounded by ``sample_timeout_s``.
    Learners: ``num_learners`` (0: learn in the driver; N >= 1: N learner
    actors, data-parallel through shoal.train's DDP when N > 1), each
    running torch on ``num_threads_per_learner`` threads (1 suits MLP
    policies: more threads contend for the cores the runners use).
    Evaluation: every ``evaluation_interval`` iterations (None: never),
    ``evaluation_duration`` episodes on ``evaluation_num_env_runners``
    separate runners (0: in the driver), greedy unless ``evaluation_explore``.
    Faults: failed runners are replaced while ``restart_failed_env_runners``
    and fewer than ``max_num_env_runner_restarts`` replacements happened;
    a learner group (num_learners >= 1) whose actor dies restarts from the
    state after the last update, up to ``max_num_learner_restarts`` times.
    Reporting: returns are averaged over the last
    ``metrics_num_episodes_for_smoothing`` episodes; ``verbose`` 1 prints a
    line per iteration; results go to ``run_dir``/result.csv (None: no files).
    """

    env: object = None
    env_config: dict = field(default_factory=dict)
    num_env_runners: int = 2
    num_envs_per_env_runner: int = 1
    rollout_fragment_length: int | str = "auto"
    num_cpus_per_env_runner: float = 1
    sample_timeout_s: float = 60.0
    num_learners: int = 0
    num_cpus_per_learner: float = 0
    num_threads_per_learner: int = 1
    lr: float = 5e-5
    gamma: float = 0.99
    train_batch_size: int = 4000
    grad_clip: float | None = None
    evaluation_interval: int | None = None
    evaluation_duration: int = 10
    evaluation_num_env_runners: int = 0
    evaluation_explore: bool = False
    restart_failed_env_runners: bool = True
    max_num_env_runner_restarts: int = 1000
    max_num_learner_restarts: int = 3
    seed: int | None = None
    metrics_num_episodes_for_smoothing: int = 100
    verbose: int = 1
    run_dir: str | None = None
    model_config: ModelConfig = field(default_factory=ModelConfig)

    algo_class = None   # set by each algorithm's config class

    # ------------------------------------------------------------------ builders
    def _set(self, section: str, kwargs: dict) -> "AlgorithmConfig":
        allowed = self._section_fields(section)
        bad = sorted(set(kwargs) - set(allowed))
        if bad:
            raise ValueError(f"{type(self).__name__}.{section}() got unknown argument(s) {bad}; "
                             f"its arguments are {sorted(allowed)}")
        for k, v in kwargs.items():
            if k == "model_config" and isinstance(v, dict):
                v = ModelConfig(**v)
            setattr(self, k, v)
        return self

    def _section_fields(self, section: str) -> tuple:
        if section == "training":
            others = {f for fs in _SECTIONS.values() for f in fs}
            return tuple(f.name for f in dataclasses.fields(self) if f.name not in others)
        return _SECTIONS[section]

    def environment(self, env=None, *, env_config: dict | None = None) -> "AlgorithmConfig":
        """The environment: a Gymnasium id, a gymnasium.Env subclass, or a function returning an Env."""
        kw = {}
        if env is not None:
            kw["env"] = env
        if env_config is not None:
            kw["env_config"] = env_config
        return self._set("environment", kw)

    def env_runners(self, **kwargs) -> "AlgorithmConfig":
        """num_env_runners, num_envs_per_env_runner, rollout_fragment_length, num_cpus_per_env_runner, sample_timeout_s."""
        return self._set("env_runners", kwargs)

    def training(self, **kwargs) -> "AlgorithmConfig":
        """The algorithm's hyperparameters (lr, gamma, train_batch_size, grad_clip, and its own)."""
        return self._set("training", kwargs)

    def learners(self, **kwargs) -> "AlgorithmConfig":
        """num_learners (0: in the driver), num_cpus_per_learner, num_threads_per_learner."""
        return self._set("learners", kwargs)

    def evaluation(self, **kwargs) -> "AlgorithmConfig":
        """evaluation_interval, evaluation_duration (episodes), evaluation_num_env_runners, evaluation_explore."""
        return self._set("evaluation", kwargs)

    def fault_tolerance(self, **kwargs) -> "AlgorithmConfig":
        """restart_failed_env_runners, max_num_env_runner_restarts, max_num_learner_restarts."""
        return self._set("fault_tolerance", kwargs)

    def debugging(self, **kwargs) -> "AlgorithmConfig":
        """seed: seeds of the environments, the policies' sampling and the learner."""
        return self._set("debugging", kwargs)

    def reporting(self, **kwargs) -> "AlgorithmConfig":
        """metrics_num_episodes_for_smoothing, verbose, run_dir."""
        return self._set("reporting", kwargs)

    def rl_module(self, **kwargs) -> "AlgorithmConfig":
        """model_config: a ModelConfig or a dict of its fields (hiddens, activation, ...)."""
        return self._set("rl_module", kwargs)

    def copy(self) -> "AlgorithmConfig":
        """A deep copy (environment objects are shared)."""
        env, self.env = self.env, None
        try:
            c = copy.deepcopy(self)
        finally:
            self.env = env
        c.env = env
        return c

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise ValueError naming the first setting out of range."""
        if self.env is None:
            raise ValueError("no environment: call config.environment('CartPole-v1') "
                             "(an id, a gymnasium.Env subclass or a function returning an Env)")
        _check_int(self, "num_env_runners", 0)
        _check_int(self, "num_envs_per_env_runner", 1)
        _check_int(self, "num_learners", 0)
        _check_int(self, "num_threads_per_learner", 1)
        _check_int(self, "train_batch_size", 1)
        _check_int(self, "evaluation_duration", 1)
        _check_int(self, "evaluation_num_env_runners", 0)
        _check_int(self, "max_num_env_runner_restarts", 0)
        _check_int(self, "max_num_learner_restarts", 0)
        _check_int(self, "metrics_num_episodes_for_smoothing", 1)
        if self.rollout_fragment_length != "auto":
            _check_int(self, "rollout_fragment_length", 1)
        if self.evaluation_interval is not None:
            _check_int(self, "evaluation_interval", 1)
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not 0 <= self.gamma <= 1:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma!r}")
        if not self.sample_timeout_s > 0:
            raise ValueError(f"sample_timeout_s must be > 0, got {self.sample_timeout_s!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {self.grad_clip!r}")

    def fragment_length(self) -> int:
        """Steps per environment per sample call (resolving "auto")."""
        if self.rollout_fragment_length != "auto":
            return int(self.rollout_fragment_length)
        envs = max(1, self.num_env_runners) * self.num_envs_per_env_runner
        return max(1, -(-self.train_batch_size // envs))

    def to_trainable(self, resources: dict | None = None):
        """This algorithm as a shoal.tune trainable (an ``AlgorithmTrainable``).

        A trial's config overrides this config's fields; the trial itself
        takes ``resources`` (default ``{"CPU": 0}``: the runner and learner
        actors it starts ask for their own CPUs).
        """
        self.validate()
        from shoal import tune
        from shoal.rl.trainable import AlgorithmTrainable
        spec = tune.with_parameters(AlgorithmTrainable, base_config=self.copy())
        return tune.with_resources(spec, resources or {"CPU": 0})

    def build(self):
        """Validate and build the algorithm."""
        if self.algo_class is None:
            raise TypeError(f"{type(self).__name__} is not tied to an algorithm; "
                            f"use PPOConfig or DQNConfig")
        return self.algo_class(self.copy())


def _check_int(config, name: str, low: int) -> None:
    v = getattr(config, name)
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
