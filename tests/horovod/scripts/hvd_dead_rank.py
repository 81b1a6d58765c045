"""Rank 1 dies (exit code 0, so the launcher does not stop rank 0); rank 0's next ops raise."""
import os
import time

import torch

import shoal.horovod as hvd

hvd.init()
hvd.allreduce(torch.ones(2))
if hvd.rank() == 1:
    os._exit(0)
t0 = time.monotonic()
for name in ("first", "second"):
    try:
        h = hvd.allreduce_async(torch.ones(2), name=name)
        hvd.synchronize(h)
        print(f"CHECK {name} no error", flush=True)
    except RuntimeError as e:
        print(f"CHECK {name} {type(e).__name__}: {e}", flush=True)
print(f"CHECK seconds {time.monotonic() - t0:.1f}", flush=True)
