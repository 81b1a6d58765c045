"""Horovod's TensorFlow API on shoal: change ``import horovod.tensorflow as hvd`` to
``import shoal.horovod.tensorflow as hvd`` and ``horovodrun -np 2`` to ``shoal launch -np 2``.

    hvd.init()
    with tf.GradientTape() as tape:
        loss = loss_fn(model(x), y)
    tape = hvd.DistributedGradientTape(tape)
    grads = tape.gradient(loss, model.trainable_variables)
    opt.apply_gradients(zip(grads, model.trainable_variables))
    if first_batch:
        hvd.broadcast_variables(model.variables, root_rank=0)

The ops run on shoal.horovod's engine (matched by name, checked, fused; the
same engine as the PyTorch API), in eager mode and inside ``tf.function``
(as ``tf.py_function``; see ``shoal.horovod.tensorflow._ops`` for why). They
need the ``tf`` extra (``pip install 'shoal[tf]'``), not torch; running inside a
``shoal.train.Trainer`` needs the ``train`` extra too.
"""
from shoal.exceptions import MissingDependencyError

MissingDependencyError.require("shoal.horovod.tensorflow", "tf", "tensorflow")

import tensorflow as _tf  # noqa: E402

from shoal.horovod._world import (  # noqa: E402
    ProcessSet, add_process_set, ccl_built, cross_rank, cross_size, cuda_built, ddl_built,
    global_process_set, gloo_built, gloo_enabled, init, is_homogeneous, is_initialized,
    local_rank, local_size, mpi_built, mpi_enabled, mpi_threads_supported, nccl_built, rank,
    remove_process_set, rocm_built, shutdown, size, start_timeline, stop_timeline)
from shoal.horovod.tensorflow._ops import (  # noqa: E402
    Adasum, Average, Max, Min, Product, Sum, _scalar_op, allgather, allgather_object, allreduce,
    alltoall, barrier, broadcast, broadcast_, broadcast_object, broadcast_variables,
    grouped_allgather, grouped_allreduce, grouped_reducescatter, join, reducescatter)
from shoal.horovod.tensorflow.compression import Compression  # noqa: E402
from shoal.horovod.tensorflow.gradients import (  # noqa: E402
    DistributedGradientTape, PartialDistributedGradientTape)

rank_op = _scalar_op(rank)
size_op = _scalar_op(size)
local_rank_op = _scalar_op(local_rank)
local_size_op = _scalar_op(local_size)


def __getattr__(name):
    # the layer needs Keras: imported on first use, so the op API stays light
    if name == "SyncBatchNormalization":
        from shoal.horovod.tensorflow.sync_batch_norm import SyncBatchNormalization
        return SyncBatchNormalization
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def process_set_included_op(process_set_id=0):
    """1 if this rank is in the process set ``process_set_id``, else 0 (an int32 tf.Tensor)."""
    from shoal.horovod._world import _w
    ps = _w().sets.get(process_set_id)
    if ps is None:
        raise ValueError(f"no process set with id {process_set_id}")
    return _tf.constant(int(ps.included()), _tf.int32)


def DistributedOptimizer(optimizer, *args, **kwargs):
    """A Keras optimizer wrapped as in ``shoal.horovod.tensorflow.keras``; TF1 optimizers
    (tf.compat.v1.train) are not supported: use DistributedGradientTape."""
    from shoal.horovod.tensorflow._keras import optimizer_types
    if not isinstance(optimizer, optimizer_types()):
        raise TypeError(f"DistributedOptimizer takes a Keras optimizer, got "
                        f"{type(optimizer).__name__}; for tf.compat.v1 optimizers use "
                        "DistributedGradientTape and apply the gradients yourself")
    from shoal.horovod.tensorflow.keras import DistributedOptimizer as keras_optimizer
    return keras_optimizer(optimizer, *args, **kwargs)


__all__ = [
    "Adasum", "Average", "Compression", "DistributedGradientTape", "DistributedOptimizer",
    "Max", "Min", "PartialDistributedGradientTape", "Product", "ProcessSet", "Sum",
    "SyncBatchNormalization", "add_process_set", "allgather",
    "allgather_object", "allreduce", "alltoall", "barrier", "broadcast", "broadcast_",
    "broadcast_object", "broadcast_variables", "ccl_built", "cross_rank", "cross_size",
    "cuda_built", "ddl_built", "global_process_set", "gloo_built", "gloo_enabled",
    "grouped_allgather", "grouped_allreduce", "grouped_reducescatter", "init",
    "is_homogeneous", "is_initialized", "join", "local_rank", "local_rank_op", "local_size",
    "local_size_op", "mpi_built", "mpi_enabled", "mpi_threads_supported", "nccl_built",
    "process_set_included_op", "rank", "rank_op", "remove_process_set", "reducescatter",
    "rocm_built", "shutdown", "size", "size_op", "start_timeline", "stop_timeline",
]
