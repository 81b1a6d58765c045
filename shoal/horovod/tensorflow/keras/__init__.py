"""Horovod's Keras API on shoal: change ``import horovod.tensorflow.keras as hvd`` (or
``horovod.keras``) to ``import shoal.horovod.tensorflow.keras as hvd`` and
``horovodrun -np 2`` to ``shoal launch -np 2``.

    hvd.init()
    opt = hvd.DistributedOptimizer(keras.optimizers.SGD(0.01 * hvd.size()))
    model.compile(optimizer=opt, loss="sparse_categorical_crossentropy")
    model.fit(x, y, callbacks=[hvd.callbacks.BroadcastGlobalVariablesCallback(0),
                               hvd.callbacks.MetricAverageCallback()])

The gradients of every step travel as one fused allreduce (a ``tf.numpy_function``
inside Keras' compiled train step; leave ``jit_compile`` off, as Keras does on CPU).
``keras`` here is ``tf.keras``, as in Horovod: Keras 3, or Keras 2 (``tf_keras``)
under ``TF_USE_LEGACY_KERAS=1``, where Horovod's Keras-2 scripts run unchanged.
"""
import tensorflow as tf

from shoal.horovod.tensorflow import *  # noqa: F401,F403 - Horovod's keras module re-exports it
from shoal.horovod.tensorflow import __all__ as _tf_all
from shoal.horovod.tensorflow import _ops
from shoal.horovod.tensorflow._keras import keras, optimizer_variables
from shoal.horovod.tensorflow.compression import Compression
from shoal.horovod.tensorflow.gradients import (GradientReducer, check_local_layers,
                                                reduce_with_locals)
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

    As Horovod's: scale the learning rate by ``hvd.size()`` yourself. With
    ``backward_passes_per_step`` n > 1 each rank adds up its gradients locally
    for n steps and the ranks average the sums on the n-th (divided by n first
    when ``average_aggregated_gradients``), which is when the variables
    change; ``optimizer.iterations`` counts every step, as Horovod's does.
    """
    passes = backward_passes_per_step
    if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
        raise ValueError(f"backward_passes_per_step={passes!r} must be an int >= 1")
    reducer = GradientReducer(compression, sparse_as_dense, op, gradient_predivide_factor,
                              num_groups, groups, process_set)
    base = type(optimizer)

    def reduce_grads(self, grads, variables):
        return reduce_with_locals(reducer, grads, variables, getattr(self, "_shoal_local", ()),
                                  scale_local_gradients)

    def register_local_var(self, var):
        """Keep ``var``'s gradient on this rank (not allreduced), as Horovod's does."""
        # ids: a list of variables set on a Keras optimizer would join its own variables
        self._shoal_local = getattr(self, "_shoal_local", set()) | {id(var)}

    # the wrapped class's module and name: a saved model names the plain optimizer, so it
    # loads with or without shoal (hvd.load_model wraps it again), as Horovod's does
    methods = {"register_local_var": register_local_var, "_shoal_reducer": reducer,
               "__module__": base.__module__,
               "__doc__": f"{base.__name__} whose gradients are averaged over the ranks "
                          "(shoal.horovod)."}
    if not hasattr(base, "stateless_apply"):     # a Keras 2 optimizer (tf_keras)
        methods.update(_keras2_methods(base, reduce_grads, passes, average_aggregated_gradients))
    else:
        methods.update(_keras3_methods(base, reduce_grads, passes, average_aggregated_gradients))
    cls = type(base.__name__, (base,), methods)
    config = optimizer.get_config()
    if name is not None:
        config["name"] = name
    return cls.from_config(config)


def _keras3_methods(base, reduce_grads, passes, average) -> dict:
    """Keras 3: ``apply`` (which ``apply_gradients`` and ``model.fit`` call) reduces first;
    the aggregation sums are optimizer variables."""
    def apply(self, grads, trainable_variables=None):
        variables = trainable_variables
        if variables is None:
            variables = getattr(self, "_trainable_variables", None)
        variables = None if variables is None else list(variables)
        if passes == 1:
            return base.apply(self, reduce_grads(self, list(grads), variables),
                              trainable_variables)
        if variables is None:
            raise ValueError("When passing `grads` without `variables`, the optimizer must "
                             "already be built on a list of variables")
        if not self.built:
            self.build(variables)
            self.built = True
        sums = [self._shoal_sums[self._get_variable_index(v)] for v in variables]
        return _aggregated_apply(
            self, sums, self._shoal_passes, passes, average, list(grads),
            lambda agg: base.apply(self, reduce_grads(self, agg, variables),
                                   trainable_variables))

    def build(self, variables):
        if self.built:
            return
        base.build(self, variables)
        if passes > 1:
            self._shoal_sums = [self.add_variable_from_reference(v, name="shoal_gradient_sum")
                                for v in variables]
            self._shoal_passes = self.add_variable((), dtype="int64", name="shoal_passes")

    return {"apply": apply, "build": build}


def _keras2_methods(base, reduce_grads, passes, average) -> dict:
    """Keras 2 (tf_keras, its optimizers and its legacy ones): ``apply_gradients`` (which
    ``minimize`` and ``model.fit`` call) reduces first. The aggregation sums are variables
    of their own, made outside any graph on first use, as Horovod's are for Keras 2."""
    state: dict = {}

    def apply_gradients(self, grads_and_vars, *args, **kwargs):
        pairs = list(grads_and_vars)
        grads, variables = [g for g, _ in pairs], [v for _, v in pairs]

        def apply_reduced(agg):
            return base.apply_gradients(self, list(zip(reduce_grads(self, agg, variables),
                                                       variables)), *args, **kwargs)
        if passes == 1:
            return apply_reduced(grads)
        with tf.init_scope():
            sums = [_sum_of(state, v) for v in variables]
            if "passes" not in state:
                state["passes"] = tf.Variable(0, dtype=tf.int64, trainable=False,
                                              name="shoal_passes")
        return _aggregated_apply(self, sums, state["passes"], passes, average, grads,
                                 apply_reduced)

    return {"apply_gradients": apply_gradients}


def _sum_of(state: dict, var):
    key = var.ref()
    if key not in state:
        state[key] = tf.Variable(tf.zeros(var.shape, var.dtype), trainable=False,
                                 name="shoal_gradient_sum")
    return state[key]


def PartialDistributedOptimizer(optimizer, name=None, device_dense="", device_sparse="",
                                compression=Compression.none, sparse_as_dense=False,
                                gradient_predivide_factor=1.0, op=_ops.Average,
                                backward_passes_per_step=1, average_aggregated_gradients=False,
                                groups=None, process_set=global_process_set, local_layers=None,
                                scale_local_gradients=True):
    """``DistributedOptimizer`` whose ``local_layers``' trainable weights keep their
    gradients on each rank, as Horovod's."""
    layers = check_local_layers(local_layers)
    opt = DistributedOptimizer(optimizer, name, device_dense, device_sparse, compression,
                               sparse_as_dense, gradient_predivide_factor, op,
                               backward_passes_per_step, average_aggregated_gradients,
                               groups=groups, process_set=process_set,
                               scale_local_gradients=scale_local_gradients)
    for layer in layers:
        for var in layer.trainable_weights:
            opt.register_local_var(var)
    return opt


def _aggregated_apply(opt, sums, counter, passes, average, grads, apply_reduced):
    """One backward pass of ``passes``: add ``grads`` to the local ``sums``; on the last
    pass ``apply_reduced`` the sums (allreduced, then applied; a ``tf.cond``, so it runs
    inside Keras' train step; every rank takes the same branch, its pass count being the
    same)."""
    present = [g is not None for g in grads]
    for s, g in zip(sums, grads):
        if g is not None:
            s.assign_add(tf.convert_to_tensor(g))
    count = counter.assign_add(1)

    def update():
        # inside a tf.function the ops on one variable run in program order (automatic
        # control dependencies, in cond branches too): the sums are read before they reset
        agg = [(tf.convert_to_tensor(s) / passes if average else tf.convert_to_tensor(s))
               if p else None for s, p in zip(sums, present)]
        apply_reduced(agg)
        for s in sums:
            s.assign(tf.zeros_like(s))
        counter.assign(0)
        return tf.constant(True)

    def skip():
        opt.iterations.assign_add(1)
        return tf.constant(False)

    return tf.cond(tf.equal(count, passes), update, skip)


def broadcast_global_variables(root_rank, model=None):
    """Broadcast ``model``'s variables and its optimizer's from ``root_rank`` (Keras 3 has no
    global variable collection: pass the model)."""
    if model is None:
        raise ValueError("pass the Keras model: broadcast_global_variables(0, model=model)")
    variables = list(model.variables)
    if getattr(model, "optimizer", None) is not None:
        variables += optimizer_variables(model.optimizer)
    _ops.broadcast_variables(variables, root_rank)


def load_model(filepath, custom_optimizers=None, custom_objects=None, compile=True,
               compression=Compression.none):
    """``keras.models.load_model`` whose optimizer comes back wrapped in DistributedOptimizer."""
    model = keras.models.load_model(filepath, custom_objects=custom_objects, compile=compile)
    if compile and getattr(model, "optimizer", None) is not None:
        opt = model.optimizer
        wrapped = DistributedOptimizer(type(opt).from_config(opt.get_config()),
                                       compression=compression)
        if hasattr(wrapped, "build"):
            wrapped.build(model.trainable_variables)
        else:                                  # a Keras 2 legacy optimizer: its slots
            wrapped._create_all_weights(model.trainable_variables)
        for dst, src in zip(optimizer_variables(wrapped), optimizer_variables(opt)):
            dst.assign(src)
        model.optimizer = wrapped
    return model


__all__ = [*_tf_all, "DistributedOptimizer", "PartialDistributedOptimizer",
           "broadcast_global_variables", "callbacks", "load_model"]
