"""Gradient averaging for TensorFlow: ``DistributedGradientTape`` and the reduction the
Keras ``DistributedOptimizer`` shares with it."""
from __future__ import annotations

import tensorflow as tf

from shoal.horovod._world import engine_of, global_process_set
from shoal.horovod.tensorflow import _ops
from shoal.horovod.tensorflow.compression import Compression


class GradientReducer:
    """Allreduces a list of gradients the way Horovod's tape and optimizer do.

    Dense gradients go as one fused grouped allreduce (per group, when
    ``groups``/``num_groups`` split them); ``tf.IndexedSlices`` are allgathered,
    or densified first with ``sparse_as_dense``; ``None`` stays ``None``.
    ``gradient_predivide_factor`` f divides before the sum and multiplies by
    f/size after it (Average only), as in Horovod.
    """

    def __init__(self, compression=Compression.none, sparse_as_dense=False, op=_ops.Average,
                 gradient_predivide_factor=1.0, num_groups=0, groups=None,
                 process_set=global_process_set):
        if op not in (_ops.Average, _ops.Sum, _ops.Adasum):
            raise ValueError(f"op must be hvd.Average or hvd.Sum for gradients, got {op!r}")
        if gradient_predivide_factor != 1.0 and op != _ops.Average:
            raise ValueError("gradient_predivide_factor needs op=hvd.Average")
        if num_groups and groups is not None:
            raise ValueError("pass num_groups or groups, not both")
        self.compression, self.sparse_as_dense, self.op = compression, sparse_as_dense, op
        self.predivide = float(gradient_predivide_factor)
        self.num_groups, self.groups, self.process_set = int(num_groups), groups, process_set

    def __call__(self, grads, variables=None) -> list:
        grads = list(grads)
        if self.sparse_as_dense:
            grads = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g
                     for g in grads]
        if self.predivide != 1.0:
            n = len(engine_of(self.process_set).set_ranks)
            op, pre, post = _ops.Sum, 1.0 / self.predivide, self.predivide / n
        else:
            op, pre, post = self.op, 1.0, 1.0
        out = list(grads)
        for idx in self._partition(grads, variables):
            reduced = _ops.grouped_allreduce([grads[i] for i in idx], op=op,
                                             compression=self.compression, prescale_factor=pre,
                                             postscale_factor=post, process_set=self.process_set)
            for i, r in zip(idx, reduced):
                out[i] = r
        return out

    def _partition(self, grads, variables) -> list[list[int]]:
        present = [i for i, g in enumerate(grads) if g is not None]
        if self.groups is not None:
            if variables is None:
                raise ValueError("groups (lists of variables) need the variables of the gradients")
            ids = {id(v): i for i, v in enumerate(variables)}
            parts, seen = [], set()
            for group in self.groups:
                idx = [ids[id(v)] for v in group if id(v) in ids and grads[ids[id(v)]] is not None]
                seen.update(idx)
                if idx:
                    parts.append(idx)
            rest = [i for i in present if i not in seen]
            return parts + ([rest] if rest else [])
        if self.num_groups > 0:
            k = min(self.num_groups, len(present)) or 1
            size = -(-len(present) // k)
            return [present[j:j + size] for j in range(0, len(present), size)]
        return [present] if present else []


class _DistributedGradientTape(tf.GradientTape):
    """A tf.GradientTape whose ``gradient`` returns the gradients averaged over the ranks."""

    def gradient(self, target, sources, output_gradients=None,
                 unconnected_gradients=tf.UnconnectedGradients.NONE):
        grads = super().gradient(target, sources, output_gradients, unconnected_gradients)
        flat, srcs = tf.nest.flatten(grads), tf.nest.flatten(sources)
        local = {id(v) for v in self._shoal_local_sources}
        out = reduce_with_locals(self._shoal_reduce, flat, srcs, local, self._shoal_scale_local)
        return tf.nest.pack_sequence_as(grads, out)

    def register_local_source(self, source):
        """Keep ``source``'s gradient local (not allreduced), as Horovod's tape does."""
        self._shoal_local_sources.append(source)


def DistributedGradientTape(gradtape, device_dense="", device_sparse="",
                            compression=Compression.none, sparse_as_dense=False,
                            op=_ops.Average, gradient_predivide_factor=1.0, num_groups=0,
                            groups=None, process_set=global_process_set,
                            scale_local_gradients=True):
    """Wrap a ``tf.GradientTape`` so that ``gradient()`` averages the gradients over the ranks.

    As Horovod's: wrap a tape after (or before) recording; the result is a
    ``tf.GradientTape``. All dense gradients travel as one fused allreduce,
    in eager mode or inside tf.function.
    """
    tape = _DistributedGradientTape.__new__(_DistributedGradientTape)
    tape.__dict__.update(gradtape.__dict__)
    tape._shoal_reduce = GradientReducer(compression, sparse_as_dense, op,
                                         gradient_predivide_factor, num_groups, groups,
                                         process_set)
    tape._shoal_local_sources = []
    tape._shoal_scale_local = scale_local_gradients
    return tape


def check_local_layers(local_layers) -> list:
    """The layers given as ``local_layers``, checked (one Keras layer or a list of them)."""
    from shoal.horovod.tensorflow._keras import keras
    if local_layers is None:
        return []
    if isinstance(local_layers, keras.layers.Layer):
        return [local_layers]
    layers = list(local_layers)
    bad = [type(x).__name__ for x in layers if not isinstance(x, keras.layers.Layer)]
    if bad:
        raise ValueError(f"local_layers must be Keras layers; got {', '.join(bad)}")
    return layers


def PartialDistributedGradientTape(gradtape, device_dense="", device_sparse="",
                                   compression=Compression.none, sparse_as_dense=False,
                                   op=_ops.Average, gradient_predivide_factor=1.0,
                                   num_groups=0, groups=None, process_set=global_process_set,
                                   local_layers=None, scale_local_gradients=True):
    """``DistributedGradientTape`` whose ``local_layers``' trainable weights keep their
    gradients local (divided by the set's size with ``scale_local_gradients`` and
    hvd.Average), as Horovod's: for layers each rank trains on its own (model parallel
    parts, per-rank heads)."""
    layers = check_local_layers(local_layers)
    tape = DistributedGradientTape(gradtape, device_dense, device_sparse, compression,
                                   sparse_as_dense, op, gradient_predivide_factor, num_groups,
                                   groups, process_set, scale_local_gradients)
    for layer in layers:
        for var in layer.trainable_weights:
            tape.register_local_source(var)
    return tape


def reduce_with_locals(reducer: GradientReducer, grads: list, variables, local: set,
                       scale_local: bool) -> list:
    """``reducer(grads)`` for every gradient but those of the variables whose ids are in
    ``local``: those stay on this rank (divided by the set's size when ``scale_local``
    and the reducer averages), as Horovod's ``register_local_var`` does."""
    if not local or variables is None:
        return reducer(grads, variables)
    variables = list(variables)
    shared = [i for i, v in enumerate(variables) if id(v) not in local]
    out = list(grads)
    for i, g in zip(shared, reducer([grads[i] for i in shared], [variables[i] for i in shared])):
        out[i] = g
    if scale_local and reducer.op == _ops.Average:
        n = len(engine_of(reducer.process_set).set_ranks)
        for i, v in enumerate(variables):
            if id(v) in local and out[i] is not None:
                out[i] = out[i] / n
    return out
