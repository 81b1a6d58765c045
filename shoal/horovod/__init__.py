"""Horovod's PyTorch API on shoal: change ``import horovod.torch as hvd`` to
``import shoal.horovod as hvd`` and ``horovodrun -np 2`` to ``shoal launch -n 2``.

    import shoal.horovod as hvd
    hvd.init()
    opt = hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters())
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(opt, root_rank=0)

The collectives run on shoal.collective (shared memory on one host,
authenticated TCP across hosts).
"""
from shoal.exceptions import MissingDependencyError

MissingDependencyError.require("shoal.horovod", "train", "torch")

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
                                cross_rank,
                                cross_size,
                                grouped_allreduce,
                                grouped_allreduce_,
                                grouped_allreduce_async,
                                grouped_allreduce_async_,
                                init,
                                is_initialized,
                                join,
                                local_rank,
                                local_size,
                                mpi_threads_supported,
                                poll,
                                rank,
                                reducescatter,
                                reducescatter_async,
                                shutdown,
                                size,
                                synchronize,
)
from shoal.horovod.compression import Compression
from shoal.horovod.optimizer import (
                                DistributedOptimizer,
                                broadcast_optimizer_state,
                                broadcast_parameters,
)

__all__ = [
    "Adasum", "Average", "Compression", "DistributedOptimizer", "Max", "Min", "Product", "Sum",
    "allgather", "allgather_async", "allgather_object", "allreduce", "allreduce_",
    "allreduce_async", "allreduce_async_", "alltoall", "alltoall_async", "barrier", "broadcast",
    "broadcast_", "broadcast_async", "broadcast_async_", "broadcast_object",
    "broadcast_optimizer_state", "broadcast_parameters", "cross_rank", "cross_size",
    "grouped_allreduce", "grouped_allreduce_", "grouped_allreduce_async",
    "grouped_allreduce_async_", "init", "is_initialized", "join", "local_rank", "local_size",
    "mpi_threads_supported", "poll", "rank", "reducescatter", "reducescatter_async", "shutdown",
    "size", "synchronize",
]
