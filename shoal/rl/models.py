"""Torch policies: an actor-critic MLP (discrete and continuous heads) and a Q-network.

Modules take observations as float tensors (Discrete observations arrive
as integer indices and are one-hot encoded). Runners call ``act`` under
``torch.inference_mode`` with a batch of observations from their vector
environment; learners call ``forward`` (through DDP when there are several).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch
from torch import nn

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "silu": nn.SiLU}


@dataclass
class ModelConfig:
    """The shape of the default policy networks.

    Args:
        hiddens: sizes of the hidden layers of each MLP.
        activation: "tanh", "relu", "elu" or "silu".
        vf_share_layers: the value head sits on the policy's hidden layers
            (one MLP) instead of its own MLP.
        free_log_std: continuous actions: a state-independent log standard
            deviation (a parameter) instead of a second output half.
        init_log_std: its initial value.
        dueling: Q-networks: separate value and advantage streams.
    """

    hiddens: list = field(default_factory=lambda: [64, 64])
    activation: str = "tanh"
    vf_share_layers: bool = False
    free_log_std: bool = True
    init_log_std: float = 0.0
    dueling: bool = True

    def __post_init__(self):
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"ModelConfig.activation must be one of {sorted(_ACTIVATIONS)}, "
                             f"got {self.activation!r}")
        if not self.hiddens or any(not isinstance(h, int) or h < 1 for h in self.hiddens):
            raise ValueError(f"ModelConfig.hiddens must be a non-empty list of positive ints, "
                             f"got {self.hiddens!r}")


def obs_dim(space) -> int:
    """Width of the flat float input an observation space becomes."""
    return int(space.n) if isinstance(space, gym.spaces.Discrete) else int(np.prod(space.shape))


def _mlp(sizes: list, activation: str) -> nn.Sequential:
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), _ACTIVATIONS[activation]()]
    return nn.Sequential(*layers)


def _init_linear(layer: nn.Linear, gain: float) -> None:
    # Orthogonal weights with per-layer gains (the PPO implementation details
    # that SB3 and CleanRL use): small policy outputs start near uniform.
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)


class _Encoder(nn.Module):
    def __init__(self, space):
        super().__init__()
        self.n = int(space.n) if isinstance(space, gym.spaces.Discrete) else 0

    def forward(self, obs):
        if self.n:
            return nn.functional.one_hot(obs.long().reshape(-1), self.n).float()
        return obs.reshape(obs.shape[0], -1).float()


class ActorCritic(nn.Module):
    """Policy and value MLPs for PPO and IMPALA.

    ``forward(obs)`` returns ``(dist_inputs, values)``: logits for Discrete
    actions, means (and log standard deviations) for Box actions.
    """

    def __init__(self, observation_space, action_space, config: ModelConfig | None = None):
        super().__init__()
        config = config or ModelConfig()
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        self.act_dim = int(action_space.n) if self.discrete else int(action_space.shape[0])
        self.free_log_std = config.free_log_std and not self.discrete
        self.encoder = _Encoder(observation_space)
        sizes = [obs_dim(observation_space)] + list(config.hiddens)
        self.pi_body = _mlp(sizes, config.activation)
        n_out = self.act_dim if (self.discrete or self.free_log_std) else 2 * self.act_dim
        self.pi_head = nn.Linear(sizes[-1], n_out)
        self.vf_body = None if config.vf_share_layers else _mlp(sizes, config.activation)
        self.vf_head = nn.Linear(sizes[-1], 1)
        self.log_std = (nn.Parameter(torch.full((self.act_dim,), float(config.init_log_std)))
                        if self.free_log_std else None)
        for body in (self.pi_body, self.vf_body):
            for m in (body or []):
                if isinstance(m, nn.Linear):
                    _init_linear(m, np.sqrt(2))
        _init_linear(self.pi_head, 0.01)
        _init_linear(self.vf_head, 1.0)

    def forward(self, obs):
        """``(dist_inputs, values)`` for a batch of observations."""
        x = self.encoder(obs)
        h = self.pi_body(x)
        out = self.pi_head(h)
        if self.free_log_std:
            out = torch.cat([out, self.log_std.expand_as(out)], dim=-1)
        v = self.vf_head(h if self.vf_body is None else self.vf_body(x)).squeeze(-1)
        return out, v

    def value(self, obs):
        """State values of a batch of observations."""
        x = self.encoder(obs)
        return self.vf_head(self.pi_body(x) if self.vf_body is None else self.vf_body(x)).squeeze(-1)

    def logp_entropy(self, dist_inputs, actions):
        """Log-probabilities of ``actions`` and the entropies of the distributions."""
        if self.discrete:
            logp_all = torch.log_softmax(dist_inputs, dim=-1)
            logp = logp_all.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
            entropy = -(logp_all.exp() * logp_all).sum(-1)
            return logp, entropy
        mean, log_std = dist_inputs.chunk(2, dim=-1)
        z = (actions - mean) * torch.exp(-log_std)
        logp = (-0.5 * z.pow(2) - log_std - 0.5 * np.log(2 * np.pi)).sum(-1)
        entropy = (log_std + 0.5 * (1.0 + np.log(2 * np.pi))).sum(-1)
        return logp, entropy

    @torch.inference_mode()
    def act(self, obs: np.ndarray, explore: bool = True) -> dict:
        """Actions for a batch of observations, with their log-probabilities and values.

        Returns a dict of NumPy arrays: ``actions``, ``logp``, ``vf_preds``.
        """
        dist_inputs, v = self.forward(torch.as_tensor(obs))
        if self.discrete:
            if explore:
                # Gumbel-max: one fused sample of the categorical per row
                u = torch.rand_like(dist_inputs).clamp_(1e-20, 1.0)
                a = (dist_inputs - torch.log(-torch.log(u))).argmax(-1)
            else:
                a = dist_inputs.argmax(-1)
        else:
            mean, log_std = dist_inputs.chunk(2, dim=-1)
            a = mean + torch.randn_like(mean) * log_std.exp() if explore else mean
        logp, _ = self.logp_entropy(dist_inputs, a)
        return {"actions": a.numpy(), "logp": logp.numpy(), "vf_preds": v.numpy()}


class QNetwork(nn.Module):
    """Q-values of every discrete action (dueling streams by default), for DQN."""

    def __init__(self, observation_space, action_space, config: ModelConfig | None = None):
        super().__init__()
        config = config or ModelConfig(activation="relu")
        if not isinstance(action_space, gym.spaces.Discrete):
            raise ValueError(f"a Q-network needs a Discrete action space, got {action_space}")
        self.n_actions = int(action_space.n)
        self.encoder = _Encoder(observation_space)
        sizes = [obs_dim(observation_space)] + list(config.hiddens)
        self.body = _mlp(sizes, config.activation)
        self.dueling = config.dueling
        self.adv_head = nn.Linear(sizes[-1], self.n_actions)
        self.value_head = nn.Linear(sizes[-1], 1) if self.dueling else None

    def forward(self, obs):
        """Q-values, shape (batch, n_actions)."""
        h = self.body(self.encoder(obs))
        adv = self.adv_head(h)
        if not self.dueling:
            return adv
        return self.value_head(h) + adv - adv.mean(-1, keepdim=True)

    @torch.inference_mode()
    def act(self, obs: np.ndarray, explore: bool = True, epsilon: float = 0.0) -> dict:
        """Greedy actions, each replaced by a uniform one with probability ``epsilon`` when exploring."""
        q = self.forward(torch.as_tensor(obs))
        a = q.argmax(-1)
        if explore and epsilon > 0:
            rand = torch.randint(0, self.n_actions, a.shape)
            a = torch.where(torch.rand(a.shape) < epsilon, rand, a)
        return {"actions": a.numpy()}


def state_to_numpy(module: nn.Module) -> dict:
    """A module's state dict as NumPy arrays (what travels through the object store)."""
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def load_numpy_state(module: nn.Module, state: dict) -> None:
    """Copy a NumPy state dict (``state_to_numpy``) into ``module``'s tensors in place."""
    # A NumPy copy into each tensor's memory: the arrays may be read-only
    # views of the object store, which torch.from_numpy would warn about.
    for k, t in module.state_dict().items():
        t.numpy()[...] = state[k]
