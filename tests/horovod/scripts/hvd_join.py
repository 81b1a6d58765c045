"""hvd.join() with uneven work per rank; prints one 'CHECK name value' line per result.

With HVD_TEST_DEVICE=cuda every tensor (and model) is made on the GPU.
"""
import copy
import os

import torch

import shoal.horovod as hvd
from shoal.exceptions import CollectiveError


def check(name, value):
    print(f"CHECK {name} {value}", flush=True)


if os.environ.get("HVD_TEST_DEVICE"):
    torch.set_default_device(os.environ["HVD_TEST_DEVICE"])
hvd.init()
r, n = hvd.rank(), hvd.size()

# 1. rank 0 joins at once; rank 1 keeps issuing collectives that rank 0 stands in for
x = torch.arange(1.0, 5.0) * (r + 1)
if r == 0:
    check("last_joined", hvd.join())
else:
    check("avg_with_joined", hvd.allreduce(x).tolist())                 # (0 + x) / size
    check("sum_with_joined", hvd.allreduce(x, op=hvd.Sum).tolist())
    check("max_with_joined", hvd.allreduce(-x, op=hvd.Max).tolist())   # the zeros win
    a, b = hvd.grouped_allreduce([torch.ones(2), torch.ones(3, dtype=torch.float64)], op=hvd.Sum)
    check("grouped_with_joined", a.tolist() + b.tolist())
    h = hvd.allreduce_async(torch.full((2, 2), 4.0))
    check("async_with_joined", hvd.synchronize(h).tolist())
    check("allgather_with_joined", hvd.allgather(torch.full((2, 3), 7.0)).tolist())
    check("allgather_object_with_joined", hvd.allgather_object("mine"))
    hvd.barrier()
    for what, fn in [("broadcast", lambda: hvd.broadcast(torch.ones(2), root_rank=1)),
                     ("broadcast_object", lambda: hvd.broadcast_object(1, root_rank=1)),
                     ("reducescatter", lambda: hvd.reducescatter(torch.ones(4))),
                     ("alltoall", lambda: hvd.alltoall(torch.ones(2)))]:
        try:
            fn()
            check(f"{what}_with_joined_error", False)
        except CollectiveError as e:
            check(f"{what}_with_joined_error", "hvd.join()" in str(e))
    check("last_joined", hvd.join())

# 2. after everyone has joined, collectives are normal again; rank 1 joins first this time
check("avg_after_join", hvd.allreduce(torch.full((2,), float(r + 1))).tolist())
if r == 1:
    check("last_joined_2", hvd.join())
else:
    hvd.allreduce(torch.ones(3))
    check("last_joined_2", hvd.join())

# 3. DistributedOptimizer, rank 0 has 2 batches and rank 1 has 5: each joins after its last
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
reference = copy.deepcopy(model)
initial = torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])
batches = {q: [(torch.randn(6, 4), torch.randn(6, 1)) for _ in range(2 if q == 0 else 5)]
           for q in range(n)}

opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
opt = hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters())
for xb, yb in batches[r]:
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(xb), yb).backward()
    opt.step()
last = hvd.join()
check("optimizer_last_joined", last)
hvd.broadcast_parameters(model.state_dict(), root_rank=last)

# the expected math, in one process: each step averages over size() ranks, a rank that
# has joined contributing zeros
ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
for step in range(max(len(b) for b in batches.values())):
    grads = [torch.zeros_like(p) for p in reference.parameters()]
    for q in range(n):
        if step < len(batches[q]):
            reference.zero_grad()
            xb, yb = batches[q][step]
            torch.nn.functional.mse_loss(reference(xb), yb).backward()
            grads = [g + p.grad for g, p in zip(grads, reference.parameters())]
    for g, p in zip(grads, reference.parameters()):
        p.grad = g / n
    ref_opt.step()
got = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
want = torch.cat([p.detach().reshape(-1) for p in reference.parameters()])
check("optimizer_matches_math", bool(torch.allclose(got, want, atol=1e-6)))
check("optimizer_moved", bool((got - initial).abs().max() > 1e-3))
hvd.shutdown()
