"""hvd.elastic on shoal: TorchState, ElasticSampler, run with Horovod's reset semantics."""
from __future__ import annotations

import glob
import json
import os
import signal
import threading
import time

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import shoal
import shoal.train as st
from tests._elastic_logs import assert_each_epoch_used_every_sample_once

N, BATCH = 64, 4


@pytest.fixture(scope="module")
def cluster():
    if shoal.is_initialized():
        shoal.shutdown()
    shoal.init(num_cpus=3)
    yield
    shoal.shutdown()


def _hvd_loop(config):
    import shoal.horovod as hvd
    out = config["out"]
    hvd.init()
    torch.manual_seed(0)
    ds = TensorDataset(torch.randn(N, 8), torch.randn(N, 1), torch.arange(N))
    model = nn.Linear(8, 1)
    base_lr = 0.01
    opt = torch.optim.SGD(model.parameters(), lr=base_lr * hvd.size(), momentum=0.9)
    opt = hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters())
    sampler = hvd.elastic.ElasticSampler(ds, shuffle=True)
    loader = DataLoader(ds, batch_size=BATCH, sampler=sampler)
    state = hvd.elastic.TorchState(model=model, optimizer=opt, train_sampler=sampler,
                                   epoch=0, resets=0, sizes=[])
    pid = os.getpid()

    def on_reset():                     # Horovod's pattern: rescale the learning rate
        for g in opt.param_groups:
            g["lr"] = base_lr * hvd.size()
        state.resets += 1
        state.sizes = state.sizes + [hvd.size()]
        with open(f"{out}/reset-{pid}", "a") as f:
            f.write(json.dumps([hvd.size(), hvd.rank(), opt.param_groups[0]["lr"]]) + "\n")
    state.register_reset_callbacks([on_reset])

    @hvd.elastic.run
    def train(state):
        for state.epoch in range(state.epoch, 300):
            for b, (x, y, idx) in enumerate(loader):
                # logged before the step, with its number and the gang's generation: a step
                # cut short by the dead rank is done again by the next generation
                with open(f"{out}/steps-{pid}", "a") as f:
                    f.write(json.dumps([state.epoch, hvd.rank(), hvd.size(), idx.tolist(),
                                        state.commits + 1, st.get_context().attempt]) + "\n")
                opt.zero_grad()
                nn.functional.mse_loss(model(x), y).backward()
                opt.step()
                sampler.record_batch(b, BATCH)
                state.commit()
                time.sleep(0.03)
            sampler.set_epoch(state.epoch + 1)
            if 1 in state.sizes and state.sizes[-1] == 2 and state.sizes.index(1) < len(state.sizes) - 1:
                break
    train(state)


def _kill_rank_one(out, stop):
    while not stop.is_set():
        for f in glob.glob(f"{out}/steps-*"):
            lines = open(f).read().splitlines()
            if len(lines) >= 6:
                last = json.loads(lines[-1])
                if last[1] == 1 and last[2] == 2:
                    os.kill(int(f.rsplit("-", 1)[1]), signal.SIGKILL)
                    return
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_elastic_run_resets_horovod_and_keeps_state_across_a_dead_rank(cluster, tmp_path):
    out = str(tmp_path)
    stop = threading.Event()
    killer = threading.Thread(target=_kill_rank_one, args=(out, stop), daemon=True)
    killer.start()
    try:
        result = st.Trainer(_hvd_loop, num_workers=(1, 2), config={"out": out},
                            collective_timeout=60, elastic_config=st.ElasticConfig(settle_s=30),
                            run_config=st.RunConfig(storage_path=out, verbose=0)).fit()
    finally:
        stop.set()
        killer.join(timeout=5)
    sizes = [c["world_size"] for c in result.membership_changes]
    assert sizes[0] == 2 and 1 in sizes and sizes[-1] == 2, result.membership_changes
    # reset callbacks ran after each change with Horovod re-initialized over the new group
    resets = [json.loads(line) for f in glob.glob(f"{out}/reset-*")
              for line in open(f).read().splitlines()]
    assert [1, 0, 0.01] in resets and any(r[0] == 2 and r[2] == 0.02 for r in resets), resets
    # Horovod's semantics: the callbacks run on the ranks that lived through a change (once
    # each), never at a worker's first start, so a new worker does not run them on joining
    survivors = [c["previous_world_size"] - len(c["left"])
                 for c in result.membership_changes[1:]]
    assert len(resets) == sum(survivors), (resets, result.membership_changes)
    # the ElasticSampler dealt each epoch's samples once over the changing world
    assert_each_epoch_used_every_sample_once(out, N, max_world=2)


def test_hvd_elastic_names():
    import shoal.horovod as hvd
    from shoal.exceptions import CollectiveError, MembershipChangedInterrupt
    assert hvd.elastic.HorovodInternalError is CollectiveError
    assert hvd.elastic.HostsUpdatedInterrupt is MembershipChangedInterrupt
    model = nn.Linear(2, 1)
    state = hvd.elastic.TorchState(model=model, optimizer=torch.optim.SGD(model.parameters(), 0.1),
                                   batch=3)
    state.batch = 7
    state.commit()
    state.batch = 9
    state.restore()
    assert state.batch == 7
    obj = hvd.elastic.ObjectState(bcast_object=None, get_rank=None, epoch=2)
    assert obj.epoch == 2
