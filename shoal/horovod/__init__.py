"""Horovod's PyTorch API on shoal: change ``import horovod.torch as hvd`` to
``import shoal.horovod as hvd`` and ``horovodrun -np 2`` to ``shoal launch -np 2``.

    import shoal.horovod as hvd
    hvd.init()
    opt = hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters())
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(opt, root_rank=0)

Ops are matched across ranks by name and checked as Horovod's coordinator
does (a mismatch raises the same error on every rank; the next op runs);
``join()``, process sets, grouped and sparse ops, ``SyncBatchNorm`` and the
timeline work as in Horovod. The collectives run on shoal.collective (shared
memory on one host, authenticated TCP across hosts).
"""
from shoal.exceptions import MissingDependencyError

try:
    import torch as _torch
except ImportError:  # shoal.horovod.tensorflow and .keras run without torch
    _torch = None

if _torch is not None:
    from shoal.horovod._ops import (
                                    Adasum,
                                    Average,
                                    Max,
                                    Min,
                                    Product,
                                    Sum,
                                    allgather,
                                    allgather_async,
                                    allgather_object,
                                    allreduce,
                                    allreduce_,
                                    allreduce_async,
                                    allreduce_async_,
                                    alltoall,
                                    alltoall_async,
                                    barrier,
                                    broadcast,
                                    broadcast_,
                                    broadcast_async,
                                    broadcast_async_,
                                    broadcast_object,
                                    grouped_allgather,
                                    grouped_allgather_async,
                                    grouped_allreduce,
                                    grouped_allreduce_,
                                    grouped_allreduce_async,
                                    grouped_allreduce_async_,
                                    grouped_reducescatter,
                                    grouped_reducescatter_async,
                                    join,
                                    poll,
                                    reducescatter,
                                    reducescatter_async,
                                    sparse_allreduce_async,
                                    synchronize,
    )
    from shoal.horovod._world import (
                                    ProcessSet,
                                    add_process_set,
                                    ccl_built,
                                    cross_rank,
                                    cross_size,
                                    cuda_built,
                                    ddl_built,
                                    global_process_set,
                                    gloo_built,
                                    gloo_enabled,
                                    init,
                                    is_homogeneous,
                                    is_initialized,
                                    local_rank,
                                    local_size,
                                    mpi_built,
                                    mpi_enabled,
                                    mpi_threads_supported,
                                    nccl_built,
                                    rank,
                                    remove_process_set,
                                    rocm_built,
                                    shutdown,
                                    size,
                                    start_timeline,
                                    stop_timeline,
    )
    from shoal.horovod.compression import Compression
    from shoal.horovod.optimizer import (
                                    DistributedOptimizer,
                                    broadcast_optimizer_state,
                                    broadcast_parameters,
    )
    from shoal.horovod.sync_batch_norm import SyncBatchNorm
    from shoal.horovod import elastic

__all__ = [
    "Adasum", "Average", "Compression", "DistributedOptimizer", "Max", "Min", "Product",
    "ProcessSet", "Sum", "SyncBatchNorm", "add_process_set", "allgather", "allgather_async",
    "allgather_object", "allreduce", "allreduce_", "allreduce_async", "allreduce_async_",
    "alltoall", "alltoall_async", "barrier", "broadcast", "broadcast_", "broadcast_async",
    "broadcast_async_", "broadcast_object", "broadcast_optimizer_state", "broadcast_parameters",
    "ccl_built", "cross_rank", "cross_size", "cuda_built", "ddl_built", "global_process_set",
    "gloo_built", "gloo_enabled", "grouped_allgather", "grouped_allgather_async",
    "grouped_allreduce", "grouped_allreduce_", "grouped_allreduce_async",
    "grouped_allreduce_async_", "grouped_reducescatter", "grouped_reducescatter_async", "init",
    "is_homogeneous", "is_initialized", "join", "local_rank", "local_size", "mpi_built", "mpi_enabled",
    "mpi_threads_supported", "nccl_built", "poll", "rank", "reducescatter",
    "reducescatter_async", "remove_process_set", "rocm_built", "shutdown", "size",
    "sparse_allreduce_async", "start_timeline", "stop_timeline", "synchronize", "elastic",
]


if _torch is None:
    def __getattr__(name):
        if name in __all__:
            MissingDependencyError.require("shoal.horovod", "train", "torch")
        raise AttributeError(f"module 'shoal.horovod' has no attribute {name!r}")
