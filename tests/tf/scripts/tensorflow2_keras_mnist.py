"""Horovod's examples/tensorflow2/tensorflow2_keras_mnist.py, adapted: generated 28x28
digits instead of a download, smaller layers, fewer steps and epochs. It is a Keras 2
script (``experimental_run_tf_function`` in ``compile``, an ``.h5`` checkpoint): run it
with ``TF_USE_LEGACY_KERAS=1`` and tf_keras installed. The only Horovod-specific change:
``import shoal.horovod.tensorflow.keras as hvd``. Prints rank 0's last accuracy and
whether every rank ends with rank 0's weights."""
import sys

import numpy as np
import tensorflow as tf

import shoal.horovod.tensorflow.keras as hvd
from generated_digits import generated_mnist

STEPS, EPOCHS = 40, 4


def train():
    hvd.init()
    gpus = tf.config.experimental.list_physical_devices('GPU')
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    if gpus:
        tf.config.experimental.set_visible_devices(gpus[hvd.local_rank()], 'GPU')

    mnist_images, mnist_labels = generated_mnist(2048, seed=hvd.rank())
    dataset = tf.data.Dataset.from_tensor_slices(
        (tf.cast(mnist_images[..., tf.newaxis] / 255.0, tf.float32),
         tf.cast(mnist_labels, tf.int64)))
    dataset = dataset.repeat().shuffle(1000).batch(32)

    mnist_model = tf.keras.Sequential([
        tf.keras.layers.Conv2D(8, [3, 3], activation='relu'),
        tf.keras.layers.Conv2D(16, [3, 3], activation='relu'),
        tf.keras.layers.MaxPooling2D(pool_size=(2, 2)),
        tf.keras.layers.Dropout(0.25),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(32, activation='relu'),
        tf.keras.layers.Dropout(0.5),
        tf.keras.layers.Dense(10, activation='softmax')
    ])

    scaled_lr = 0.001 * hvd.size()
    opt = tf.optimizers.Adam(scaled_lr)
    opt = hvd.DistributedOptimizer(
        opt, backward_passes_per_step=1, average_aggregated_gradients=True)
    mnist_model.compile(loss=tf.losses.SparseCategoricalCrossentropy(),
                        optimizer=opt,
                        metrics=['accuracy'],
                        experimental_run_tf_function=False)

    callbacks = [
        hvd.callbacks.BroadcastGlobalVariablesCallback(0),
        hvd.callbacks.MetricAverageCallback(),
        hvd.callbacks.LearningRateWarmupCallback(initial_lr=scaled_lr, warmup_epochs=2,
                                                 verbose=1),
    ]
    if hvd.rank() == 0:
        callbacks.append(tf.keras.callbacks.ModelCheckpoint('./checkpoint-{epoch}.h5'))
    verbose = 1 if hvd.rank() == 0 else 0
    history = mnist_model.fit(dataset, steps_per_epoch=STEPS // hvd.size(), callbacks=callbacks,
                              epochs=EPOCHS, verbose=verbose)

    flat = np.concatenate([np.ravel(w) for w in mnist_model.get_weights()])
    same = np.array_equal(hvd.broadcast(tf.constant(flat), root_rank=0).numpy(), flat)
    print(f"[{hvd.rank()}] FINAL accuracy={history.history['accuracy'][-1]:.3f} "
          f"weights_equal={bool(hvd.allreduce(tf.constant(float(same)), op=hvd.Min))}",
          flush=True)
    return mnist_model


if __name__ == '__main__':
    train()
    sys.stdout.flush()
