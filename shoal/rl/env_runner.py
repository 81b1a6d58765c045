"""An env runner: one process stepping a Gymnasium vector environment with a copy of the policy.

The runner keeps its environments between calls (episodes continue across
``sample`` calls, as in RLlib and Stable-Baselines3), loads new weights only
when their version changes, and returns a fragment of ``T`` steps of its
``N`` environments as a dict of NumPy arrays shaped ``(T, N, ...)``. The
dict goes back through the object store, so the learner reads the arrays
without a copy.

Episodes that end on a time limit (``truncated``) are bootstrapped: the
value of the true final observation is returned in ``trunc_values`` (PPO
adds ``gamma * trunc_values`` to the reward).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np

from shoal.exceptions import EnvError, SpaceMismatchError
from shoal.rl.env import SpaceChecked, check_spaces, env_name, make_env


@dataclass
class RunnerSpec:
    """What every runner of a group is built from (pickled once per runner start)."""

    env: object
    env_config: dict = field(default_factory=dict)
    num_envs: int = 1
    module_factory: object = None          # (observation_space, action_space) -> torch module
    fragment_length: int = 128
    seed: int | None = None
    next_obs: bool = False                 # off-policy batches carry the next observations
    bootstrap_truncated: bool = True       # on-policy batches carry values of truncated final obs


class EnvRunner:
    """Steps ``spec.num_envs`` copies of the environment (a SyncVectorEnv) with the policy.

    ``own_process``: the runner is an actor, so it may set its process's
    torch threads to one (a runner in the caller's process leaves them).
    """

    def __init__(self, spec: RunnerSpec, index: int = 0, seed: int | None = None,
                 own_process: bool = True):
        import torch
        if own_process:
            torch.set_num_threads(1)   # a small MLP on one core; more threads only contend
        self.spec, self.index = spec, index
        self.name = env_name(spec.env)
        if seed is not None:
            torch.manual_seed(seed)
        fns = [self._env_fn() for _ in range(spec.num_envs)]
        self.envs = gym.vector.SyncVectorEnv(fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
        self.obs_space = self.envs.single_observation_space
        self.act_space = self.envs.single_action_space
        check_spaces(self.obs_space, self.act_space, self.name)
        self.module = spec.module_factory(self.obs_space, self.act_space)
        self.module.eval()
        self.weights_version = -1
        self.seed = seed
        self.obs = None
        self.ep_return = np.zeros(spec.num_envs, np.float64)
        self.ep_len = np.zeros(spec.num_envs, np.int64)
        self.bufs: dict = {}

    def _env_fn(self):
        spec, name = self.spec, self.name

        def fn():
            return SpaceChecked(make_env(spec.env, spec.env_config), name)
        return fn

    # ------------------------------------------------------------------ calls
    def pid(self) -> int:
        """This runner's process id."""
        return os.getpid()

    def set_weights(self, weights: dict | None, version: int) -> None:
        """Load ``weights`` (a NumPy state dict) unless this version is already loaded."""
        if weights is not None and version != self.weights_version:
            from shoal.rl.models import load_numpy_state
            load_numpy_state(self.module, weights)
            self.weights_version = version

    def _reset(self):
        try:
            # seeded once: later resets continue the environments' own streams
            seed, self.seed = self.seed, None
            self.obs, _ = self.envs.reset(seed=seed)
        except SpaceMismatchError:
            raise
        except Exception as e:  # noqa: BLE001 - any error of user code in the env
            raise EnvError(f"environment {self.name} raised {e!r} in reset() in env runner "
                           f"{self.index}; the runner is replaced and its episodes discarded") from e
        self.ep_return[:] = 0
        self.ep_len[:] = 0

    def _step(self, actions):
        try:
            return self.envs.step(actions)
        except SpaceMismatchError:
            raise
        except Exception as e:  # noqa: BLE001 - any error of user code in the env
            raise EnvError(f"environment {self.name} raised {e!r} in step() in env runner "
                           f"{self.index}; the runner is replaced and its episodes discarded") from e

    def _buffer(self, key, shape, dtype):
        b = self.bufs.get(key)
        if b is None or b.shape != shape or b.dtype != dtype:
            b = self.bufs[key] = np.empty(shape, dtype)
        return b

    def sample(self, weights: dict | None = None, version: int = 0, explore: bool = True,
               num_steps: int | None = None, **act_kwargs) -> dict:
        """Step every environment ``num_steps`` times (default: the fragment length).

        Returns a dict of arrays shaped (T, N, ...): ``obs``, ``actions``,
        ``rewards``, ``terminateds``, ``truncateds``, the policy's extra
        outputs (``logp``, ``vf_preds``), ``trunc_values`` or ``next_obs``;
        ``last_obs`` and ``last_values`` (N, ...); ``episode_returns`` and
        ``episode_lengths`` of the episodes that ended; ``env_steps``.
        """
        self.set_weights(weights, version)
        if self.obs is None:
            self._reset()
        T, N = num_steps or self.spec.fragment_length, self.spec.num_envs
        module = self.module
        obs_buf = self._buffer("obs", (T,) + self.obs.shape, self.obs.dtype)
        rewards = self._buffer("rewards", (T, N), np.float32)
        terms = self._buffer("terminateds", (T, N), np.bool_)
        truncs = self._buffer("truncateds", (T, N), np.bool_)
        bootstrap = self.spec.bootstrap_truncated and hasattr(module, "value")
        tvals = self._buffer("trunc_values", (T, N), np.float32) if bootstrap else None
        if tvals is not None:
            tvals[:] = 0
        nxt = self._buffer("next_obs", obs_buf.shape, obs_buf.dtype) if self.spec.next_obs else None
        ep_returns, ep_lengths = [], []
        out_bufs = None
        import torch
        for t in range(T):
            obs_buf[t] = self.obs
            out = module.act(self.obs, explore, **act_kwargs)
            if out_bufs is None:
                out_bufs = {k: self._buffer("out_" + k, (T,) + v.shape, v.dtype) for k, v in out.items()}
            for k, v in out.items():
                out_bufs[k][t] = v
            next_obs, r, term, trunc, info = self._step(out["actions"])
            rewards[t] = r
            terms[t] = term
            truncs[t] = trunc
            self.ep_return += r
            self.ep_len += 1
            done = term | trunc
            if nxt is not None:
                nxt[t] = next_obs
            if done.any():
                idx = np.flatnonzero(done)
                ep_returns.extend(self.ep_return[idx].tolist())
                ep_lengths.extend(self.ep_len[idx].tolist())
                self.ep_return[idx] = 0
                self.ep_len[idx] = 0
                final = info["final_obs"]
                if nxt is not None:
                    for i in idx:
                        nxt[t, i] = final[i]
                tb = np.flatnonzero(trunc & ~term) if tvals is not None else ()
                if len(tb):
                    with torch.inference_mode():
                        fo = np.stack([final[i] for i in tb])
                        tvals[t, tb] = module.value(torch.as_tensor(fo)).numpy()
            self.obs = next_obs
        batch = {"obs": obs_buf, "rewards": rewards, "terminateds": terms, "truncateds": truncs}
        batch.update(out_bufs)
        if tvals is not None:
            batch["trunc_values"] = tvals
        if nxt is not None:
            batch["next_obs"] = nxt
        if hasattr(module, "value"):
            with torch.inference_mode():
                batch["last_values"] = module.value(torch.as_tensor(self.obs)).numpy()
        batch["last_obs"] = self.obs
        batch["episode_returns"] = np.asarray(ep_returns, np.float64)
        batch["episode_lengths"] = np.asarray(ep_lengths, np.int64)
        batch["env_steps"] = T * N
        return batch

    def sample_episodes(self, weights: dict | None = None, version: int = 0,
                        num_episodes: int = 10, explore: bool = False,
                        max_steps: int = 1_000_000) -> dict:
        """Run fresh episodes until ``num_episodes`` ended (for evaluation).

        Returns ``episode_returns`` and ``episode_lengths`` (the first
        ``num_episodes`` to end) and ``env_steps``. The training episodes in
        progress are left as they were only when these envs are not shared:
        evaluation runners are separate from training runners.
        """
        self.set_weights(weights, version)
        self._reset()
        returns, lengths, steps = [], [], 0
        while len(returns) < num_episodes and steps < max_steps:
            out = self.module.act(self.obs, explore)
            self.obs, r, term, trunc, _ = self._step(out["actions"])
            steps += len(r)
            self.ep_return += r
            self.ep_len += 1
            done = term | trunc
            if done.any():
                idx = np.flatnonzero(done)
                returns.extend(self.ep_return[idx].tolist())
                lengths.extend(self.ep_len[idx].tolist())
                self.ep_return[idx] = 0
                self.ep_len[idx] = 0
        self.obs = None   # the next training sample starts fresh episodes
        return {"episode_returns": np.asarray(returns[:num_episodes], np.float64),
                "episode_lengths": np.asarray(lengths[:num_episodes], np.int64),
                "env_steps": steps}

    def close(self) -> None:
        """Close the environments."""
        self.envs.close()
