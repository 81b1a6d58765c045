"""Small environments for shoal.rl's tests (imported by the runner processes too)."""
from __future__ import annotations

import os
import signal

import gymnasium as gym
import numpy as np


class Corridor(gym.Env):
    """Walk right to the end of a corridor: reward 1 at the end, episodes of at most 20 steps."""

    def __init__(self, config=None):
        config = config or {}
        self.length = config.get("length", 5)
        self.observation_space = gym.spaces.Box(0.0, 1.0, (2,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.pos = 0
        self.t = 0

    def _obs(self):
        return np.array([self.pos / self.length, 1.0], np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos, self.t = 0, 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        self.pos = max(0, self.pos + (1 if action == 1 else -1))
        done = self.pos >= self.length
        return self._obs(), float(done), done, self.t >= 20 and not done, {}


class BadShape(Corridor):
    """Returns an observation of the wrong shape on its third step."""

    def step(self, action):
        obs, r, term, trunc, info = super().step(action)
        if self.t == 3:
            obs = np.zeros(3, np.float32)
        return obs, r, term, trunc, info


class Faulty(Corridor):
    """Fails once across all runners at ``fail_at`` steps: raises, or kills its own process.

    ``flag`` is a file path: the first env to create it fails, so only one
    failure happens whatever the number of runners and restarts.
    """

    def __init__(self, config):
        super().__init__(config)
        self.flag, self.mode, self.fail_at = config["flag"], config["mode"], config.get("fail_at", 7)
        self.steps = 0

    def step(self, action):
        self.steps += 1
        if self.steps == self.fail_at and self.mode in ("raise", "kill", "always"):
            try:
                fd = os.open(self.flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                os.close(fd)
                first = True
            except FileExistsError:
                first = False
            if first or self.mode == "always":
                if self.mode == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                raise RuntimeError("the simulator crashed")
        return super().step(action)


gym.register("ShoalTestCorridor-v0", entry_point=Corridor, max_episode_steps=50,
             kwargs={"config": {"length": 2}})
