"""Elastic Horovod's usual script, for `shoal launch -np N --host-discovery-script ...`
(horovodrun's elastic form): trains until the world sizes it has seen end with argv[2]
("2,3,2"), logging each batch (before the step) and each sync."""
import hashlib
import json
import os
import sys
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import shoal.horovod as hvd
import shoal.train as st

out, until = sys.argv[1], [int(v) for v in sys.argv[2].split(",")]
N, BATCH, BASE_LR = 96, 4, 0.01
hvd.init()
torch.manual_seed(0)
ds = TensorDataset(torch.randn(N, 8), torch.randn(N, 1), torch.arange(N))
model = nn.Linear(8, 1)
opt = torch.optim.SGD(model.parameters(), lr=BASE_LR * hvd.size(), momentum=0.9)
opt = hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters())
sampler = hvd.elastic.ElasticSampler(ds, shuffle=True)
loader = DataLoader(ds, batch_size=BATCH, sampler=sampler)
state = hvd.elastic.TorchState(model=model, optimizer=opt, train_sampler=sampler, epoch=0,
                               worlds=[])
pid = os.getpid()


def on_reset():                     # Horovod's pattern: rescale the learning rate
    for g in opt.param_groups:
        g["lr"] = BASE_LR * hvd.size()


state.register_reset_callbacks([on_reset])


def digest():
    h = hashlib.sha256()
    for t in list(model.state_dict().values()) + [
            s["momentum_buffer"] for s in opt.state_dict()["state"].values()]:
        h.update(t.detach().numpy().tobytes())
    return h.hexdigest()


@hvd.elastic.run
def train(state):
    if not state.worlds or state.worlds[-1] != hvd.size():
        state.worlds = state.worlds + [hvd.size()]
    with open(f"{out}/sync-{pid}", "a") as f:
        f.write(json.dumps([state.commits, hvd.size(), hvd.rank(), digest()]) + "\n")
    for state.epoch in range(state.epoch, 500):
        for b, (x, y, idx) in enumerate(loader):
            with open(f"{out}/steps-{pid}", "a") as f:
                f.write(json.dumps([state.epoch, hvd.rank(), hvd.size(), idx.tolist(),
                                    state.commits + 1, st.get_context().attempt]) + "\n")
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            sampler.record_batch(b, BATCH)
            state.commit()
            time.sleep(0.02)
        sampler.set_epoch(state.epoch + 1)
        if state.worlds[-len(until):] == until:
            break


train(state)
print(f"done worlds={state.worlds} lr={opt.param_groups[0]['lr']:g}", flush=True)
