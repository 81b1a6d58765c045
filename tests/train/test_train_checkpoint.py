"""Checkpoints: dict and directory forms, atomic persistence, keeping the best N."""
from __future__ import annotations

import os

import pytest
import torch

from shoal.train import Checkpoint, CheckpointConfig
from shoal.train.checkpoint import CheckpointManager, latest_in, persist


def test_dict_round_trips_through_a_directory(tmp_path):
    ckpt = Checkpoint.from_dict({"w": torch.arange(4.0), "epoch": 3})
    path = ckpt.to_directory(tmp_path / "c")
    back = Checkpoint.from_directory(path).to_dict()
    assert back["epoch"] == 3 and torch.equal(back["w"], torch.arange(4.0))


def test_directory_checkpoint_copies_its_files(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "model.bin").write_bytes(b"abc")
    out = Checkpoint.from_directory(src).to_directory(tmp_path / "dst")
    with open(os.path.join(out, "model.bin"), "rb") as f:
        assert f.read() == b"abc"


def test_from_directory_rejects_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Checkpoint.from_directory(tmp_path / "nope")


def test_persist_is_atomic_and_leaves_no_temporary_directory(tmp_path):
    class Boom(Checkpoint):
        def to_directory(self, path=None):
            open(os.path.join(path, "half"), "w").close()
            raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        persist(Boom(data={}), str(tmp_path), 0)
    assert os.listdir(tmp_path) == []
    saved = persist(Checkpoint.from_dict({"a": 1}), str(tmp_path), 1)
    assert latest_in(str(tmp_path)) == saved and saved.to_dict() == {"a": 1}


def test_manager_keeps_best_n_by_score_plus_latest(tmp_path):
    mgr = CheckpointManager(CheckpointConfig(num_to_keep=2, score_attribute="acc",
                                             score_order="max"))
    for i, acc in enumerate([0.5, 0.9, 0.7, 0.6, 0.1]):
        mgr.register(persist(Checkpoint.from_dict({"i": i}), str(tmp_path), i), {"acc": acc})
    kept = sorted(os.listdir(tmp_path))
    assert kept == ["checkpoint_000001", "checkpoint_000002", "checkpoint_000004"]
    assert mgr.best()[0][1]["acc"] == 0.9 and mgr.latest.to_dict() == {"i": 4}


def test_manager_keeps_last_n_without_score(tmp_path):
    mgr = CheckpointManager(CheckpointConfig(num_to_keep=2))
    for i in range(4):
        mgr.register(persist(Checkpoint.from_dict({"i": i}), str(tmp_path), i), {})
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_000002", "checkpoint_000003"]


def test_checkpoint_config_validates():
    with pytest.raises(ValueError, match="num_to_keep"):
        CheckpointConfig(num_to_keep=0)
    with pytest.raises(ValueError, match="score_order"):
        CheckpointConfig(score_order="up")
