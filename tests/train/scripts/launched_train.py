"""A shoal.train script run by `shoal launch`: resumes from its checkpoint after a restart."""
import os
import signal
import sys

import torch
from torch import nn

import shoal.train as st

epochs, die_at = int(sys.argv[1]), int(sys.argv[2])
ctx = st.get_context()
dev = st.get_device()               # the CPU, or with SHOAL_USE_GPU=1 on a GPU host its GPU
print(f"device {dev}")
torch.manual_seed(0)
model = st.prepare_model(nn.Linear(4, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
start = 0
ckpt = st.get_checkpoint()
if ckpt is not None:
    state = ckpt.to_dict()
    model.module.load_state_dict(state["model"])
    start = state["epoch"] + 1
    print(f"resumed at epoch {start}")
g = torch.Generator().manual_seed(1)
X, Y = torch.randn(64, 4, generator=g), torch.randn(64, 1, generator=g)
for epoch in range(start, epochs):
    x, y = X[ctx.rank::ctx.world_size].to(dev), Y[ctx.rank::ctx.world_size].to(dev)
    loss = nn.functional.mse_loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    if epoch == die_at and ctx.rank == 1 and os.environ["SHOAL_RESTART_COUNT"] == "0":
        os.kill(os.getpid(), signal.SIGKILL)
    st.report({"epoch": epoch, "loss": loss.item()},
              checkpoint=st.Checkpoint.from_dict({"epoch": epoch,
                                                  "model": model.module.state_dict()}))
if ctx.rank == 0:
    w = model.module.weight.detach().reshape(-1).tolist()
    print("final weight", " ".join(f"{v:.6f}" for v in w))
