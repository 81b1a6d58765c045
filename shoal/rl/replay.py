"""Replay buffers for off-policy algorithms: uniform and prioritized (proportional).

Both are NumPy ring buffers of columns allocated on the first ``add``. The
prioritized buffer (Schaul et al. 2016) samples row i with probability
p_i^alpha / sum p^alpha and returns importance weights (N p_i)^-beta,
normalized by their maximum; ``update_priorities`` takes the new |TD errors|.
"""
from __future__ import annotations

import numpy as np


class ReplayBuffer:
    """A uniform ring buffer of ``capacity`` rows."""

    def __init__(self, capacity: int, seed: int | None = None):
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be a positive int, got {capacity!r}")
        self.capacity = capacity
        self.cols: dict = {}
        self.size = 0
        self.pos = 0
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.size

    def add(self, batch: dict) -> np.ndarray:
        """Append the rows of ``batch`` (equal-length arrays); returns the rows' indices."""
        n = len(next(iter(batch.values())))
        if not self.cols:
            self.cols = {k: np.empty((self.capacity,) + v.shape[1:], v.dtype) for k, v in batch.items()}
        idx = (self.pos + np.arange(n)) % self.capacity
        for k, v in batch.items():
            self.cols[k][idx] = v[-self.capacity:] if n > self.capacity else v
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.capacity, self.size + n)
        return idx

    def sample(self, n: int) -> dict:
        """``n`` rows drawn uniformly with replacement; ``weights`` are all 1, ``indices`` their rows."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        idx = self.rng.integers(0, self.size, n)
        out = {k: v[idx] for k, v in self.cols.items()}
        out["weights"] = np.ones(n, np.float32)
        out["indices"] = idx
        return out

    def update_priorities(self, indices, td_errors) -> None:
        """Uniform replay keeps no priorities."""


class PrioritizedReplayBuffer(ReplayBuffer):
    """Proportional prioritized replay: new rows get the largest priority seen so far."""

    def __init__(self, capacity: int, alpha: float = 0.6, beta: float = 0.4, eps: float = 1e-6,
                 seed: int | None = None):
        super().__init__(capacity, seed)
        self.alpha, self.beta, self.eps = alpha, beta, eps
        self.priorities = np.zeros(capacity, np.float64)
        self.max_priority = 1.0

    def add(self, batch: dict) -> np.ndarray:
        idx = super().add(batch)
        self.priorities[idx] = self.max_priority ** self.alpha
        return idx

    def sample(self, n: int) -> dict:
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        p = self.priorities[:self.size]
        cdf = np.cumsum(p)
        total = cdf[-1]
        idx = np.minimum(np.searchsorted(cdf, self.rng.random(n) * total, side="right"), self.size - 1)
        probs = p[idx] / total
        weights = (self.size * probs) ** (-self.beta)
        out = {k: v[idx] for k, v in self.cols.items()}
        out["weights"] = (weights / weights.max()).astype(np.float32)
        out["indices"] = idx
        return out

    def update_priorities(self, indices, td_errors) -> None:
        """Set the rows' priorities to ``|td_errors| + eps``."""
        pr = np.abs(np.asarray(td_errors, np.float64)) + self.eps
        self.priorities[indices] = pr ** self.alpha
        self.max_priority = max(self.max_priority, float(pr.max()))
