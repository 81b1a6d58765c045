"""PPO end to end: checkpoints, several learners, evaluation, results on disk, learning CartPole."""
from __future__ import annotations

import csv
import os

import numpy as np
import pytest

from shoal.rl import PPO, Algorithm, PPOConfig


def _config(env="CartPole-v1", runners=1, **training):
    return (PPOConfig().environment(env)
            .env_runners(num_env_runners=runners, num_envs_per_env_runner=4, rollout_fragment_length=32)
            .training(train_batch_size=128, minibatch_size=64, num_epochs=2, **training)
            .reporting(verbose=0).debugging(seed=3))


def test_save_and_restore_give_identical_actions(cluster, tmp_path):
    algo = _config().build()
    try:
        algo.train()
        algo.train()
        path = algo.save(str(tmp_path / "ckpt"))
        obs = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
        before = algo.compute_actions(obs)
        w_before = algo.learner_group.get_weights()
    finally:
        algo.stop()
    restored = Algorithm.from_checkpoint(path, num_env_runners=0)
    try:
        assert isinstance(restored, PPO) and restored.iteration == 2
        np.testing.assert_array_equal(restored.compute_actions(obs), before)
        assert [restored.compute_single_action(o) for o in obs[:8]] == before[:8].tolist()
        for k, v in restored.learner_group.get_weights().items():
            np.testing.assert_array_equal(v, w_before[k])
        result = restored.train()                  # training goes on from the checkpoint
        assert result["training_iteration"] == 3
    finally:
        restored.stop()
    with pytest.raises(FileNotFoundError, match="not a shoal.rl checkpoint"):
        Algorithm.from_checkpoint(str(tmp_path))


def test_same_seed_gives_the_same_training(cluster):
    runs = []
    for _ in range(2):
        algo = _config(runners=0).build()
        try:
            runs.append([algo.train()["policy_loss"] for _ in range(2)])
            runs[-1].append(algo.compute_actions(np.ones((3, 4), np.float32), explore=False).tolist())
        finally:
            algo.stop()
    # the same actions; losses equal up to float summation order (torch's threads)
    assert runs[0][-1] == runs[1][-1]
    np.testing.assert_allclose(runs[0][:-1], runs[1][:-1], rtol=1e-4)


@pytest.mark.slow
def test_two_learners_train_data_parallel_stay_in_sync_and_survive_a_death(cluster):
    import shoal
    algo = _config(runners=1).learners(num_learners=2).build()
    try:
        for _ in range(2):
            result = algo.train()
        assert np.isfinite(result["policy_loss"]) and result["num_env_steps_trained"] == 128
        w = shoal.get([a.get_weights.remote() for a in algo.learner_group.actors])
        for k in w[0]:
            np.testing.assert_array_equal(w[0][k], w[1][k])
        # a learner process dies: the group restarts from the last update's state
        os.kill(shoal.get(algo.learner_group.actors[1].pid.remote()), 9)
        before = algo.learner_group.get_weights()
        result = algo.train()
        assert result["num_learner_restarts"] == 1 and np.isfinite(result["policy_loss"])
        after = algo.learner_group.get_weights()
        assert any(not np.array_equal(before[k], after[k]) for k in before)   # it trained on
        w = shoal.get([a.get_weights.remote() for a in algo.learner_group.actors])
        for k in w[0]:
            np.testing.assert_array_equal(w[0][k], w[1][k])
    finally:
        algo.stop()


def test_continuous_actions_and_evaluation(cluster, tmp_path):
    algo = (_config("Pendulum-v1", runners=0).evaluation(evaluation_interval=2, evaluation_duration=2)
            .reporting(run_dir=str(tmp_path), verbose=0).build())
    try:
        first = algo.train()
        assert "evaluation/episode_return_mean" not in first
        second = algo.train()
        assert second["evaluation/num_episodes"] == 2
        assert second["evaluation/episode_len_mean"] == 200
        a = algo.compute_single_action(np.zeros(3, np.float32))
        assert a.shape == (1,) and a.dtype == np.float32
        rows = list(csv.DictReader(open(os.path.join(algo.run_dir, "result.csv"))))
        assert [int(r["training_iteration"]) for r in rows] == [1, 2]
    finally:
        algo.stop()


@pytest.mark.slow
def test_ppo_learns_cartpole_within_a_step_budget(cluster):
    algo = (PPOConfig().environment("CartPole-v1")
            .env_runners(num_env_runners=2, num_envs_per_env_runner=8)
            .training(lr=1e-3, train_batch_size=1024, minibatch_size=256, num_epochs=10)
            .reporting(verbose=0, metrics_num_episodes_for_smoothing=20).debugging(seed=0).build())
    try:
        best = 0.0
        while algo.env_steps_sampled < 60_000 and best < 200:
            best = max(best, algo.train()["episode_return_mean"])
        assert best >= 200, f"mean return {best} after {algo.env_steps_sampled} env steps"
        evaluation = algo.evaluate()
        assert evaluation["episode_return_mean"] >= 150
    finally:
        algo.stop()


def test_discrete_observations_are_one_hot_encoded(cluster):
    algo = _config("FrozenLake-v1", runners=0).build()
    try:
        result = algo.train()
        assert result["num_env_steps_sampled"] == 128
        assert algo.compute_single_action(np.int64(3)) in range(4)
    finally:
        algo.stop()
