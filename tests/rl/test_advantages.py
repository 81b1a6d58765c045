"""GAE and V-trace against values computed by hand on short trajectories."""
from __future__ import annotations

import numpy as np
import pytest

from shoal.rl import compute_gae, vtrace


def test_gae_matches_hand_computed_values_with_an_episode_end():
    # one env, 3 steps, the episode ends after step 1; gamma=0.9, lambda=0.8
    rewards = np.array([1.0, 2.0, 3.0])
    values = np.array([0.5, 1.0, 2.0])
    dones = np.array([False, True, False])
    last_value = 4.0
    adv, targets = compute_gae(rewards, values, dones, last_value, gamma=0.9, lam=0.8)
    d2 = 3.0 + 0.9 * 4.0 - 2.0               # 4.6, bootstraps from last_value
    d1 = 2.0 - 1.0                           # 1.0, episode ended: no next value
    d0 = 1.0 + 0.9 * 1.0 - 0.5               # 1.4
    a2, a1 = d2, d1                          # nothing flows back across the end
    a0 = d0 + 0.9 * 0.8 * a1                 # 2.12
    np.testing.assert_allclose(adv, [a0, a1, a2], rtol=1e-6)
    np.testing.assert_allclose(targets, np.array([a0, a1, a2]) + values, rtol=1e-6)


def test_gae_is_vectorised_over_environments():
    rng = np.random.default_rng(0)
    T, N = 7, 3
    r, v = rng.normal(size=(T, N)), rng.normal(size=(T, N))
    d = rng.random((T, N)) < 0.3
    last = rng.normal(size=N)
    adv, _ = compute_gae(r, v, d, last, 0.99, 0.95)
    for n in range(N):
        a1, _ = compute_gae(r[:, n], v[:, n], d[:, n], last[n], 0.99, 0.95)
        np.testing.assert_allclose(adv[:, n], a1, rtol=1e-5, atol=1e-6)


def test_gae_with_lambda_one_is_the_discounted_return_minus_the_value():
    rewards = np.array([1.0, 1.0, 1.0, 1.0])
    values = np.array([0.3, 0.2, 0.1, 0.0])
    adv, targets = compute_gae(rewards, values, np.zeros(4, bool), 2.0, gamma=0.5, lam=1.0)
    returns = [1 + 0.5 + 0.25 + 0.125 + 0.0625 * 2, 1 + 0.5 + 0.25 + 0.125 * 2,
               1 + 0.5 + 0.25 * 2, 1 + 0.5 * 2]
    np.testing.assert_allclose(targets, returns, rtol=1e-6)


def test_vtrace_matches_hand_computed_values():
    # T=2, one env; rhos = exp(target - behaviour) = [2.0, 0.5]
    behaviour = np.log(np.array([[0.25], [0.5]]))
    target = np.log(np.array([[0.5], [0.25]]))
    rewards = np.array([[1.0], [2.0]])
    values = np.array([[0.5], [1.0]])
    bootstrap = np.array([3.0])
    discounts = np.array([[0.9], [0.9]])
    vs, pg = vtrace(behaviour, target, rewards, values, bootstrap, discounts)
    # clipped rho = min(1, rho) = [1, 0.5]; c = [1, 0.5]
    delta1 = 0.5 * (2.0 + 0.9 * 3.0 - 1.0)           # 1.85
    delta0 = 1.0 * (1.0 + 0.9 * 1.0 - 0.5)           # 1.4
    vs1 = 1.0 + delta1                               # 2.85
    vs0 = 0.5 + delta0 + 0.9 * 1.0 * delta1          # 3.565
    np.testing.assert_allclose(vs[:, 0], [vs0, vs1], rtol=1e-6)
    pg0 = 1.0 * (1.0 + 0.9 * vs1 - 0.5)              # rho clipped to 1
    pg1 = 0.5 * (2.0 + 0.9 * 3.0 - 1.0)
    np.testing.assert_allclose(pg[:, 0], [pg0, pg1], rtol=1e-6)


def test_vtrace_on_policy_equals_n_step_bootstrapped_returns():
    # with target == behaviour every weight is 1: vs are the discounted returns
    rng = np.random.default_rng(1)
    T = 5
    logp = rng.normal(size=(T, 2))
    rewards, values = rng.normal(size=(T, 2)), rng.normal(size=(T, 2))
    boot = rng.normal(size=2)
    disc = np.full((T, 2), 0.9)
    vs, _ = vtrace(logp, logp, rewards, values, boot, disc)
    ret = boot.copy()
    expected = np.empty((T, 2))
    for t in range(T - 1, -1, -1):
        ret = rewards[t] + 0.9 * ret
        expected[t] = ret
    np.testing.assert_allclose(vs, expected, rtol=1e-5)
    _, targets = compute_gae(rewards, values, np.zeros((T, 2), bool), boot, 0.9, 1.0)
    np.testing.assert_allclose(vs, targets, rtol=1e-5)


@pytest.mark.parametrize("threshold", [0.5, 1.0])
def test_vtrace_clips_importance_weights(threshold):
    behaviour = np.log(np.full((1, 1), 0.1))
    target = np.log(np.full((1, 1), 0.9))               # rho = 9
    vs, pg = vtrace(behaviour, target, [[1.0]], [[0.0]], [0.0], [[0.0]],
                    clip_rho_threshold=threshold, clip_pg_rho_threshold=threshold)
    assert vs[0, 0] == pytest.approx(threshold) and pg[0, 0] == pytest.approx(threshold)
