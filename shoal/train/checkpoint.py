"""``Checkpoint``: a directory of files, or a dict that becomes one.

Rank 0 persists checkpoints atomically (written to a temporary directory,
then renamed), so a crash never leaves a half-written checkpoint where a
restart would look for one.
"""
from __future__ import annotations

import math
import os
import pickle
import shutil
import tempfile

_DICT_FILE = "checkpoint_dict.pkl"


class Checkpoint:
    """Model and optimizer state to resume from or to deploy.

    Make one with ``Checkpoint.from_dict({...})`` (any picklable values,
    torch tensors included) or ``Checkpoint.from_directory(path)``; read it
    with ``to_dict()`` or ``to_directory(path)``.
    """

    def __init__(self, path: str | None = None, data: dict | None = None):
        if (path is None) == (data is None):
            raise ValueError("a Checkpoint is either a directory (path=) or a dict (data=)")
        self.path = os.fspath(path) if path is not None else None
        self._data = data

    @classmethod
    def from_dict(cls, data: dict) -> Checkpoint:
        """A checkpoint of ``data`` (any picklable values, torch tensors included)."""
        if not isinstance(data, dict):
            raise TypeError(f"Checkpoint.from_dict takes a dict, got {type(data).__name__}")
        return cls(data=dict(data))

    @classmethod
    def from_directory(cls, path) -> Checkpoint:
        """A checkpoint of the files in the existing directory ``path``."""
        path = os.fspath(path)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"checkpoint directory {path!r} does not exist")
        return cls(path=os.path.abspath(path))

    def to_dict(self) -> dict:
        """The checkpoint's dict (for a directory: the dict saved by from_dict)."""
        if self._data is not None:
            return dict(self._data)
        f = os.path.join(self.path, _DICT_FILE)
        if not os.path.exists(f):
            raise ValueError(f"checkpoint {self.path!r} holds files, not a dict; read it with "
                             "to_directory() or from its path")
        with open(f, "rb") as fh:
            return pickle.load(fh)

    def to_directory(self, path=None) -> str:
        """Write the checkpoint's files into ``path`` (a new temporary directory if None)."""
        path = os.fspath(path) if path is not None else tempfile.mkdtemp(prefix="shoal_ckpt_")
        os.makedirs(path, exist_ok=True)
        if self._data is not None:
            with open(os.path.join(path, _DICT_FILE), "wb") as fh:
                pickle.dump(self._data, fh, protocol=5)
        elif os.path.abspath(path) != self.path:
            shutil.copytree(self.path, path, dirs_exist_ok=True)
        return path

    def __repr__(self) -> str:
        return f"Checkpoint(path={self.path!r})" if self.path else "Checkpoint(<dict>)"

    def __eq__(self, other):
        return isinstance(other, Checkpoint) and other.path == self.path and self.path is not None

    def __hash__(self):
        return hash(self.path)


def persist(checkpoint: Checkpoint, run_dir: str, index: int) -> Checkpoint:
    """Write ``checkpoint`` to ``run_dir/checkpoint_<index>`` atomically; returns it there."""
    if not isinstance(checkpoint, Checkpoint):
        raise TypeError(f"report(checkpoint=...) takes a shoal.train.Checkpoint, got "
                        f"{type(checkpoint).__name__}; use Checkpoint.from_dict(...)")
    final = os.path.join(run_dir, f"checkpoint_{index:06d}")
    tmp = tempfile.mkdtemp(prefix=".tmp_checkpoint_", dir=run_dir)
    try:
        checkpoint.to_directory(tmp)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Checkpoint(path=final)


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
