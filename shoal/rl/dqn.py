"""DQN: double Q-learning, dueling heads, n-step returns, a target network, optional prioritized replay.

    algo = (DQNConfig().environment("CartPole-v1")
            .env_runners(num_env_runners=1, num_envs_per_env_runner=4)
            .training(lr=5e-4, n_step=3, double_q=True)
            .build())

One iteration: runners step with epsilon-greedy actions (epsilon decays
linearly over ``epsilon_timesteps``), the driver turns the fragments into
n-step transitions and adds them to the replay buffer, and once
``num_steps_sampled_before_learning_starts`` steps are in, the learner runs
``training_intensity * sampled / train_batch_size`` gradient steps on
minibatches drawn from the buffer (one call: the minibatches go together).
The target network is copied every ``target_network_update_freq`` sampled
steps (or moved by ``tau`` when tau < 1).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from shoal.rl.algorithm import Algorithm
from shoal.rl.config import AlgorithmConfig
from shoal.rl.learner import LearnerGroup, LearnerSpec
from shoal.rl.models import ModelConfig
from shoal.rl.replay import PrioritizedReplayBuffer, ReplayBuffer


@dataclass
class DQNConfig(AlgorithmConfig):
    """DQN's settings (``training(...)`` fields, beside lr, gamma, train_batch_size, grad_clip).

    Args:
        double_q: pick the next action with the online network, value it
            with the target network (van Hasselt et al. 2016).
        n_step: steps summed before bootstrapping.
        target_network_update_freq: sampled env steps between target updates.
        tau: 1.0 copies the online network; < 1 moves the target by tau.
        replay_buffer_capacity: transitions kept.
        prioritized_replay, prioritized_replay_alpha, prioritized_replay_beta:
            proportional prioritized replay and its exponents.
        num_steps_sampled_before_learning_starts: env steps before the first update.
        training_intensity: rows trained per env step sampled.
        epsilon_initial, epsilon_final, epsilon_timesteps: the linear
            exploration schedule.
    """

    lr: float = 5e-4
    train_batch_size: int = 64
    grad_clip: float | None = 10.0
    double_q: bool = True
    n_step: int = 1
    target_network_update_freq: int = 500
    tau: float = 1.0
    replay_buffer_capacity: int = 50_000
    prioritized_replay: bool = False
    prioritized_replay_alpha: float = 0.6
    prioritized_replay_beta: float = 0.4
    num_steps_sampled_before_learning_starts: int = 1000
    training_intensity: float = 8.0
    epsilon_initial: float = 1.0
    epsilon_final: float = 0.05
    epsilon_timesteps: int = 10_000
    rollout_fragment_length: int | str = 4
    model_config: ModelConfig = None

    def __post_init__(self):
        if self.model_config is None:
            self.model_config = ModelConfig(activation="relu", dueling=True)

    def validate(self) -> None:
        """AlgorithmConfig's checks and DQN's own."""
        super().validate()
        for name, low in (("n_step", 1), ("target_network_update_freq", 1),
                          ("replay_buffer_capacity", 1), ("epsilon_timesteps", 1),
                          ("num_steps_sampled_before_learning_starts", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
        if not 0 < self.tau <= 1:
            raise ValueError(f"tau must be in (0, 1], got {self.tau!r}")
        if not self.training_intensity > 0:
            raise ValueError(f"training_intensity must be > 0, got {self.training_intensity!r}")
        if self.num_learners > 1 and self.train_batch_size % self.num_learners:
            raise ValueError(f"train_batch_size={self.train_batch_size} must divide evenly over "
                             f"num_learners={self.num_learners}: each learner takes an equal share "
                             f"of every minibatch")

    def fragment_length(self) -> int:
        """Steps per environment per sample call ("auto": 4, as SB3's train_freq)."""
        return 4 if self.rollout_fragment_length == "auto" else int(self.rollout_fragment_length)


def n_step_transitions(batch: dict, n: int, gamma: float) -> dict:
    """Time-major fragments -> flat n-step transitions.

    Each row t sums up to ``n`` rewards from step t, stopping at an
    episode's end or the fragment's end; ``discounts`` is gamma^m for the m
    rewards summed (0 when the episode terminated: nothing to bootstrap)
    and ``next_obs`` the observation to bootstrap from.
    """
    rewards, term = batch["rewards"], batch["terminateds"]
    done = term | batch["truncateds"]
    nxt_all = batch["next_obs"]
    T = rewards.shape[0]
    ret = np.zeros(rewards.shape, np.float32)
    disc = np.ones(rewards.shape, np.float32)
    nxt = nxt_all.copy()
    alive = np.ones(rewards.shape, bool)
    terminated = np.zeros(rewards.shape, bool)
    for k in range(n):                       # rows t < T - k look at step t + k
        a = alive[:T - k].copy()
        ret[:T - k] += np.where(a, disc[:T - k] * rewards[k:], 0)
        nxt[:T - k][a] = nxt_all[k:][a]
        terminated[:T - k] |= a & term[k:]
        disc[:T - k] = np.where(a, disc[:T - k] * gamma, disc[:T - k])
        alive[:T - k] = a & ~done[k:]
        alive[T - k - 1:] = False            # the fragment ends: bootstrap from here
    disc[terminated] = 0.0
    flat = lambda v: v.reshape((-1,) + v.shape[2:])   # noqa: E731
    return {"obs": flat(batch["obs"]), "actions": flat(batch["actions"]), "rewards": flat(ret),
            "next_obs": flat(nxt), "discounts": flat(disc)}


def dqn_setup(learner) -> None:
    """Give the learner its target network (a copy of the online one)."""
    learner.extra["target"] = copy.deepcopy(learner.module)
    for p in learner.extra["target"].parameters():
        p.requires_grad_(False)


def dqn_update(learner, batch: dict, config: DQNConfig, num_steps: int = 1,
               update_target: bool = False) -> dict:
    """``num_steps`` gradient steps, one per consecutive slice of ``batch``; then maybe the target update.

    Returns mean ``loss``, ``q_mean``, and ``td_errors`` (one per row, for priorities).
    """
    import torch
    t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items() if k != "indices"}
    B = len(t["obs"]) // num_steps
    target, module = learner.extra["target"], learner.module
    losses, qs, tds = [], [], []
    for i in range(num_steps):
        mb = {k: v[i * B:(i + 1) * B] for k, v in t.items()}
        q = learner.model(mb["obs"])
        q_a = q.gather(1, mb["actions"].long().unsqueeze(1)).squeeze(1)
        with torch.no_grad():
            q_next_t = target(mb["next_obs"])
            if config.double_q:
                a_star = module(mb["next_obs"]).argmax(1, keepdim=True)
                q_next = q_next_t.gather(1, a_star).squeeze(1)
            else:
                q_next = q_next_t.max(1).values
            y = mb["rewards"] + mb["discounts"] * q_next
        td = q_a - y
        loss = (mb["weights"] * torch.nn.functional.smooth_l1_loss(q_a, y, reduction="none")).mean()
        learner.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        learner.clip_and_step()
        losses.append(loss.detach())
        qs.append(q_a.detach().mean())
        tds.append(td.detach())
    if update_target:
        with torch.no_grad():
            for pt, p in zip(target.parameters(), module.parameters()):
                pt.lerp_(p, config.tau)
    return {"loss": float(torch.stack(losses).mean()), "q_mean": float(torch.stack(qs).mean()),
            "td_errors": torch.cat(tds).numpy()}


class _DQNUpdate:
    def __init__(self, config: DQNConfig):
        self.config = config

    def __call__(self, learner, batch, **kwargs):
        return dqn_update(learner, batch, self.config, **kwargs)


class _QNetworkFactory:
    def __init__(self, model_config):
        self.model_config = model_config

    def __call__(self, observation_space, action_space):
        from shoal.rl.models import QNetwork
        return QNetwork(observation_space, action_space, self.model_config)


class DQN(Algorithm):
    """Deep Q-Networks (Mnih et al. 2015) with Rainbow's double, dueling, n-step and prioritized parts."""

    config_class = DQNConfig

    def setup(self) -> None:
        import gymnasium as gym
        c = self.config
        if not isinstance(self.action_space, gym.spaces.Discrete):
            from shoal.exceptions import InvalidInputError
            raise InvalidInputError(f"DQN needs a Discrete action space; environment {c.env} has "
                                    f"{self.action_space}. Use PPO for continuous actions")
        self.replay = (PrioritizedReplayBuffer(c.replay_buffer_capacity, c.prioritized_replay_alpha,
                                               c.prioritized_replay_beta, seed=c.seed)
                       if c.prioritized_replay else ReplayBuffer(c.replay_buffer_capacity, seed=c.seed))
        self._last_target_update = 0
        self._train_debt = 0.0
        self._build_runners_and_learners(lambda: LearnerGroup(
            LearnerSpec(self.module_factory(), self.observation_space, self.action_space, c.lr,
                        _DQNUpdate(c), setup=dqn_setup, grad_clip=c.grad_clip, seed=c.seed,
                        num_threads=c.num_threads_per_learner),
            c.num_learners, c.num_cpus_per_learner, c.max_num_learner_restarts),
            next_obs=True, bootstrap_truncated=False)

    def module_factory(self):
        """Builds QNetwork modules with the config's ModelConfig."""
        return _QNetworkFactory(self.config.model_config)

    def epsilon(self) -> float:
        """The exploration rate at the current number of sampled steps."""
        c = self.config
        frac = min(1.0, self.env_steps_sampled / c.epsilon_timesteps)
        return c.epsilon_initial + frac * (c.epsilon_final - c.epsilon_initial)

    def training_step(self) -> dict:
        """Sample with epsilon-greedy actions, store n-step transitions, train from replay."""
        c = self.config
        eps = self.epsilon()
        batches = self.env_runner_group.sample(epsilon=eps)
        self._record_episodes(batches)
        sampled = sum(b["env_steps"] for b in batches)
        self.env_steps_sampled += sampled
        for b in batches:
            self.replay.add(n_step_transitions(b, c.n_step, c.gamma))
        stats = {"epsilon": eps, "num_env_steps_sampled": sampled, "num_env_steps_trained": 0,
                 "replay_size": len(self.replay),
                 "episodes_this_iter": sum(len(b["episode_returns"]) for b in batches)}
        if self.env_steps_sampled < c.num_steps_sampled_before_learning_starts:
            return stats
        self._train_debt += sampled * c.training_intensity / c.train_batch_size
        steps = int(self._train_debt)
        if steps == 0:
            return stats
        self._train_debt -= steps
        update_target = (self.env_steps_sampled - self._last_target_update
                         >= c.target_network_update_freq)
        if update_target:
            self._last_target_update = self.env_steps_sampled
        mb = self.replay.sample(steps * c.train_batch_size)
        indices = mb.pop("indices")
        # unshuffled: the TD errors come back in the rows' order, for the priorities
        out = self.learner_group.update(mb, shuffle=False, num_steps=steps, update_target=update_target)
        self.replay.update_priorities(indices, out.pop("td_errors"))
        self.env_steps_trained += steps * c.train_batch_size
        self._publish_weights()
        stats.update(out, num_env_steps_trained=steps * c.train_batch_size)
        return stats

    def _extra_state(self) -> dict:
        return {"last_target_update": self._last_target_update}

    def _load_extra_state(self, state: dict) -> None:
        self._last_target_update = state.get("last_target_update", 0)


DQNConfig.algo_class = DQN
