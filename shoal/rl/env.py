"""Environments: what a user may name, how runners build them, and the checks at the boundary.

An environment is a registered Gymnasium id (``"CartPole-v1"``), a
``gymnasium.Env`` subclass, or a callable returning an Env (called with the
``env_config`` dict when it takes an argument). Every sub-environment is
wrapped in ``SpaceChecked``: an observation whose shape or dtype differs
from the observation space raises SpaceMismatchError naming the space and
the value, where a torch shape error deep inside a loss would otherwise
follow.
"""
from __future__ import annotations

import inspect

import gymnasium as gym
import numpy as np

from shoal.exceptions import InvalidInputError, SpaceMismatchError


def env_name(env) -> str:
    """A short readable name of an environment spec (for messages and logs)."""
    if isinstance(env, str):
        return env
    if isinstance(env, gym.envs.registration.EnvSpec):
        return env.id
    return getattr(env, "__qualname__", None) or type(env).__name__


def make_env(env, env_config: dict | None = None) -> gym.Env:
    """Build one environment from an id, an Env subclass or a factory.

    Raises:
        InvalidInputError: the id is not registered, or the object built is not a gymnasium.Env.
    """
    env_config = dict(env_config or {})
    if isinstance(env, (str, gym.envs.registration.EnvSpec)):
        try:
            e = gym.make(env, **env_config)
        except (gym.error.Error, TypeError) as err:
            raise InvalidInputError(
                f"environment {env!r} could not be made with env_config={env_config!r} ({err}); "
                f"pass a registered Gymnasium id (gymnasium.register(...)) and the keyword "
                f"arguments of its constructor, a gymnasium.Env subclass or a function returning an Env"
            ) from err
    elif inspect.isclass(env):
        if not issubclass(env, gym.Env):
            raise InvalidInputError(f"environment class {env.__qualname__} is not a gymnasium.Env "
                                    f"subclass; derive it from gymnasium.Env")
        e = env(env_config) if _takes_argument(env.__init__, skip_self=True) else env()
    elif callable(env):
        e = env(env_config) if _takes_argument(env) else env()
    else:
        raise InvalidInputError(f"environment must be a Gymnasium id, a gymnasium.Env subclass or "
                                f"a function returning an Env, got {type(env).__name__}")
    if not isinstance(e, gym.Env):
        raise InvalidInputError(f"environment {env_name(env)} built a {type(e).__name__}, not a "
                                f"gymnasium.Env; return an Env from the factory")
    return e


def portable(env):
    """What runner processes should build: a registered id becomes its EnvSpec.

    An id registered in this process only (``gymnasium.register`` in a
    script or notebook) is unknown in a runner's process; its EnvSpec
    carries the entry point, so the runner builds the same environment.
    """
    if isinstance(env, str):
        try:
            return gym.spec(env)
        except gym.error.Error:
            return env      # make_env names it when it fails
    return env


def _takes_argument(fn, skip_self: bool = False) -> bool:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    if skip_self and params:
        params = params[1:]
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
               for p in params)


def check_spaces(observation_space, action_space, name: str) -> None:
    """Reject spaces shoal.rl's policies cannot handle, naming the space.

    Observations: Box or Discrete (one-hot encoded). Actions: Discrete or a
    bounded-or-not Box of one dimension.
    """
    if not isinstance(observation_space, (gym.spaces.Box, gym.spaces.Discrete)):
        raise InvalidInputError(f"environment {name}: observation space {observation_space} is not "
                                f"supported; use a Box or Discrete space (flatten Dict/Tuple spaces "
                                f"with gymnasium.wrappers.FlattenObservation)")
    if isinstance(action_space, gym.spaces.Box):
        if len(action_space.shape) != 1:
            raise InvalidInputError(f"environment {name}: action space {action_space} must be a "
                                    f"one-dimensional Box")
    elif not isinstance(action_space, gym.spaces.Discrete):
        raise InvalidInputError(f"environment {name}: action space {action_space} is not supported; "
                                f"use Discrete or a one-dimensional Box")


def describe(value) -> str:
    """``value`` as shape/dtype (arrays) or repr (short values), for error messages."""
    if isinstance(value, np.ndarray):
        text = f"array of shape {value.shape} and dtype {value.dtype}"
        if value.size <= 8:
            text += f" ({np.array2string(value.ravel(), precision=4)})"
        return text
    r = repr(value)
    return f"{type(value).__name__} {r if len(r) < 80 else r[:77] + '...'}"


def check_observation(space, obs, where: str, batched: bool = False) -> np.ndarray:
    """``obs`` as an array of the space's shape and dtype, or SpaceMismatchError.

    Args:
        space: the observation space (Box or Discrete).
        obs: one observation, or a batch when ``batched``.
        where: what produced ``obs`` (named in the error).
    """
    arr = np.asarray(obs)
    shape = tuple(space.shape)
    got = arr.shape[1:] if batched else arr.shape
    ok_dtype = (arr.dtype == space.dtype or np.can_cast(arr.dtype, space.dtype, "same_kind")
                if arr.dtype.kind in "biuf" else False)
    if got != shape or not ok_dtype or (batched and arr.ndim == 0):
        raise SpaceMismatchError(
            f"{where}: observation {describe(obs)} does not fit observation space {space} "
            f"(expected {'a batch of ' if batched else ''}shape {shape}, dtype {space.dtype}); "
            f"make the environment return observations of its declared space", space, obs)
    return arr


def check_action(space, action, where: str) -> None:
    """Raise SpaceMismatchError when one ``action`` is not in the action space's shape/dtype."""
    arr = np.asarray(action)
    if isinstance(space, gym.spaces.Discrete):
        ok = arr.shape == () and arr.dtype.kind in "iu" and space.contains(int(arr))
    else:
        ok = arr.shape == tuple(space.shape) and arr.dtype.kind == "f"
    if not ok:
        raise SpaceMismatchError(f"{where}: action {describe(action)} does not fit action space "
                                 f"{space}", space, action)


class SpaceChecked(gym.Wrapper):
    """Checks every observation against the observation space; clips Box actions to bounds.

    The check is a shape and dtype comparison (a microsecond), so it runs on
    every step: a bad observation is reported by the step that made it.
    """

    def __init__(self, env: gym.Env, name: str):
        super().__init__(env)
        self._name = name
        space = env.observation_space
        self._shape, self._dtype = tuple(space.shape), space.dtype
        self._discrete_obs = isinstance(space, gym.spaces.Discrete)
        act = env.action_space
        self._clip = None
        if isinstance(act, gym.spaces.Box):
            low, high = act.low.astype(np.float32), act.high.astype(np.float32)
            if np.isfinite(low).any() or np.isfinite(high).any():
                self._clip = (low, high)

    def _check(self, obs, what: str):
        if self._discrete_obs:
            if np.asarray(obs).shape != () or not self.observation_space.contains(int(obs)):
                raise SpaceMismatchError(f"environment {self._name}: {what} returned observation "
                                         f"{describe(obs)}, not in observation space "
                                         f"{self.observation_space}", self.observation_space, obs)
            return obs
        if (type(obs) is not np.ndarray or obs.shape != self._shape
                or (obs.dtype != self._dtype and not np.can_cast(obs.dtype, self._dtype))):
            raise SpaceMismatchError(
                f"environment {self._name}: {what} returned observation {describe(obs)}, which "
                f"does not fit observation space {self.observation_space} (shape {self._shape}, "
                f"dtype {self._dtype}); return observations of the declared space",
                self.observation_space, obs)
        return obs

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return self._check(obs, "reset()"), info

    def step(self, action):
        if self._clip is not None:
            action = np.clip(action, self._clip[0], self._clip[1])
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self._check(obs, "step()"), reward, terminated, truncated, info
