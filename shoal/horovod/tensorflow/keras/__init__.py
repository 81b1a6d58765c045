"""Horovod's Keras API on shoal: change ``import horovod.tensorflow.keras as hvd`` (or
``horovod.keras``) to ``import shoal.horovod.tensorflow.keras as hvd`` and
``horovodrun -np 2`` to ``shoal launch -np 2``.

    hvd.init()
    opt = hvd.DistributedOptimizer(keras.optimizers.SGD(0.01 * hvd.size()))
    model.compile(optimizer=opt, loss="sparse_categorical_crossentropy")
    model.fit(x, y, callbacks=[hvd.callbacks.BroadcastGlobalVariablesCallback(0),
                               hvd.callbacks.MetricAverageCallback()])

The gradients of every step travel as one fused allreduce (a ``tf.py_function``
inside Keras' compiled train step; leave ``jit_compile`` off, as Keras does on CPU).
"""
import keras

from shoal.horovod.tensorflow import *  # noqa: F401,F403 - Horovod's keras module re-exports it
from shoal.horovod.tensorflow import __all__ as _tf_all
from shoal.horovod.tensorflow import _ops
from shoal.horovod.tensorflow.compression import Compression
from shoal.horovod.tensorflow.gradients import GradientReducer
from shoal.horovod.tensorflow.keras import callbacks
from shoal.horovod._world import global_process_set


def DistributedOptimizer(optimizer, name=None, device_dense="", device_sparse="",
                         compression=Compression.none, sparse_as_dense=False,
                         gradient_predivide_factor=1.0, op=_ops.Average,
                         backward_passes_per_step=1, average_aggregated_gradients=False,
                         num_groups=0, groups=None, process_set=global_process_set,
                         scale_local_gradients=True):
    """A Keras optimizer of the same class and configuration as ``optimizer`` whose
    ``apply``/``apply_gradients`` first average the gradients over the ranks.

    As Horovod's: scale the learning rate by ``hvd.size()`` yourself.
    ``backward_passes_per_step`` > 1 (local gradient accumulation) is not
    supported and raises.
    """
    if backward_passes_per_step != 1:
        raise ValueError("backward_passes_per_step > 1 (local gradient accumulation) is not "
                         "supported by shoal.horovod.keras; use 1, or accumulate gradients in "
                         "a custom loop with DistributedGradientTape")
    reducer = GradientReducer(compression, sparse_as_dense, op, gradient_predivide_factor,
                              num_groups, groups, process_set)
    base = type(optimizer)

    def apply(self, grads, trainable_variables=None):
        variables = trainable_variables
        if variables is None:
            variables = getattr(self, "_trainable_variables", None)
        grads = reducer(list(grads), None if variables is None else list(variables))
        return base.apply(self, grads, trainable_variables)

    cls = type(base.__name__, (base,), {
        "apply": apply,
        "__doc__": f"{base.__name__} whose gradients are averaged over the ranks (shoal.horovod).",
        "_shoal_reducer": reducer,
    })
    config = optimizer.get_config()
    if name is not None:
        config["name"] = name
    return cls.from_config(config)


def broadcast_global_variables(root_rank, model=None):
    """Broadcast ``model``'s variables and its optimizer's from ``root_rank`` (Keras 3 has no
    global variable collection: pass the model)."""
    if model is None:
        raise ValueError("pass the Keras model: broadcast_global_variables(0, model=model)")
    variables = list(model.variables)
    if getattr(model, "optimizer", None) is not None:
        variables += list(model.optimizer.variables)
    _ops.broadcast_variables(variables, root_rank)


def load_model(filepath, custom_optimizers=None, custom_objects=None, compile=True,
               compression=Compression.none):
    """``keras.models.load_model`` whose optimizer comes back wrapped in DistributedOptimizer."""
    model = keras.models.load_model(filepath, custom_objects=custom_objects, compile=compile)
    if compile and getattr(model, "optimizer", None) is not None:
        opt = model.optimizer
        wrapped = DistributedOptimizer(type(opt).from_config(opt.get_config()),
                                       compression=compression)
        wrapped.build(model.trainable_variables)
        for dst, src in zip(wrapped.variables, opt.variables):
            dst.assign(src)
        model.optimizer = wrapped
    return model


__all__ = [*_tf_all, "DistributedOptimizer", "broadcast_global_variables", "callbacks",
           "load_model"]
