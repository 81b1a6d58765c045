"""Rank 0 submits an op that rank 1 never issues while both keep working: after the stall
timeout (HOROVOD_STALL_SHUTDOWN_TIME_SECONDS) it fails on rank 0, and the job goes on."""
import time

import torch

import shoal.horovod as hvd

hvd.init()
r = hvd.rank()
h = hvd.allreduce_async(torch.ones(2), name="lonely") if r == 0 else None
t0, i, go = time.monotonic(), 0, True
while go:     # rank 0's clock decides for everyone when to stop
    hvd.allreduce(torch.ones(1), name=f"tick.{i}")
    go = bool(hvd.broadcast(torch.tensor([time.monotonic() - t0 < 3.0]), root_rank=0,
                            name=f"step.{i}")[0])
    i += 1
if r == 0:
    try:
        hvd.synchronize(h)
        print("CHECK lonely no error", flush=True)
    except RuntimeError as e:
        print(f"CHECK lonely {type(e).__name__}: {e}", flush=True)
print(f"CHECK after {hvd.allreduce(torch.ones(1), op=hvd.Sum).tolist()}", flush=True)
