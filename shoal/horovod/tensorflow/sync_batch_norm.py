"""``SyncBatchNormalization``: Keras batch normalization whose batch statistics cover
every rank of a process set, as Horovod's ``hvd.SyncBatchNormalization``."""
from __future__ import annotations

import keras
import tensorflow as tf

from shoal.horovod._world import global_process_set
from shoal.horovod.tensorflow import _ops


class SyncBatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` whose training-mode mean and variance are those
    of the batch of every rank in ``process_set`` together: each rank sums its inputs,
    their squares and their count per channel (in float32 for 16-bit inputs), one
    allreduce adds the sums up, and the moments follow (so ranks may hold batches of
    different sizes). Inference uses the moving statistics, as the plain layer does."""

    def __init__(self, *args, process_set=global_process_set, **kwargs):
        super().__init__(*args, **kwargs)
        self._shoal_process_set = process_set

    def _moments(self, inputs, mask):
        axes = list(self._reduction_axes)
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
