"""An algorithm as a shoal.tune trainable: trials override config fields, report train() metrics, checkpoint."""
from __future__ import annotations

import os

import pytest

from shoal import tune
from shoal.rl import Algorithm, PPOConfig

from envs import Corridor   # noqa: E402 - tests/rl is on sys.path


def _config(runners=0):
    # runners=0: in the trial's process; 1: a runner actor started by the trial's actor
    return (PPOConfig().environment(Corridor)
            .env_runners(num_env_runners=runners, num_envs_per_env_runner=2, rollout_fragment_length=16)
            .training(train_batch_size=32, minibatch_size=16, num_epochs=1)
            .reporting(verbose=0).debugging(seed=0))


def test_ppo_runs_as_tune_trials_with_overrides_and_checkpoints(cluster, tmp_path):
    trainable = _config(runners=1).to_trainable()
    grid = tune.Tuner(
        trainable, param_space={"lr": tune.grid_search([1e-3, 3e-3])},
        tune_config=tune.TuneConfig(metric="episode_return_mean", mode="max"),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="ppo", verbose=0,
                                  stop={"training_iteration": 2},
                                  checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=1)),
    ).fit()
    assert len(grid) == 2 and not grid.errors
    lrs = sorted(r.config["lr"] for r in grid)
    assert lrs == [1e-3, 3e-3]
    for r in grid:
        assert r.metrics["training_iteration"] == 2
        assert r.metrics["num_env_steps_sampled_lifetime"] == 64
        assert "policy_loss" in r.metrics
    best = grid.get_best_result()
    assert best.checkpoint is not None
    # the trial's checkpoint is an algorithm checkpoint, with the trial's lr
    algo = Algorithm.from_checkpoint(best.checkpoint.path, num_env_runners=0)
    try:
        assert algo.iteration == 2 and algo.config.lr == best.config["lr"]
    finally:
        algo.stop()


def test_unknown_trial_key_fails_the_trial_naming_it(cluster, tmp_path):
    grid = tune.Tuner(
        _config().to_trainable(), param_space={"learning_rate": 0.1},
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="bad", verbose=0,
                                  stop={"training_iteration": 1}),
    ).fit()
    assert len(grid.errors) == 1 and "learning_rate" in str(grid.errors[0])
