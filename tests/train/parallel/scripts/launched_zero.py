"""A plain script under `shoal launch`: a Mesh over the job, the model sharded by parallelize."""
import sys

import torch

import shoal.train as st

sys.path.insert(0, __file__.rsplit("/scripts/", 1)[0])
from _models import batches, lm_loss, make_gpt  # noqa: E402

mesh = st.Mesh(dp=None)                              # every rank of the job along dp
model = st.parallelize(make_gpt(seed=100), mesh, zero_stage=3)
opt = torch.optim.Adam(model.parameters(), lr=0.05)
comm = st.get_communicator()
for ids, tg in batches(5):
    opt.zero_grad()
    loss = lm_loss(model(ids[mesh.dp_rank::mesh.dp]), tg[mesh.dp_rank::mesh.dp])
    loss.backward()
    opt.step()
    t = torch.tensor([loss.item()])
    comm.allreduce(t, op="avg")
if mesh.rank == 0:
    print(f"loss {t.item():.6f} {type(model).__name__} dp={mesh.dp}")
