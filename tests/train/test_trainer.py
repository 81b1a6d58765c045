"""Trainer: results, failures, restarts from checkpoints, restore."""
from __future__ import annotations

import math
import os
import signal
import threading
import time

import pytest
import torch
from torch import nn

import shoal
import shoal.train as st
from shoal.exceptions import NonFiniteLossError, RankMismatchError, TrainingFailedError
from shoal.train.data import ShardSampler

from _reference import ddp_reference

EPOCHS = 4
BATCH = 8


def _dataset():
    g = torch.Generator().manual_seed(5)
    X = torch.randn(96, 6, generator=g)
    Y = (X[:, 0] + X[:, 1] > 0).long()
    return torch.utils.data.TensorDataset(X, Y)


def _model():
    torch.manual_seed(11)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))


def train_loop(config):
    ctx = st.get_context()
    model = st.prepare_model(_model())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    start = 0
    ckpt = st.get_checkpoint()
    if ckpt is not None:
        state = ckpt.to_dict()
        (model.module if hasattr(model, "module") else model).load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = state["epoch"] + 1
    loader = st.prepare_data_loader(
        torch.utils.data.DataLoader(_dataset(), batch_size=BATCH, shuffle=True))
    for epoch in range(start, config["epochs"]):
        loader.set_epoch(epoch)
        total = 0.0
        for i, (x, y) in enumerate(loader):
            if (epoch == config.get("die_epoch") and i == 3 and ctx.rank == config.get("die_rank")
                    and not os.path.exists(config["marker"])):
                open(config["marker"], "w").close()
                if config.get("wait_for_kill"):
                    with open(config["marker"] + ".pid", "w") as f:
                        f.write(str(os.getpid()))
                    time.sleep(60)
                os.kill(os.getpid(), signal.SIGKILL)
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        plain = model.module if hasattr(model, "module") else model
        st.report({"epoch": epoch, "loss": total / len(loader), "score": -abs(epoch - 1)},
                  checkpoint=st.Checkpoint.from_dict({"epoch": epoch, "model": plain.state_dict(),
                                                      "opt": opt.state_dict()}))


def _expected_weights():
    """Two ranks' DDP = one process on the union of their shards, step by step."""
    return ddp_reference(_model(), _dataset(), 2, EPOCHS, BATCH)


def _trainer(tmp_path, name, max_failures=0, **config):
    return st.Trainer(train_loop, num_workers=2, config=dict(epochs=EPOCHS, **config),
                      run_config=st.RunConfig(name=name, storage_path=str(tmp_path),
                                              checkpoint_config=st.CheckpointConfig(
                                                  num_to_keep=2, score_attribute="score"),
                                              verbose=0),
                      failure_config=st.FailureConfig(max_failures=max_failures))


def _assert_same_weights(state, expected):
    for k in expected:
        torch.testing.assert_close(state[k], expected[k], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_fit_returns_history_checkpoints_and_results_dir(cluster, tmp_path):
    result = _trainer(tmp_path, "plain").fit()
    assert list(result.metrics_dataframe["epoch"]) == list(range(EPOCHS))
    assert result.metrics["epoch"] == EPOCHS - 1
    assert result.checkpoint.to_dict()["epoch"] == EPOCHS - 1
    kept = sorted(n for n in os.listdir(result.path) if n.startswith("checkpoint_"))
    # best 2 by score (epochs 1, then 0 or 2) plus the latest
    assert len(kept) == 3 and "checkpoint_000001" in kept and "checkpoint_000003" in kept
    assert result.get_best_checkpoint("score").to_dict()["epoch"] == 1
    assert os.path.exists(os.path.join(result.path, "progress.csv"))
    assert os.path.exists(os.path.join(result.path, "result.json"))
    _assert_same_weights(result.checkpoint.to_dict()["model"], _expected_weights())


@pytest.mark.slow
def test_worker_killed_mid_epoch_restarts_from_checkpoint_and_matches_uninterrupted(
        cluster, tmp_path):
    result = _trainer(tmp_path, "killed", max_failures=2, die_epoch=2, die_rank=1,
                      marker=str(tmp_path / "died")).fit()
    assert os.path.exists(tmp_path / "died")
    assert result.attempts == 2
    assert list(result.metrics_dataframe["epoch"]) == list(range(EPOCHS))
    _assert_same_weights(result.checkpoint.to_dict()["model"], _expected_weights())


@pytest.mark.slow
def test_worker_killed_from_outside_is_restarted(cluster, tmp_path):
    marker = str(tmp_path / "outside_marker")

    def killer():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not os.path.exists(marker + ".pid"):
            time.sleep(0.05)
        time.sleep(0.1)
        with open(marker + ".pid") as f:
            os.kill(int(f.read()), signal.SIGKILL)
    t = threading.Thread(target=killer, daemon=True)
    t.start()
    result = _trainer(tmp_path, "outside", max_failures=1, die_epoch=1, die_rank=0,
                      marker=marker, wait_for_kill=True).fit()
    t.join(5)
    assert result.attempts == 2
    assert result.metrics["epoch"] == EPOCHS - 1


@pytest.mark.slow
def test_failures_beyond_max_failures_raise_and_restore_resumes(cluster, tmp_path):
    trainer = _trainer(tmp_path, "driver", max_failures=0, die_epoch=2, die_rank=0,
                       marker=str(tmp_path / "d"))
    with pytest.raises(TrainingFailedError, match="max_failures=0"):
        trainer.fit()
    path = str(tmp_path / "driver")
    assert st.Trainer.can_restore(path)
    result = st.Trainer.restore(path).fit()
    assert list(result.metrics_dataframe["epoch"]) == list(range(EPOCHS))
    _assert_same_weights(result.checkpoint.to_dict()["model"], _expected_weights())


def _raises(config):
    if st.get_context().rank == 1:
        raise ValueError("bad batch in shard 1")


@pytest.mark.slow
def test_train_loop_error_surfaces_remote_traceback(cluster, tmp_path):
    trainer = st.Trainer(_raises, num_workers=2,
                         run_config=st.RunConfig(name="err", storage_path=str(tmp_path), verbose=0))
    with pytest.raises(TrainingFailedError) as info:
        trainer.fit()
    msg = str(info.value)
    assert "bad batch in shard 1" in msg and "Traceback" in msg and "_raises" in msg
    assert isinstance(info.value.result.error, ValueError)


def _unequal_loaders(config):
    n = 32 if st.get_context().rank == 0 else 48
    ds = torch.utils.data.TensorDataset(torch.zeros(n, 2))
    loader = st.prepare_data_loader(
        torch.utils.data.DataLoader(ds, batch_size=4,
                                    sampler=ShardSampler(n, 1, 0, shuffle=False)))
    for _ in loader:
        pass


def test_loaders_with_unequal_batch_counts_are_rejected(gang):
    with pytest.raises(RankMismatchError, match="different numbers of batches"):
        gang.run(_unequal_loaders)


def _reports_nan(config):
    st.report({"loss": math.nan})


def test_nan_reported_loss_raises(gang):
    with pytest.raises(NonFiniteLossError, match="loss is nan"):
        gang.run(_reports_nan)


def test_trainer_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_workers"):
        st.Trainer(train_loop, num_workers=0)
    with pytest.raises(TypeError, match="train_loop"):
        st.Trainer("not a function")


def _noop(config):
    st.report({"done": 1})


def test_gang_that_cannot_be_placed_fails_within_collective_timeout(cluster, tmp_path):
    hog = shoal.placement_group([{"CPU": 4}])       # every CPU of the cluster is taken
    shoal.get(hog.ready(), timeout=30)
    try:
        t = st.Trainer(_noop, num_workers=2, collective_timeout=2,
                       run_config=st.RunConfig(storage_path=str(tmp_path), verbose=0))
        with pytest.raises(TrainingFailedError, match="were not all placed within 2"):
            t.fit()
    finally:
        shoal.remove_placement_group(hog)
