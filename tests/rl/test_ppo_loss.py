"""PPO's loss and its clipping on a fixed batch."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from shoal.rl import ActorCritic, ModelConfig, PPOConfig, ppo_loss


def _batch(module, ratios, advantages, vf_preds, targets):
    torch.manual_seed(0)
    obs = torch.randn(len(ratios), 4)
    actions = torch.tensor([0, 1, 1, 0][:len(ratios)])
    with torch.no_grad():
        dist_inputs, _ = module(obs)
        logp, _ = module.logp_entropy(dist_inputs, actions)
    # old log-probs chosen so that new/old is exactly the ratio wanted
    old_logp = logp - torch.log(torch.tensor(ratios))
    return {"obs": obs, "actions": actions, "logp": old_logp,
            "advantages": torch.tensor(advantages), "vf_preds": torch.tensor(vf_preds),
            "value_targets": torch.tensor(targets)}


@pytest.fixture
def module():
    torch.manual_seed(0)
    return ActorCritic(gym.spaces.Box(-1, 1, (4,)), gym.spaces.Discrete(2), ModelConfig(hiddens=[8]))


def test_policy_loss_is_the_clipped_surrogate(module):
    ratios = [1.5, 1.5, 0.5, 1.0]
    adv = [1.0, -1.0, -2.0, 0.5]
    b = _batch(module, ratios, adv, [0.0] * 4, [0.0] * 4)
    loss, stats = ppo_loss(module, module, b, clip_param=0.2, vf_clip_param=None,
                           vf_loss_coeff=0.0, entropy_coeff=0.0, normalize_advantages=False)
    # min(r*A, clip(r)*A): 1.2*1 (clipped), 1.5*-1 (unclipped is lower), 0.8*-2, 1*0.5
    expected = -np.mean([1.2, -1.5, -1.6, 0.5])
    assert float(stats["policy_loss"]) == pytest.approx(expected, rel=1e-5)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    assert float(stats["clip_fraction"]) == pytest.approx(3 / 4)


def test_clipped_samples_give_no_policy_gradient(module):
    # ratio above 1+eps with a positive advantage: the clipped term is constant
    b = _batch(module, [1.5], [1.0], [0.0], [0.0])
    loss, _ = ppo_loss(module, module, b, 0.2, None, 0.0, 0.0, normalize_advantages=False)
    loss.backward()
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in module.pi_head.parameters())
    module.zero_grad()
    b = _batch(module, [1.1], [1.0], [0.0], [0.0])     # inside the clip range: a gradient
    loss, _ = ppo_loss(module, module, b, 0.2, None, 0.0, 0.0, normalize_advantages=False)
    loss.backward()
    assert torch.count_nonzero(module.pi_head.weight.grad) > 0


def test_value_loss_clipping_takes_the_larger_error(module):
    b = _batch(module, [1.0, 1.0], [0.0, 0.0], [0.0, 0.0], [5.0, -5.0])
    with torch.no_grad():
        _, v = module(b["obs"])
    b["vf_preds"] = v - torch.tensor([1.0, -0.05])      # old values 1.0 below / 0.05 above
    _, stats = ppo_loss(module, module, b, 0.2, vf_clip_param=0.1, vf_loss_coeff=1.0,
                        entropy_coeff=0.0, normalize_advantages=False)
    t = b["value_targets"]
    clipped = b["vf_preds"] + torch.clamp(v - b["vf_preds"], -0.1, 0.1)
    expected = torch.max((v - t) ** 2, (clipped - t) ** 2).mean()
    assert float(stats["vf_loss"]) == pytest.approx(float(expected), rel=1e-5)
    _, unclipped = ppo_loss(module, module, b, 0.2, None, 1.0, 0.0, normalize_advantages=False)
    assert float(unclipped["vf_loss"]) == pytest.approx(float(((v - t) ** 2).mean()), rel=1e-5)
    assert float(stats["vf_loss"]) >= float(unclipped["vf_loss"])


def test_total_loss_combines_the_terms_with_their_coefficients(module):
    b = _batch(module, [1.0, 1.1, 0.9, 1.0], [1.0, 2.0, -1.0, 0.5], [0.0] * 4, [1.0, 2.0, 3.0, 4.0])
    loss, s = ppo_loss(module, module, b, 0.2, None, vf_loss_coeff=0.5, entropy_coeff=0.01,
                       normalize_advantages=True)
    expected = s["policy_loss"] + 0.5 * s["vf_loss"] - 0.01 * s["entropy"]
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)
    # two actions: entropy at most log 2
    assert 0 < float(s["entropy"]) <= np.log(2) + 1e-6


def test_continuous_log_prob_and_entropy_are_the_gaussian_ones():
    torch.manual_seed(0)
    m = ActorCritic(gym.spaces.Box(-1, 1, (3,)), gym.spaces.Box(-2, 2, (2,)), ModelConfig(hiddens=[8]))
    obs = torch.randn(5, 3)
    actions = torch.randn(5, 2)
    with torch.no_grad():
        d, _ = m(obs)
        logp, ent = m.logp_entropy(d, actions)
        mean, log_std = d.chunk(2, -1)
        ref = torch.distributions.Normal(mean, log_std.exp())
    torch.testing.assert_close(logp, ref.log_prob(actions).sum(-1))
    torch.testing.assert_close(ent, ref.entropy().sum(-1))


def test_config_rejects_unknown_and_out_of_range_settings():
    with pytest.raises(ValueError, match="clip_parm"):
        PPOConfig().training(clip_parm=0.1)
    with pytest.raises(ValueError, match="num_env_runners"):
        PPOConfig().training(num_env_runners=2)       # belongs to env_runners()
    with pytest.raises(ValueError, match="num_epochs"):
        PPOConfig().environment("CartPole-v1").training(num_epochs=0).validate()
    with pytest.raises(ValueError, match="no environment"):
        PPOConfig().validate()


def _fragment(T=6, N=2, seed=0):
    rng = np.random.default_rng(seed)
    return {"obs": rng.normal(size=(T, N, 4)).astype(np.float32), "actions": rng.integers(0, 2, (T, N)),
            "logp": np.full((T, N), -0.69, np.float32), "vf_preds": rng.normal(size=(T, N)).astype(np.float32),
            "rewards": rng.normal(2.0, 1.0, (T, N)).astype(np.float32),
            "terminateds": np.zeros((T, N), bool), "truncateds": np.zeros((T, N), bool),
            "last_values": np.zeros(N, np.float32)}


@pytest.mark.parametrize("mode", ["batch", "minibatch", True, False])
def test_advantages_are_standardized_over_the_batch_or_per_minibatch(mode, monkeypatch):
    import types

    import shoal.rl.ppo as ppo_mod
    from shoal.rl import PPO, Learner, LearnerSpec
    config = PPOConfig(env="CartPole-v1", normalize_advantages=mode, minibatch_size=4, num_epochs=1)
    config.validate()
    train = PPO.postprocess(types.SimpleNamespace(config=config), [_fragment(), _fragment(seed=1)])
    raw = PPO.postprocess(types.SimpleNamespace(config=PPOConfig(normalize_advantages=False)),
                          [_fragment(), _fragment(seed=1)])
    if mode == "batch":        # RLlib's: once over the whole train batch
        assert abs(train["advantages"].mean()) < 1e-5 and abs(train["advantages"].std() - 1) < 1e-3
    else:
        np.testing.assert_array_equal(train["advantages"], raw["advantages"])
    assert raw["advantages"].mean() > 1         # rewards of ~2: far from standardized
    seen = []

    def spy(*args, **kwargs):
        seen.append(args[-1])               # the per-minibatch flag the loss gets
        return ppo_loss(*args, **kwargs)

    monkeypatch.setattr(ppo_mod, "ppo_loss", spy)
    spec = LearnerSpec(lambda o, a: ActorCritic(o, a, ModelConfig(hiddens=[8])),
                       gym.spaces.Box(-np.inf, np.inf, (4,)), gym.spaces.Discrete(2), 1e-3, None, seed=0)
    ppo_mod.ppo_update(Learner(spec), train, config)
    assert seen and all(flag == (mode in (True, "minibatch")) for flag in seen)


def test_config_rejects_an_unknown_advantage_normalization():
    with pytest.raises(ValueError, match="normalize_advantages"):
        PPOConfig(env="CartPole-v1", normalize_advantages="episode").validate()
