"""Advantage estimators on time-major arrays ``(T, N)``: GAE and V-trace.

Both run one vectorised pass backwards over time (N environments at once),
so their cost is T small NumPy operations whatever N is.
"""
from __future__ import annotations

import numpy as np


def compute_gae(rewards, values, dones, last_values, gamma: float = 0.99, lam: float = 0.95):
    """Generalized advantage estimation (Schulman et al. 2016).

    Args:
        rewards: (T, N) rewards (time-limit bootstraps already added).
        values: (T, N) value estimates of the observations the actions were taken in.
        dones: (T, N) True where the step ended an episode (terminated or
            truncated): no value flows across it.
        last_values: (N,) values of the observations after the last step.
        gamma, lam: discount and GAE's lambda.

    Returns:
        ``(advantages, value_targets)``, both (T, N) float32; ``value_targets
        = advantages + values``.
    """
    rewards = np.asarray(rewards, np.float32)
    values = np.asarray(values, np.float32)
    if rewards.ndim == 1:
        rewards, values, dones = rewards[:, None], values[:, None], np.asarray(dones)[:, None]
        last_values = np.atleast_1d(last_values)
        adv, targets = compute_gae(rewards, values, dones, last_values, gamma, lam)
        return adv[:, 0], targets[:, 0]
    not_done = 1.0 - np.asarray(dones, np.float32)
    T = rewards.shape[0]
    adv = np.empty_like(rewards)
    next_value = np.asarray(last_values, np.float32)
    last = np.zeros_like(next_value)
    for t in range(T - 1, -1, -1):
        delta = rewards[t] + gamma * next_value * not_done[t] - values[t]
        last = delta + gamma * lam * not_done[t] * last
        adv[t] = last
        next_value = values[t]
    return adv, adv + values


def vtrace(behaviour_logp, target_logp, rewards, values, bootstrap_value, discounts,
           clip_rho_threshold: float = 1.0, clip_pg_rho_threshold: float = 1.0):
    """V-trace targets and policy-gradient advantages (Espeholt et al. 2018, IMPALA).

    Args:
        behaviour_logp: (T, N) log mu(a_t|x_t) of the policy that acted.
        target_logp: (T, N) log pi(a_t|x_t) of the policy being learned.
        rewards: (T, N).
        values: (T, N) V(x_t) under the learner's value function.
        bootstrap_value: (N,) V(x_T).
        discounts: (T, N) gamma, and 0 where the step ended an episode.
        clip_rho_threshold: rho-bar (clips the importance weights in the targets).
        clip_pg_rho_threshold: clips the weights of the policy-gradient advantages.

    Returns:
        ``(vs, pg_advantages)``, both (T, N) float32.
    """
    rhos = np.exp(np.asarray(target_logp, np.float64) - np.asarray(behaviour_logp, np.float64))
    clipped_rhos = np.minimum(clip_rho_threshold, rhos)
    cs = np.minimum(1.0, rhos)
    rewards = np.asarray(rewards, np.float64)
    values = np.asarray(values, np.float64)
    discounts = np.asarray(discounts, np.float64)
    bootstrap_value = np.asarray(bootstrap_value, np.float64)
    values_tp1 = np.concatenate([values[1:], bootstrap_value[None]], axis=0)
    deltas = clipped_rhos * (rewards + discounts * values_tp1 - values)
    vs_minus_v = np.empty_like(values)
    acc = np.zeros_like(bootstrap_value)
    for t in range(values.shape[0] - 1, -1, -1):
        acc = deltas[t] + discounts[t] * cs[t] * acc
        vs_minus_v[t] = acc
    vs = vs_minus_v + values
    vs_tp1 = np.concatenate([vs[1:], bootstrap_value[None]], axis=0)
    pg_adv = np.minimum(clip_pg_rho_threshold, rhos) * (rewards + discounts * vs_tp1 - values)
    return vs.astype(np.float32), pg_adv.astype(np.float32)
