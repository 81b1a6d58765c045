"""Env runners: custom environments, space checks, and failures replaced while training goes on."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import shoal
from shoal.exceptions import EnvRunnerError, InvalidInputError, SpaceMismatchError
from shoal.rl import EnvRunner, PPOConfig, RunnerSpec
from shoal.rl.ppo import _ActorCriticFactory

from envs import BadShape, Corridor, Faulty   # noqa: E402 - tests/rl is on sys.path


def _ppo(env, env_config=None, runners=2, **training):
    return (PPOConfig().environment(env, env_config=env_config or {})
            .env_runners(num_env_runners=runners, num_envs_per_env_runner=2, rollout_fragment_length=16)
            .training(train_batch_size=64, minibatch_size=32, num_epochs=1, **training)
            .reporting(verbose=0).debugging(seed=0))


def test_runner_returns_time_major_arrays_and_finished_episodes():
    spec = RunnerSpec(env=Corridor, num_envs=3, module_factory=_ActorCriticFactory(None),
                      fragment_length=40, seed=1)
    r = EnvRunner(spec, 0, seed=1)
    b = r.sample()
    assert b["obs"].shape == (40, 3, 2) and b["obs"].dtype == np.float32
    assert b["actions"].shape == (40, 3) and b["logp"].shape == (40, 3)
    assert b["last_values"].shape == (3,) and b["env_steps"] == 120
    # every episode lasts at most 20 steps: 40 steps of 3 envs end at least 6
    assert len(b["episode_returns"]) >= 6 and (b["episode_lengths"] <= 20).all()
    # truncated (time-limit) steps carry the value of their final observation
    assert (b["trunc_values"][~b["truncateds"]] == 0).all()
    assert (b["trunc_values"][b["truncateds"]] != 0).all()
    r.close()


def test_custom_env_class_and_registered_id_train(cluster, tmp_path):
    # a class and a factory get env_config; a registered id gets it as keyword arguments
    # (runner actors only where the process boundary is the point: the id registered here)
    for env, cfg, runners in ((Corridor, {"length": 3}, 0), ("ShoalTestCorridor-v0", {}, 1),
                              (lambda cfg: Corridor(cfg), {"length": 3}, 0)):
        algo = _ppo(env, cfg, runners=runners).build()
        try:
            result = algo.train()
            assert result["num_env_steps_sampled"] == 16 * 2 * max(1, runners)
            assert result["episodes_this_iter"] > 0
        finally:
            algo.stop()


def test_unknown_env_id_is_rejected_at_build(cluster):
    with pytest.raises(InvalidInputError, match="NoSuchEnv-v9"):
        _ppo("NoSuchEnv-v9").build()
    with pytest.raises(InvalidInputError, match="env_config"):
        _ppo("ShoalTestCorridor-v0", {"no_such_argument": 1}).build()


def test_unsupported_space_names_the_space():
    class DictObs(Corridor):
        def __init__(self, config=None):
            super().__init__(config)
            self.observation_space = gym.spaces.Dict({"a": gym.spaces.Discrete(2)})
    with pytest.raises(InvalidInputError, match="Dict"):
        _ppo(DictObs, runners=0).build()


def test_bad_observation_from_env_names_the_space_and_value(cluster):
    algo = _ppo(BadShape).build()
    try:
        with pytest.raises(SpaceMismatchError, match=r"observation space Box.*\(2,\)") as info:
            algo.train()
        assert "shape (3,)" in str(info.value) and "BadShape" in str(info.value)
        assert algo.env_runner_group.num_restarts == 0    # a bug in the env is not retried
    finally:
        algo.stop()


def test_bad_observation_given_to_compute_single_action(cluster):
    algo = _ppo(Corridor, runners=0).build()
    try:
        assert algo.compute_single_action(np.array([0.0, 1.0], np.float32)) in (0, 1)
        with pytest.raises(SpaceMismatchError, match=r"shape \(3,\)") as info:
            algo.compute_single_action(np.zeros(3, np.float32))
        assert "Box" in str(info.value) and info.value.space == algo.observation_space
        with pytest.raises(SpaceMismatchError, match="dtype"):
            algo.compute_single_action(np.array(["a", "b"]))
        assert algo.compute_actions(np.zeros((5, 2), np.float32)).shape == (5,)
    finally:
        algo.stop()


@pytest.mark.parametrize("mode", ["kill", "raise"])
def test_failed_runner_is_replaced_and_training_continues(cluster, tmp_path, mode):
    algo = _ppo(Faulty, {"flag": str(tmp_path / "failed"), "mode": mode}).build()
    try:
        results = [algo.train() for _ in range(3)]
        assert (tmp_path / "failed").exists()
        assert results[-1]["num_env_runner_restarts"] == 1
        # the failed runner's batch was dropped in its iteration; the others are whole
        sampled = [r["num_env_steps_sampled"] for r in results]
        assert sorted(sampled) == [32, 64, 64]
        assert all(np.isfinite(r["policy_loss"]) for r in results)
        pids = shoal.get([r.pid.remote() for r in algo.env_runner_group.runners])
        assert len(set(pids)) == 2
    finally:
        algo.stop()


def test_runner_failure_past_the_restart_limit_raises(cluster, tmp_path):
    config = _ppo(Faulty, {"flag": str(tmp_path / "f"), "mode": "raise", "fail_at": 3}, runners=1)
    algo = config.fault_tolerance(max_num_env_runner_restarts=0).build()
    try:
        with pytest.raises(EnvRunnerError, match="max_num_env_runner_restarts=0") as info:
            algo.train()
        assert "simulator crashed" in str(info.value.__cause__)
    finally:
        algo.stop()


def test_runners_that_fail_again_when_fresh_raise(cluster, tmp_path):
    config = _ppo(Faulty, {"flag": str(tmp_path / "f"), "mode": "always", "fail_at": 3}, runners=1)
    algo = config.build()
    try:
        with pytest.raises(EnvRunnerError, match="fresh replacements") as info:
            algo.train()
        assert "simulator crashed" in str(info.value)
        assert algo.env_runner_group.num_restarts == 2      # not the 1000 allowed: it gave up
    finally:
        algo.stop()
