"""Checkpoints of trials: shoal's one ``Checkpoint`` type (shoal.core.checkpoint), so a
Trainer's checkpoint is a trial's and back, without importing shoal.train (torch).
"""
from __future__ import annotations

import os

from shoal.core import checkpoint as _core

Checkpoint = _core.Checkpoint

__all__ = ["Checkpoint", "persist"]


def persist(checkpoint, trial_dir: str, iteration: int) -> str:
    """Write ``checkpoint`` to ``trial_dir/checkpoint_<iteration>`` atomically; returns
    that path (or the checkpoint's own, when a Trainer already wrote it in the trial's
    directory)."""
    src = getattr(checkpoint, "path", None)
    if src and os.path.abspath(src).startswith(os.path.abspath(trial_dir) + os.sep):
        return os.path.abspath(src)
    return _core.persist(checkpoint, trial_dir, iteration).path
