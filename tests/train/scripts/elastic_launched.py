"""An elastic script for `shoal launch -n MIN:MAX`: trains until the world sizes it has seen
end with the sequence given as argv[2] (e.g. "3,2,3"), logging each step and each sync (with
the number of hosts the group spans)."""
import hashlib
import json
import os
import sys
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import shoal.train as st
from shoal.train import elastic

out, until = sys.argv[1], [int(v) for v in sys.argv[2].split(",")]
N, BATCH = 96, 4
torch.manual_seed(0)
ds = TensorDataset(torch.randn(N, 8), torch.randn(N, 1), torch.arange(N))
model = st.prepare_model(nn.Linear(8, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
loader = st.prepare_data_loader(DataLoader(ds, batch_size=BATCH, shuffle=True))
state = elastic.State(model=model, optimizer=optimizer, loader=loader, epoch=0, worlds=[],
                      resets=0)
state.register_reset_callbacks([lambda: setattr(state, "resets", state.resets + 1)])
pid = os.getpid()


def digest():
    h = hashlib.sha256()
    for t in list(model.state_dict().values()) + [
            s["momentum_buffer"] for s in optimizer.state_dict()["state"].values()]:
        h.update(t.detach().numpy().tobytes())
    return h.hexdigest()


def hosts():
    """How many hosts the gang's group spans (TCP between them)."""
    topology = getattr(st.get_communicator(), "topology", None)
    return len(topology.hosts) if topology is not None else 1


@elastic.run
def train(state):
    ctx = st.get_context()
    if not state.worlds or state.worlds[-1] != ctx.world_size:
        state.worlds = state.worlds + [ctx.world_size]
    with open(f"{out}/sync-{pid}", "a") as f:
        f.write(json.dumps([state.commits, ctx.world_size, ctx.rank, digest(), hosts()]) + "\n")
    for state.epoch in range(state.epoch, 500):
        loader.set_epoch(state.epoch)
        for x, y, idx in loader:
            ctx = st.get_context()      # logged before the step: see _committed_rows
            with open(f"{out}/steps-{pid}", "a") as f:
                f.write(json.dumps([state.epoch, ctx.rank, ctx.world_size, idx.tolist(),
                                    state.commits + 1, ctx.attempt]) + "\n")
            optimizer.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
            state.commit()
            time.sleep(0.02)
        if state.worlds[-len(until):] == until:
            break


train(state)
print(f"done worlds={state.worlds} resets={state.resets}", flush=True)
