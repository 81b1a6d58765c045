"""Checkpoints of a training run: shoal's ``Checkpoint`` (shoal.core.checkpoint), the
newest complete one in a run directory, and the kept set (``CheckpointManager``).

Rank 0 persists checkpoints atomically (written to a temporary directory,
then renamed), so a crash never leaves a half-written checkpoint where a
restart would look for one.
"""
from __future__ import annotations

import math
import os
import shutil

from shoal.core.checkpoint import Checkpoint, persist

__all__ = ["Checkpoint", "CheckpointManager", "latest_in", "persist"]


def latest_in(run_dir: str) -> Checkpoint | None:
    """The newest complete checkpoint directory under ``run_dir``, or None."""
    if not os.path.isdir(run_dir):
        return None
    names = sorted(n for n in os.listdir(run_dir) if n.startswith("checkpoint_"))
    return Checkpoint(path=os.path.join(run_dir, names[-1])) if names else None


class CheckpointManager:
    """Tracks a run's checkpoints and deletes the ones its CheckpointConfig drops."""

    def __init__(self, config):
        self.config = config
        self.entries: list[tuple[Checkpoint, dict]] = []

    def register(self, checkpoint: Checkpoint, metrics: dict) -> None:
        self.entries = [e for e in self.entries if e[0].path != checkpoint.path]
        self.entries.append((checkpoint, dict(metrics)))
        self._prune()

    @property
    def latest(self) -> Checkpoint | None:
        return self.entries[-1][0] if self.entries else None

    def _score(self, metrics: dict) -> float:
        attr = self.config.score_attribute
        v = metrics.get(attr)
        if not isinstance(v, (int, float)) or math.isnan(v):
            return -math.inf
        return float(v) if self.config.score_order == "max" else -float(v)

    def best(self) -> list[tuple[Checkpoint, dict]]:
        """Kept checkpoints, best first (most recent first without a score)."""
        if self.config.score_attribute is None:
            return list(reversed(self.entries))
        return sorted(self.entries, key=lambda e: self._score(e[1]), reverse=True)

    def _prune(self) -> None:
        n = self.config.num_to_keep
        if n is None or len(self.entries) <= n:
            return
        keep = {id(e) for e in self.best()[:n]} | {id(self.entries[-1])}
        for e in [e for e in self.entries if id(e) not in keep]:
            shutil.rmtree(e[0].path, ignore_errors=True)
        self.entries = [e for e in self.entries if id(e) in keep]
