"""PPO: clipped surrogate objective, GAE, minibatch epochs, value clipping, entropy bonus.

    algo = (PPOConfig().environment("CartPole-v1")
            .env_runners(num_env_runners=2, num_envs_per_env_runner=8)
            .training(lr=3e-4, train_batch_size=2048, minibatch_size=256, num_epochs=10)
            .build())
    for _ in range(20):
        result = algo.train()

One iteration: publish the weights (one ``shoal.put``), every runner steps
its vector environment ``rollout_fragment_length`` times, the driver turns
the fragments into advantages with GAE (time-limit truncations bootstrapped
with the value of the final observation) and the learners run
``num_epochs`` passes of shuffled minibatches over the batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shoal.rl.advantages import compute_gae
from shoal.rl.algorithm import Algorithm
from shoal.rl.config import AlgorithmConfig
from shoal.rl.learner import LearnerGroup, LearnerSpec


@dataclass
class PPOConfig(AlgorithmConfig):
    """PPO's settings (``training(...)`` fields, beside AlgorithmConfig's lr, gamma,
    train_batch_size and grad_clip).

    Args:
        lambda_: GAE's lambda.
        clip_param: the surrogate's ratio clip epsilon.
        vf_clip_param: value predictions move at most this far from the
            sampled ones per iteration (PPO2's value clipping); None: off.
        vf_loss_coeff: weight of the value loss (mean squared error).
        entropy_coeff: weight of the entropy bonus.
        num_epochs: passes over the train batch per iteration.
        minibatch_size: rows per gradient step (split over the learners).
        normalize_advantages: standardize the advantages: True or
            "minibatch" in each minibatch (Stable-Baselines3, CleanRL),
            "batch" once over the whole train batch (RLlib), False not at all.
        use_kl_loss, kl_coeff, kl_target: an adaptive KL penalty (RLlib's):
            the coefficient doubles when the KL exceeds 2 * kl_target and
            halves below kl_target / 2.
    """

    lr: float = 3e-4
    train_batch_size: int = 2048
    grad_clip: float | None = 0.5
    lambda_: float = 0.95
    clip_param: float = 0.2
    vf_clip_param: float | None = None
    vf_loss_coeff: float = 0.5
    entropy_coeff: float = 0.0
    num_epochs: int = 10
    minibatch_size: int = 64
    normalize_advantages: bool | str = True
    use_kl_loss: bool = False
    kl_coeff: float = 0.2
    kl_target: float = 0.01

    def validate(self) -> None:
        """AlgorithmConfig's checks and PPO's own."""
        super().validate()
        for name in ("num_epochs", "minibatch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if not 0 < self.clip_param:
            raise ValueError(f"clip_param must be > 0, got {self.clip_param!r}")
        if self.vf_clip_param is not None and not self.vf_clip_param > 0:
            raise ValueError(f"vf_clip_param must be > 0 or None, got {self.vf_clip_param!r}")
        if self.normalize_advantages not in (True, False, "minibatch", "batch"):
            raise ValueError(f"normalize_advantages must be True, False, 'minibatch' or 'batch', "
                             f"got {self.normalize_advantages!r}")
        if not 0 <= self.lambda_ <= 1:
            raise ValueError(f"lambda_ must be in [0, 1], got {self.lambda_!r}")
        n = max(1, self.num_learners)
        if self.minibatch_size < n:
            raise ValueError(f"minibatch_size={self.minibatch_size} is smaller than num_learners={n}; "
                             f"each learner needs at least one row per minibatch")


def ppo_loss(module, model, batch: dict, clip_param: float, vf_clip_param: float | None,
             vf_loss_coeff: float, entropy_coeff: float, kl_coeff: float = 0.0,
             normalize_advantages: bool = True):
    """PPO's loss on one minibatch of torch tensors; returns ``(loss, stats)``.

    ``batch`` holds ``obs``, ``actions``, ``logp`` (of the sampling policy),
    ``vf_preds`` (its values), ``advantages`` and ``value_targets``.
    ``model`` is ``module`` or its DDP wrapper (whose forward averages
    gradients). ``stats`` are detached scalars: policy_loss, vf_loss,
    entropy, kl (mean of the approximate KL from old to new), clip_fraction.
    """
    import torch
    dist_inputs, values = model(batch["obs"])
    logp, entropy = module.logp_entropy(dist_inputs, batch["actions"])
    adv = batch["advantages"]
    if normalize_advantages and adv.numel() > 1:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    log_ratio = logp - batch["logp"]
    ratio = torch.exp(log_ratio)
    surrogate = torch.min(ratio * adv, torch.clamp(ratio, 1 - clip_param, 1 + clip_param) * adv)
    policy_loss = -surrogate.mean()
    targets = batch["value_targets"]
    vf_err = (values - targets).pow(2)
    if vf_clip_param is not None:
        old = batch["vf_preds"]
        clipped = old + torch.clamp(values - old, -vf_clip_param, vf_clip_param)
        vf_err = torch.max(vf_err, (clipped - targets).pow(2))
    vf_loss = vf_err.mean()
    ent = entropy.mean()
    with torch.no_grad():
        kl = ((ratio - 1) - log_ratio).mean()
        clip_fraction = ((ratio - 1).abs() > clip_param).float().mean()
    loss = policy_loss + vf_loss_coeff * vf_loss - entropy_coeff * ent
    if kl_coeff:
        loss = loss + kl_coeff * ((ratio - 1) - log_ratio).mean()
    return loss, {"policy_loss": policy_loss.detach(), "vf_loss": vf_loss.detach(),
                  "entropy": ent.detach(), "kl": kl, "clip_fraction": clip_fraction}


def ppo_update(learner, batch: dict, config: PPOConfig, kl_coeff: float = 0.0) -> dict:
    """PPO's minibatch epochs on ``batch`` (NumPy arrays) in ``learner``; mean stats."""
    import torch
    t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}
    n = len(t["obs"])
    mb = max(1, config.minibatch_size // learner.world_size)
    # every rank must take as many steps (DDP); the tail that makes a partial
    # minibatch is skipped in that epoch (it is a different tail each epoch)
    n_mb = max(1, n // mb)
    collected: dict = {}
    for _ in range(config.num_epochs):
        perm = torch.randperm(n, generator=learner.generator)
        # one gather per column and epoch; the minibatches are then views
        # (the same rows as indexing each minibatch, with 6x fewer ops)
        shuffled = {k: v[perm] for k, v in t.items()}
        for i in range(n_mb):
            loss, stats = ppo_loss(learner.module, learner.model,
                                   {k: v[i * mb:(i + 1) * mb] for k, v in shuffled.items()},
                                   config.clip_param, config.vf_clip_param, config.vf_loss_coeff,
                                   config.entropy_coeff, kl_coeff,
                                   config.normalize_advantages in (True, "minibatch"))
            learner.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            learner.clip_and_step()
            for k, v in stats.items():
                collected.setdefault(k, []).append(v)
    # one reduction per statistic at the end, not an add per minibatch
    out = {k: float(torch.stack(v).mean()) for k, v in collected.items()}
    with torch.no_grad():
        _, values = learner.module(t["obs"])
        var = t["value_targets"].var()
        out["vf_explained_var"] = float(1 - (t["value_targets"] - values).var() / var) if var > 0 else 0.0
    return out


class _PPOUpdate:
    # a picklable callable: the learner actors get it with their spec
    def __init__(self, config: PPOConfig):
        self.config = config

    def __call__(self, learner, batch, **kwargs):
        return ppo_update(learner, batch, self.config, **kwargs)


class _ActorCriticFactory:
    def __init__(self, model_config):
        self.model_config = model_config

    def __call__(self, observation_space, action_space):
        from shoal.rl.models import ActorCritic
        return ActorCritic(observation_space, action_space, self.model_config)


class PPO(Algorithm):
    """Proximal Policy Optimization (Schulman et al. 2017) on env runner actors."""

    config_class = PPOConfig

    def setup(self) -> None:
        c = self.config
        self.kl_coeff = c.kl_coeff if c.use_kl_loss else 0.0
        self._build_runners_and_learners(lambda: LearnerGroup(
            LearnerSpec(self.module_factory(), self.observation_space, self.action_space, c.lr,
                        _PPOUpdate(c), grad_clip=c.grad_clip, seed=c.seed,
                        num_threads=c.num_threads_per_learner),
            c.num_learners, c.num_cpus_per_learner, c.max_num_learner_restarts))

    def module_factory(self):
        """Builds ActorCritic modules with the config's ModelConfig."""
        return _ActorCriticFactory(self.config.model_config)

    def training_step(self) -> dict:
        """Sample a fragment on every runner, compute GAE, run PPO's epochs, publish weights."""
        c = self.config
        batches = self.env_runner_group.sample()
        self._record_episodes(batches)
        train = self.postprocess(batches)
        sampled = sum(b["env_steps"] for b in batches)
        self.env_steps_sampled += sampled
        stats = self.learner_group.update(train, kl_coeff=self.kl_coeff,
                                          shuffle_seed=None if c.seed is None else c.seed + self.iteration)
        self.env_steps_trained += len(train["obs"])
        if c.use_kl_loss:
            if stats["kl"] > 2.0 * c.kl_target:
                self.kl_coeff *= 1.5
            elif stats["kl"] < 0.5 * c.kl_target:
                self.kl_coeff *= 0.5
            stats["kl_coeff"] = self.kl_coeff
        self._publish_weights()
        stats.update(num_env_steps_sampled=sampled, num_env_steps_trained=len(train["obs"]),
                     episodes_this_iter=sum(len(b["episode_returns"]) for b in batches))
        return stats

    def postprocess(self, batches: list) -> dict:
        """Fragments (T, N, ...) -> one flat train batch with ``advantages`` and ``value_targets``."""
        c = self.config
        cols = {k: [] for k in ("obs", "actions", "logp", "vf_preds", "advantages", "value_targets")}
        for b in batches:
            rewards = b["rewards"]
            if "trunc_values" in b:
                rewards = rewards + c.gamma * b["trunc_values"]
            adv, targets = compute_gae(rewards, b["vf_preds"], b["terminateds"] | b["truncateds"],
                                       b["last_values"], c.gamma, c.lambda_)
            for k, v in (("obs", b["obs"]), ("actions", b["actions"]), ("logp", b["logp"]),
                         ("vf_preds", b["vf_preds"]), ("advantages", adv), ("value_targets", targets)):
                cols[k].append(v.reshape((-1,) + v.shape[2:]))
        out = {k: np.concatenate(v) for k, v in cols.items()}
        if c.normalize_advantages == "batch" and len(out["advantages"]) > 1:
            adv = out["advantages"]
            out["advantages"] = ((adv - adv.mean()) / (adv.std() + 1e-8)).astype(adv.dtype, copy=False)
        return out

    def _extra_state(self) -> dict:
        return {"kl_coeff": self.kl_coeff}

    def _load_extra_state(self, state: dict) -> None:
        self.kl_coeff = state.get("kl_coeff", self.kl_coeff)


PPOConfig.algo_class = PPO
