"""shoal.collective: fast collectives among processes, for NumPy, torch and any buffer.

    from shoal import collective
    comm = collective.init_group(rank, world_size, store)      # or init_group_from_env()
    comm.allreduce(grad, op="avg")                             # in place
    work = comm.allreduce(grad, async_op=True); work.wait()
    parts = comm.allgather(x); comm.broadcast(w, src=0); comm.barrier()

Backends: "native" (shared memory on one host, authenticated TCP across
hosts, tensor fusion, timeline) and "torch" (torch.distributed: Gloo/NCCL),
the same API on both. See docs in each module.
"""
from shoal.collective._work import Work
from shoal.collective.communicator import Communicator
from shoal.collective.config import FusionConfig, NativeConfig
from shoal.collective.group import (LaunchEnv, backend_for, init_group, init_group_from_env,
                                    read_launch_env)
from shoal.collective.mesh import Mesh
from shoal.collective.actors import create_actor_group, leave_actor_group

__all__ = ["Communicator", "Work", "FusionConfig", "NativeConfig", "LaunchEnv", "Mesh",
           "init_group", "init_group_from_env", "read_launch_env", "backend_for",
           "create_actor_group", "leave_actor_group"]
