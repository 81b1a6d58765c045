"""``SyncBatchNormalization``: Keras batch normalization whose batch statistics cover
every rank of a process set, as Horovod's ``hvd.SyncBatchNormalization``."""
from __future__ import annotations

import tensorflow as tf

from shoal.horovod._world import global_process_set
from shoal.horovod.tensorflow import _ops
from shoal.horovod.tensorflow._keras import KERAS2, keras


class SyncBatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` whose training-mode mean and variance are those
    of the batch of every rank in ``process_set`` together: each rank sums its inputs,
    their squares and their count per channel (in float32 for 16-bit inputs), one
    allreduce adds the sums up, and the moments follow (so ranks may hold batches of
    different sizes). Inference uses the moving statistics, as the plain layer does.
    Under Keras 2 the layer is not fused (the fused kernel computes its own moments)."""

    def __init__(self, *args, process_set=global_process_set, **kwargs):
        if KERAS2:
            if kwargs.get("fused"):
                raise ValueError("SyncBatchNormalization cannot be fused: the fused kernel "
                                 "computes its own batch statistics; leave fused unset")
            kwargs["fused"] = False
        super().__init__(*args, **kwargs)
        self._shoal_process_set = process_set

    def _moments(self, inputs, *rest, **kwargs):
        if not KERAS2:                         # Keras 3: _moments(inputs, mask)
            mask = rest[0] if rest else kwargs.get("mask")
            return self._synced_moments(inputs, list(self._reduction_axes), mask)
        return super()._moments(inputs, *rest, **kwargs)

    def _calculate_mean_and_var(self, inputs, reduction_axes, keep_dims, mask=None):
        # Keras 2's hook for the training-mode moments
        mean, variance = self._synced_moments(inputs, list(reduction_axes), mask)
        if keep_dims:                          # the channel axes' sizes are static
            shape = [1 if i in reduction_axes else inputs.shape[i]
                     for i in range(inputs.shape.rank)]
            mean, variance = tf.reshape(mean, shape), tf.reshape(variance, shape)
        return mean, variance

    def _synced_moments(self, inputs, axes, mask):
        y = inputs
        if y.dtype in (tf.float16, tf.bfloat16):
            y = tf.cast(y, tf.float32)
        if mask is None:
            total = tf.reduce_sum(y, axes)
            squares = tf.reduce_sum(tf.square(y), axes)
            n = tf.cast(tf.reduce_prod(tf.gather(tf.shape(y), axes)), y.dtype)
            count = tf.fill(tf.shape(total), n)
        else:
            w = tf.cast(tf.broadcast_to(tf.expand_dims(mask, -1), tf.shape(y)), y.dtype)
            total = tf.reduce_sum(y * w, axes)
            squares = tf.reduce_sum(tf.square(y) * w, axes)
            count = tf.reduce_sum(w, axes)
        sums = _ops.allreduce(tf.stack([total, squares, count]), op=_ops.Sum,
                              name=f"sync_batch_norm.{self.name}",
                              process_set=self._shoal_process_set)
        n = tf.maximum(sums[2], 1.0)
        mean = sums[0] / n
        variance = tf.maximum(sums[1] / n - tf.square(mean), 0.0)
        return tf.cast(mean, inputs.dtype), tf.cast(variance, inputs.dtype)
