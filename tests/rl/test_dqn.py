"""DQN: n-step transitions, targets and target-network updates, replay buffers, a short run."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from shoal.rl import DQNConfig, ModelConfig, PrioritizedReplayBuffer, ReplayBuffer, n_step_transitions
from shoal.rl.dqn import _DQNUpdate, _QNetworkFactory, dqn_setup
from shoal.rl.learner import Learner, LearnerSpec

from envs import Corridor   # noqa: E402 - tests/rl is on sys.path


def test_n_step_transitions_stop_at_episode_and_fragment_ends():
    T = 4
    b = {"obs": np.arange(T, dtype=np.float32).reshape(T, 1, 1),
         "next_obs": np.arange(1, T + 1, dtype=np.float32).reshape(T, 1, 1),
         "actions": np.zeros((T, 1), np.int64),
         "rewards": np.array([[1.0], [2.0], [4.0], [8.0]], np.float32),
         "terminateds": np.array([[False], [True], [False], [False]]),
         "truncateds": np.zeros((T, 1), bool)}
    b["next_obs"][1, 0, 0] = 99.0                          # the true final observation
    tr = n_step_transitions(b, n=3, gamma=0.5)
    np.testing.assert_allclose(tr["rewards"], [1 + 0.5 * 2, 2, 4 + 0.5 * 8, 8])
    np.testing.assert_allclose(tr["discounts"], [0.0, 0.0, 0.25, 0.5])   # 0: terminated
    np.testing.assert_allclose(tr["next_obs"][:, 0], [99, 99, 4, 4])


def test_truncated_episodes_bootstrap_from_their_final_observation():
    b = {"obs": np.zeros((2, 1, 1), np.float32), "next_obs": np.array([[[7.0]], [[8.0]]], np.float32),
         "actions": np.zeros((2, 1), np.int64), "rewards": np.ones((2, 1), np.float32),
         "terminateds": np.zeros((2, 1), bool), "truncateds": np.array([[True], [False]])}
    tr = n_step_transitions(b, n=2, gamma=0.9)
    np.testing.assert_allclose(tr["rewards"], [1.0, 1.0])
    np.testing.assert_allclose(tr["discounts"], [0.9, 0.9])
    np.testing.assert_allclose(tr["next_obs"][:, 0], [7.0, 8.0])


def _learner(double_q=True, tau=1.0):
    c = DQNConfig(double_q=double_q, tau=tau, grad_clip=None)
    spec = LearnerSpec(_QNetworkFactory(ModelConfig(hiddens=[8], activation="relu")),
                       gym.spaces.Box(-1, 1, (2,)), gym.spaces.Discrete(3), 1e-2, _DQNUpdate(c),
                       setup=dqn_setup, seed=0)
    return Learner(spec)


def _batch(n=4):
    rng = np.random.default_rng(0)
    return {"obs": rng.normal(size=(n, 2)).astype(np.float32), "actions": rng.integers(0, 3, n),
            "rewards": rng.normal(size=n).astype(np.float32),
            "next_obs": rng.normal(size=(n, 2)).astype(np.float32),
            "discounts": np.array([0.99, 0.0, 0.99, 0.5], np.float32)[:n],
            "weights": np.ones(n, np.float32)}


@pytest.mark.parametrize("double_q", [True, False])
def test_td_errors_use_the_target_network_as_specified(double_q):
    learner = _learner(double_q)
    with torch.no_grad():        # make the target differ from the online network
        for p in learner.extra["target"].parameters():
            p.add_(0.3)
    b = _batch()
    t = {k: torch.from_numpy(v) for k, v in b.items()}
    with torch.no_grad():
        q = learner.module(t["obs"]).gather(1, t["actions"].long()[:, None])[:, 0]
        q_next_target = learner.extra["target"](t["next_obs"])
        if double_q:
            a = learner.module(t["next_obs"]).argmax(1)
            q_next = q_next_target.gather(1, a[:, None])[:, 0]
        else:
            q_next = q_next_target.max(1).values
        expected = q - (t["rewards"] + t["discounts"] * q_next)
    out = learner.update(b, num_steps=1)
    np.testing.assert_allclose(out["td_errors"], expected.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_target_network_updates_only_when_asked(tau):
    learner = _learner(tau=tau)
    target0 = [p.clone() for p in learner.extra["target"].parameters()]
    learner.update(_batch(), num_steps=1)              # no target update: unchanged
    for p, p0 in zip(learner.extra["target"].parameters(), target0):
        torch.testing.assert_close(p, p0)
    learner.update(_batch(), num_steps=1, update_target=True)
    for pt, p, p0 in zip(learner.extra["target"].parameters(), learner.module.parameters(), target0):
        torch.testing.assert_close(pt, p0 + tau * (p.detach() - p0))


def test_uniform_replay_wraps_around():
    buf = ReplayBuffer(5, seed=0)
    buf.add({"x": np.arange(3)})
    buf.add({"x": np.arange(3, 7)})
    assert len(buf) == 5
    assert sorted(buf.cols["x"].tolist()) == [2, 3, 4, 5, 6]
    s = buf.sample(100)
    assert set(s["x"].tolist()) <= {2, 3, 4, 5, 6} and (s["weights"] == 1).all()


def test_prioritized_replay_samples_by_priority_and_corrects_with_weights():
    buf = PrioritizedReplayBuffer(4, alpha=1.0, beta=1.0, seed=0)
    idx = buf.add({"x": np.arange(4)})
    buf.update_priorities(idx, [1.0, 1.0, 1.0, 7.0])
    s = buf.sample(20_000)
    share = np.mean(s["x"] == 3)
    assert share == pytest.approx(0.7, abs=0.02)
    # weights (N p)^-beta over their max: rare rows weigh 1, the frequent one 1/7
    w = {int(x): float(v) for x, v in zip(s["x"], s["weights"])}
    assert w[0] == pytest.approx(1.0) and w[3] == pytest.approx(1 / 7, rel=1e-4)
    buf.add({"x": np.array([9])})                      # new rows get the largest priority
    assert buf.priorities[0] == pytest.approx(7.0)


def test_dqn_trains_with_n_step_and_prioritized_replay(cluster):
    algo = (DQNConfig().environment(Corridor)
            .env_runners(num_env_runners=1, num_envs_per_env_runner=2, rollout_fragment_length=8)
            .training(n_step=3, prioritized_replay=True, num_steps_sampled_before_learning_starts=32,
                      train_batch_size=16, target_network_update_freq=32, epsilon_timesteps=100)
            .reporting(verbose=0).debugging(seed=0).build())
    try:
        results = [algo.train() for _ in range(6)]
        assert results[0]["num_env_steps_trained"] == 0          # before learning starts
        assert results[-1]["num_env_steps_trained"] > 0 and np.isfinite(results[-1]["loss"])
        assert results[-1]["epsilon"] < results[0]["epsilon"]
        assert algo.compute_single_action(np.array([0.0, 1.0], np.float32)) in (0, 1)
    finally:
        algo.stop()


def test_dqn_rejects_continuous_actions(cluster):
    from shoal.exceptions import InvalidInputError
    with pytest.raises(InvalidInputError, match="Discrete action space"):
        DQNConfig().environment("Pendulum-v1").env_runners(num_env_runners=0).reporting(verbose=0).build()


def test_dqn_with_two_learners_trains_data_parallel_and_keeps_priorities_in_row_order(cluster):
    import shoal
    algo = (DQNConfig().environment(Corridor)
            .env_runners(num_env_runners=1, num_envs_per_env_runner=2, rollout_fragment_length=8)
            .training(prioritized_replay=True, num_steps_sampled_before_learning_starts=16,
                      train_batch_size=16, target_network_update_freq=16, epsilon_timesteps=100)
            .learners(num_learners=2).reporting(verbose=0).debugging(seed=0).build())
    seen = []
    update = algo.replay.update_priorities
    algo.replay.update_priorities = lambda idx, td: (seen.append((len(idx), len(td))), update(idx, td))
    try:
        results = [algo.train() for _ in range(4)]
        assert results[-1]["num_env_steps_trained"] > 0 and np.isfinite(results[-1]["loss"])
        # every sampled row got its TD error back (both learners' shards, in order)
        assert seen and all(n == m for n, m in seen)
        w = shoal.get([a.get_weights.remote() for a in algo.learner_group.actors])
        for k in w[0]:
            np.testing.assert_array_equal(w[0][k], w[1][k])
        assert algo.learner_group.num_learners == 2
    finally:
        algo.stop()
    with pytest.raises(ValueError, match="divide evenly"):
        DQNConfig().environment(Corridor).training(train_batch_size=15).learners(num_learners=2).build()
