"""IMPALA: an asynchronous actor-learner with V-trace off-policy corrections (Espeholt et al. 2018).

    algo = (IMPALAConfig().environment("CartPole-v1")
            .env_runners(num_env_runners=2, num_envs_per_env_runner=8, rollout_fragment_length=32)
            .training(lr=1e-3, train_batch_size=512)
            .build())
    for _ in range(50):
        result = algo.train()

Runners never wait for the learner: each keeps ``max_requests_in_flight_per_env_runner``
``sample`` calls queued, so while the learner trains on one batch the
runners step the next ones with the weights they have, a version or two
old. The learner corrects for that lag with V-trace: the value targets and
policy-gradient advantages weight each step by the clipped ratio of the
learner's policy to the one that acted (``vtrace``). Weights go out with
one ``shoal.put`` every ``broadcast_interval`` updates; the runners pick
them up with their next call. ``mean_policy_lag`` in the results is how
many versions behind the trained batches were.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shoal.rl.advantages import vtrace
from shoal.rl.algorithm import Algorithm
from shoal.rl.config import AlgorithmConfig
from shoal.rl.learner import LearnerGroup, LearnerSpec
from shoal.rl.ppo import _ActorCriticFactory


@dataclass
class IMPALAConfig(AlgorithmConfig):
    """IMPALA's settings (``training(...)`` fields, beside lr, gamma, train_batch_size, grad_clip).

    Args:
        vtrace_clip_rho_threshold: rho-bar, clips the importance weights of the value targets.
        vtrace_clip_pg_rho_threshold: clips the weights of the policy-gradient advantages.
        vf_loss_coeff: weight of the value loss (half the squared error to the V-trace targets).
        entropy_coeff: weight of the entropy bonus.
        num_epochs: passes over each train batch (1 in the paper; 2 learns
            CartPole in fewer env steps).
        minibatch_size: env steps per gradient step (whole trajectories;
            None: the train batch).
        max_requests_in_flight_per_env_runner: sample calls queued on each
            runner; 1 makes sampling wait for the learner at every batch.
        broadcast_interval: learner updates between weight broadcasts.
    """

    lr: float = 1e-3
    train_batch_size: int = 512
    rollout_fragment_length: int | str = 32
    grad_clip: float | None = 40.0
    vtrace_clip_rho_threshold: float = 1.0
    vtrace_clip_pg_rho_threshold: float = 1.0
    vf_loss_coeff: float = 0.5
    entropy_coeff: float = 0.0
    num_epochs: int = 2
    minibatch_size: int | None = 128
    max_requests_in_flight_per_env_runner: int = 2
    broadcast_interval: int = 1

    def validate(self) -> None:
        """AlgorithmConfig's checks and IMPALA's own."""
        super().validate()
        for name in ("num_epochs", "max_requests_in_flight_per_env_runner", "broadcast_interval"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if self.minibatch_size is not None and (not isinstance(self.minibatch_size, int)
                                                or self.minibatch_size < 1):
            raise ValueError(f"minibatch_size must be an int >= 1 or None, got {self.minibatch_size!r}")
        for name in ("vtrace_clip_rho_threshold", "vtrace_clip_pg_rho_threshold"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        envs = self.num_envs_per_env_runner * max(1, self.num_env_runners)
        if self.num_learners > 1 and envs < self.num_learners:
            raise ValueError(f"num_learners={self.num_learners} needs at least as many environments, "
                             f"got num_env_runners x num_envs_per_env_runner = {envs}: each learner "
                             f"trains on whole trajectories")

    def fragment_length(self) -> int:
        """Steps per environment per sample call ("auto": 32)."""
        return 32 if self.rollout_fragment_length == "auto" else int(self.rollout_fragment_length)


def impala_loss(module, model, batch: dict, config: IMPALAConfig):
    """IMPALA's loss on trajectories (torch tensors, env-major ``(B, T, ...)``); ``(loss, stats)``.

    ``batch`` holds ``obs``, ``actions``, ``logp`` (the acting policy's),
    ``rewards`` (time-limit bootstraps added), ``discounts`` (gamma, 0 after
    an episode's end) and ``last_obs`` (B, ...). V-trace runs on the
    learner's current values and log-probabilities, without gradient.
    """
    import torch
    B, T = batch["actions"].shape[:2]
    obs = batch["obs"].reshape((B * T,) + tuple(batch["obs"].shape[2:]))
    dist_inputs, values = model(obs)
    logp, entropy = module.logp_entropy(dist_inputs, batch["actions"].reshape((B * T,) +
                                                                              tuple(batch["actions"].shape[2:])))
    logp, values = logp.reshape(B, T), values.reshape(B, T)
    with torch.no_grad():
        bootstrap = module.value(batch["last_obs"])
        vs, pg_adv = vtrace(batch["logp"].T.numpy(), logp.detach().T.numpy(), batch["rewards"].T.numpy(),
                            values.detach().T.numpy(), bootstrap.numpy(), batch["discounts"].T.numpy(),
                            config.vtrace_clip_rho_threshold, config.vtrace_clip_pg_rho_threshold)
        vs, pg_adv = torch.from_numpy(vs.T.copy()), torch.from_numpy(pg_adv.T.copy())
    policy_loss = -(logp * pg_adv).mean()
    vf_loss = 0.5 * (values - vs).pow(2).mean()
    ent = entropy.mean()
    loss = policy_loss + config.vf_loss_coeff * vf_loss - config.entropy_coeff * ent
    with torch.no_grad():
        rho = torch.exp(logp - batch["logp"])
    return loss, {"policy_loss": policy_loss.detach(), "vf_loss": vf_loss.detach(),
                  "entropy": ent.detach(), "mean_rho": rho.mean(), "max_rho": rho.max()}


def impala_update(learner, batch: dict, config: IMPALAConfig) -> dict:
    """``num_epochs`` passes over ``batch`` (env-major NumPy arrays) in minibatches of trajectories."""
    import torch
    t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}
    B, T = t["actions"].shape[:2]
    per = B if config.minibatch_size is None else max(1, config.minibatch_size // (T * learner.world_size))
    n_mb = max(1, B // per)
    sums: dict = {}
    steps = 0
    for _ in range(config.num_epochs):
        perm = torch.randperm(B, generator=learner.generator) if n_mb > 1 else torch.arange(B)
        for i in range(n_mb):
            idx = perm[i * per:(i + 1) * per]
            loss, stats = impala_loss(learner.module, learner.model, {k: v[idx] for k, v in t.items()},
                                      config)
            learner.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            stats["grad_norm"] = learner.clip_and_step()
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            steps += 1
    return {k: v / steps for k, v in sums.items()}


class _IMPALAUpdate:
    def __init__(self, config: IMPALAConfig):
        self.config = config

    def __call__(self, learner, batch, **kwargs):
        return impala_update(learner, batch, self.config, **kwargs)


class IMPALA(Algorithm):
    """IMPALA (Espeholt et al. 2018): runners sample asynchronously, the learner corrects with V-trace."""

    config_class = IMPALAConfig

    def setup(self) -> None:
        c = self.config
        self._updates = 0
        self._build_runners_and_learners(lambda: LearnerGroup(
            LearnerSpec(self.module_factory(), self.observation_space, self.action_space, c.lr,
                        _IMPALAUpdate(c), grad_clip=c.grad_clip, seed=c.seed,
                        num_threads=c.num_threads_per_learner),
            c.num_learners, c.num_cpus_per_learner, c.max_num_learner_restarts))

    def module_factory(self):
        """Builds ActorCritic modules with the config's ModelConfig."""
        return _ActorCriticFactory(self.config.model_config)

    def training_step(self) -> dict:
        """Take the batches the runners finished (at least train_batch_size steps), learn, maybe broadcast."""
        c = self.config
        batches = self.env_runner_group.sample_async(
            c.train_batch_size, c.max_requests_in_flight_per_env_runner)
        self._record_episodes(batches)
        sampled = sum(b["env_steps"] for b in batches)
        self.env_steps_sampled += sampled
        lags = [self.weights_version - b["weights_version"] for b in batches]
        train = self.postprocess(batches)
        stats = self.learner_group.update(
            train, shuffle_seed=None if c.seed is None else c.seed + self.iteration)
        trained = int(train["actions"].shape[0] * train["actions"].shape[1])
        self.env_steps_trained += trained
        self._updates += 1
        if self._updates % c.broadcast_interval == 0:
            self._publish_weights()
        stats.update(num_env_steps_sampled=sampled, num_env_steps_trained=trained,
                     mean_policy_lag=float(np.mean(lags)), max_policy_lag=int(max(lags)),
                     episodes_this_iter=sum(len(b["episode_returns"]) for b in batches))
        return stats

    def postprocess(self, batches: list) -> dict:
        """Fragments (T, N, ...) -> env-major trajectories (sum N, T, ...) with rewards and discounts."""
        c = self.config
        cols = {k: [] for k in ("obs", "actions", "logp", "rewards", "discounts", "last_obs")}
        for b in batches:
            rewards = b["rewards"]
            if "trunc_values" in b:
                # a time limit is not an end: bootstrap from the final observation's value
                rewards = rewards + c.gamma * b["trunc_values"]
            discounts = np.where(b["terminateds"] | b["truncateds"], 0.0, c.gamma).astype(np.float32)
            for k, v in (("obs", b["obs"]), ("actions", b["actions"]), ("logp", b["logp"]),
                         ("rewards", rewards), ("discounts", discounts)):
                cols[k].append(np.swapaxes(v, 0, 1))
            cols["last_obs"].append(b["last_obs"])
        return {k: np.concatenate(v) for k, v in cols.items()}


IMPALAConfig.algo_class = IMPALA
