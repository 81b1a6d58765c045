"""Training on GPUs: devices, moving the model and batches, DDP over CUDA gradients.

The CPU tests check the device choice and batch moving; the GPU tests (skipped
without CUDA) train two workers sharing the machine's GPU (gradients staged
through host memory, since NCCL refuses two ranks on one GPU) and one worker
on its own GPU, and compare with single-process training on the CPU.
"""
from __future__ import annotations

import collections

import pytest
import torch
from torch import nn

import shoal
import shoal.train as st
from shoal.train.context import pick_device
from shoal.train.data import _to_device

from _reference import ddp_reference

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA device here (these run on a GPU machine)")


def test_use_gpu_adds_one_gpu_per_worker():
    t = st.Trainer(lambda: None, num_workers=2, use_gpu=True)
    assert t.resources_per_worker == {"CPU": 1, "GPU": 1}
    t = st.Trainer(lambda: None, resources_per_worker={"CPU": 2, "GPU": 0.5}, use_gpu=True)
    assert t.resources_per_worker == {"CPU": 2, "GPU": 0.5}


@pytest.mark.skipif(CUDA, reason="checks the error of a CPU-only torch")
def test_a_gpu_worker_without_cuda_says_so():
    assert pick_device(0, None).type == "cpu"
    assert pick_device(1, False).type == "cpu"
    with pytest.raises(RuntimeError, match="given a GPU but torch sees no CUDA device"):
        pick_device(0, True)


def test_batches_move_with_their_structure():
    Pair = collections.namedtuple("Pair", "x y")
    batch = {"a": torch.ones(2), "b": [torch.zeros(1), (torch.ones(1), "tag")],
             "p": Pair(torch.ones(3), 4)}
    dev = torch.device("cuda" if CUDA else "cpu")
    moved = _to_device(batch, dev)
    assert moved["a"].device.type == dev.type and moved["b"][1][1] == "tag"
    assert isinstance(moved["p"], Pair) and moved["p"].x.device.type == dev.type
    assert moved["p"].y == 4 and isinstance(moved["b"][1], tuple)


EPOCHS, BATCH = 3, 8


def _dataset():
    g = torch.Generator().manual_seed(3)
    X = torch.randn(64, 6, generator=g)
    return torch.utils.data.TensorDataset(X, (X[:, 0] - X[:, 2] > 0).long())


def _model():
    torch.manual_seed(7)
    return nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 2))


def gpu_loop(config):
    device = st.get_device()
    assert device.type == "cuda", device
    ids = shoal.get_gpu_ids()
    assert ids and torch.cuda.device_count() == len(ids), (ids, torch.cuda.device_count())
    model = st.prepare_model(_model())
    assert all(p.is_cuda for p in model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loader = st.prepare_data_loader(
        torch.utils.data.DataLoader(_dataset(), batch_size=BATCH, shuffle=True))
    for epoch in range(EPOCHS):
        loader.set_epoch(epoch)
        for x, y in loader:
            assert x.is_cuda and y.is_cuda
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        plain = model.module if hasattr(model, "module") else model
        # every rank holds the same weights after every epoch
        flat = torch.cat([p.detach().reshape(-1) for p in plain.parameters()])
        spread = flat.clone()
        st.get_communicator().allreduce(spread, op="max")
        assert torch.equal(spread, flat), "ranks diverged"
        st.report({"epoch": epoch, "loss": loss.item(), "device": str(device),
                   "gpu_ids": ",".join(ids)},
                  checkpoint=st.Checkpoint.from_dict(
                      {"model": {k: v.cpu() for k, v in plain.state_dict().items()}}))


def _expected(world):
    """``world`` ranks' DDP = one CPU process on the union of their shards."""
    return ddp_reference(_model(), _dataset(), world, EPOCHS, BATCH)


@needs_cuda
@pytest.mark.parametrize("world,gpu", [(1, 1), (2, 0.5)])
def test_trainer_on_gpu_matches_cpu_training(cluster, tmp_path, world, gpu):
    assert shoal.cluster_resources().get("GPU", 0) >= 1, "the GPU was not detected"
    result = st.Trainer(gpu_loop, num_workers=world,
                        resources_per_worker={"CPU": 1, "GPU": gpu},
                        run_config=st.RunConfig(name=f"gpu{world}", storage_path=str(tmp_path),
                                                verbose=0)).fit()
    assert result.error is None, result.error
    assert list(result.metrics_dataframe["device"]) == ["cuda:0"] * EPOCHS
    state = result.checkpoint.to_dict()["model"]
    for k, want in _expected(world).items():
        torch.testing.assert_close(state[k], want, rtol=1e-3, atol=1e-4)


@needs_cuda
@pytest.mark.slow
def test_launched_script_trains_on_the_gpu_when_asked(tmp_path):
    import os
    import re
    import subprocess
    import sys
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(here))
    env = dict(os.environ, PYTHONPATH=root, SHOAL_USE_GPU="1")
    env.pop("SHOAL_SECRET", None)
    r = subprocess.run([sys.executable, "-m", "shoal.launch", "-n", "2", "--max-restarts", "1",
                        "--run-dir", str(tmp_path), os.path.join(here, "scripts", "launched_train.py"),
                        "4", "2"], capture_output=True, text=True, timeout=120, env=env, cwd=root,
                       check=False)
    assert r.returncode == 0, r.stderr
    assert "[0] device cuda:0" in r.stdout and "resumed at epoch 3" in r.stdout
    got = [float(v) for v in re.search(r"final weight (.*)", r.stdout).group(1).split()]
    from test_launch import _uninterrupted_weight
    assert got == pytest.approx(_uninterrupted_weight(4), abs=1e-4)
