"""A Horovod Keras script (horovod/examples/tensorflow2/tensorflow2_keras_mnist.py's shape,
on generated data); only the import differs from Horovod's. Prints the final weights' sums
and the logged metrics as JSON on rank 0. Run: shoal launch -n 2 python keras_mlp.py"""
import json
import sys

import numpy as np
from tensorflow import keras

import shoal.horovod.tensorflow.keras as hvd

GLOBAL_BATCH, SAMPLES, EPOCHS = 32, 128, 2


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(SAMPLES, 8)).astype(np.float32)
    y = (x @ rng.normal(size=(8,)) > 0).astype(np.int64)
    return x, y


def train(hvd, tf_data=False, legacy=False):
    """Train on this rank's half of every global batch: NumPy arrays to ``model.fit``, or
    (``tf_data``) a repeated ``tf.data`` dataset with ``steps_per_epoch``, as Horovod's
    example feeds it; ``legacy``: Keras 2's legacy SGD. Returns the final weights (flat)
    and the per-epoch losses."""
    keras.utils.set_random_seed(1)
    x, y = data()
    # rank r takes rows r, r+size, ... of every global batch: equal halves of each batch
    local_batch = GLOBAL_BATCH // hvd.size()
    idx = np.concatenate([np.arange(b, b + GLOBAL_BATCH)[hvd.rank()::hvd.size()]
                          for b in range(0, SAMPLES, GLOBAL_BATCH)])
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(2)])
    sgd = keras.optimizers.legacy.SGD if legacy else keras.optimizers.SGD
    opt = hvd.DistributedOptimizer(sgd(0.1, momentum=0.9))
    model.compile(optimizer=opt, metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    callbacks = [hvd.callbacks.BroadcastGlobalVariablesCallback(0),
                 hvd.callbacks.MetricAverageCallback()]
    if tf_data:
        import tensorflow as tf
        batches = tf.data.Dataset.from_tensor_slices((x[idx], y[idx])).batch(local_batch).repeat()
        hist = model.fit(batches, steps_per_epoch=SAMPLES // GLOBAL_BATCH, epochs=EPOCHS,
                         callbacks=callbacks, verbose=0)
    else:
        hist = model.fit(x[idx], y[idx], batch_size=local_batch, epochs=EPOCHS, shuffle=False,
                         callbacks=callbacks, verbose=0)
    return {"weights": np.concatenate([np.ravel(w) for w in model.get_weights()]).tolist(),
            "loss": [float(v) for v in hist.history["loss"]]}


if __name__ == "__main__":
    hvd.init()
    out = train(hvd)
    if hvd.rank() == 0:
        print("RESULT " + json.dumps(out))
    sys.stdout.flush()
