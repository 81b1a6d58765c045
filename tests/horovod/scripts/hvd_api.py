"""Exercises shoal.horovod on every rank; prints one 'CHECK name value' line per result.

With HVD_TEST_DEVICE=cuda every tensor (and model) is made on the GPU.
"""
import os

import torch

import shoal.horovod as hvd


def check(name, value):
    print(f"CHECK {name} {value}", flush=True)


if os.environ.get("HVD_TEST_DEVICE"):
    torch.set_default_device(os.environ["HVD_TEST_DEVICE"])
print(f"DEVICE {torch.ones(1).device.type}", flush=True)
hvd.init()
r, n = hvd.rank(), hvd.size()
check("rank_size", f"{r}/{n}/{hvd.local_rank()}/{hvd.local_size()}/{hvd.cross_size()}")

x = torch.full((4,), float(r + 1))
check("allreduce_avg", hvd.allreduce(x).tolist())
check("allreduce_unchanged_input", x.tolist())
check("allreduce_sum", hvd.allreduce(x, op=hvd.Sum).tolist())
check("allreduce_max", hvd.allreduce(x, op=hvd.Max).tolist())
check("allreduce_fp16", hvd.allreduce(x, op=hvd.Sum, compression=hvd.Compression.fp16).dtype)
y = x.clone()
hvd.allreduce_(y, op=hvd.Sum)
check("allreduce_inplace", y.tolist())
h = hvd.allreduce_async(x, op=hvd.Sum)
check("async_sum", hvd.synchronize(h).tolist())
a, b = hvd.grouped_allreduce([torch.ones(2) * (r + 1), torch.ones(3) * (r + 2)], op=hvd.Sum)
check("grouped", a.tolist() + b.tolist())
check("allgather", hvd.allgather(torch.full((r + 1, 2), float(r))).tolist())
check("broadcast", hvd.broadcast(torch.tensor([float(r)]), root_rank=1).tolist())
out, splits = hvd.alltoall(torch.arange(4) + 10 * r, splits=torch.tensor([1, 3]))
check("alltoall", out.tolist() + ["|"] + splits.tolist())
check("reducescatter", hvd.reducescatter(torch.arange(4.0) * (r + 1), op=hvd.Sum).tolist())
check("broadcast_object", hvd.broadcast_object({"from": r}, root_rank=0))
check("allgather_object", hvd.allgather_object(r * 10))
hvd.barrier()
check("join", hvd.join() in range(n))

# grad of allreduce is an allreduce
w = torch.ones(2, requires_grad=True)
hvd.allreduce(w * (r + 1), op=hvd.Sum).sum().backward()
check("allreduce_grad", w.grad.tolist())

# DistributedOptimizer: gradients averaged before step, params equal afterwards
torch.manual_seed(r)
model = torch.nn.Linear(3, 1)
hvd.broadcast_parameters(model.state_dict(), root_rank=0)
opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
opt = hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters())
hvd.broadcast_optimizer_state(opt, root_rank=0)
for step in range(3):
    opt.zero_grad()
    model(torch.full((2, 3), float(r + step))).sum().backward()
    opt.step()
flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
check("optimizer_params_equal", torch.equal(*hvd.allgather(flat[None]).unbind(0)))
check("optimizer_grad_avg", model.bias.grad.tolist())

try:
    hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=1),
                             named_parameters=[("a", model.weight), ("a", model.bias)])
except ValueError as e:
    check("dup_names_error", "duplicates" in str(e))

model = torch.nn.Linear(3, 1)
opt2 = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                named_parameters=model.named_parameters())
model(torch.ones(1, 3)).sum().backward()
try:
    opt2.zero_grad()
except AssertionError as e:
    check("zero_grad_race_error", "before optimizer.step()" in str(e))
opt2.step()

model = torch.nn.Linear(3, 1)
opt3 = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                named_parameters=model.named_parameters(),
                                backward_passes_per_step=2)
opt3.zero_grad()
for k in range(2):
    model(torch.full((1, 3), float(r + k))).sum().backward()
opt3.step()
check("backward_passes_grad", model.bias.grad.tolist())
hvd.shutdown()
try:
    hvd.rank()
except ValueError as e:
    check("not_initialized_error", "hvd.init()" in str(e))
