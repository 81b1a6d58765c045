"""A plain torch.distributed script (env:// init), as torchrun would run it."""
import torch
import torch.distributed as dist

dist.init_process_group("gloo")
t = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(t)
print(f"sum {t.item():.0f} of {dist.get_world_size()}")
dist.destroy_process_group()
