"""What data-parallel training must equal: one process on the union of the ranks' shards."""
from __future__ import annotations

import torch
from torch import nn

from shoal.train.data import ShardSampler


def ddp_reference(model, ds, world: int, epochs: int, batch: int, lr: float = 0.1,
                  momentum: float = 0.9) -> dict:
    """``world`` ranks' DDP (SGD, shuffled ShardSamplers) as one process, step by step."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    samplers = [ShardSampler(len(ds), world, r, shuffle=True) for r in range(world)]
    for epoch in range(epochs):
        idx = []
        for s in samplers:
            s.set_epoch(epoch)
            idx.append(s.indices())
        for b in range(0, len(idx[0]), batch):
            losses = [nn.functional.cross_entropy(model(x), y)
                      for x, y in (ds[i[b:b + batch]] for i in idx)]
            opt.zero_grad()
            (sum(losses) / world).backward()
            opt.step()
    return model.state_dict()
