"""``Checkpoint``: a directory of files, or a dict that becomes one.

The one checkpoint type of every library (shoal.train, shoal.tune, ...): a
Trainer's checkpoint is a tuning trial's and back. It needs nothing beyond the
standard library, so libraries without torch use it too.
"""
from __future__ import annotations

import os
import pickle
import shutil
import tempfile

__all__ = ["Checkpoint", "persist"]

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

    def holds_dict(self) -> bool:
        """Whether ``to_dict()`` can read it (made from a dict, or a directory one was saved to)."""
        return self._data is not None or os.path.exists(os.path.join(self.path, _DICT_FILE))

    def __repr__(self) -> str:
        return f"Checkpoint(path={self.path!r})" if self.path else "Checkpoint(<dict>)"

    def __eq__(self, other):
        return isinstance(other, Checkpoint) and other.path == self.path and self.path is not None

    def __hash__(self):
        return hash(self.path)


def persist(checkpoint: Checkpoint, run_dir: str, index: int) -> Checkpoint:
    """Write ``checkpoint`` to ``run_dir/checkpoint_<index>`` atomically (a temporary
    directory, then a rename, so a crash never leaves half a checkpoint); returns it there."""
    if not isinstance(checkpoint, Checkpoint):
        raise TypeError(f"report(checkpoint=...) takes a Checkpoint, got "
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
