"""Horovod's examples/tensorflow2/tensorflow2_mnist.py (a GradientTape loop), adapted:
generated 28x28 digits instead of a download, smaller layers, fewer steps. A Keras 2
script (``opt.variables()``): run it with ``TF_USE_LEGACY_KERAS=1`` and tf_keras
installed. The only Horovod-specific change: ``import shoal.horovod.tensorflow as hvd``.
Prints each rank's last loss and whether every rank ends with rank 0's weights."""
import sys

import numpy as np
import tensorflow as tf

import shoal.horovod.tensorflow as hvd
from generated_digits import generated_mnist

STEPS = 120


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
    loss = tf.losses.SparseCategoricalCrossentropy()
    opt = tf.optimizers.Adam(0.001 * hvd.size())
    checkpoint_dir = './checkpoints'
    checkpoint = tf.train.Checkpoint(model=mnist_model, optimizer=opt)

    @tf.function
    def training_step(images, labels, first_batch):
        with tf.GradientTape() as tape:
            probs = mnist_model(images, training=True)
            loss_value = loss(labels, probs)
        tape = hvd.DistributedGradientTape(tape)
        grads = tape.gradient(loss_value, mnist_model.trainable_variables)
        opt.apply_gradients(zip(grads, mnist_model.trainable_variables))
        if first_batch:
            hvd.broadcast_variables(mnist_model.variables, root_rank=0)
            hvd.broadcast_variables(opt.variables(), root_rank=0)
        return loss_value

    for batch, (images, labels) in enumerate(dataset.take(STEPS // hvd.size())):
        loss_value = training_step(images, labels, batch == 0)
        if batch % 10 == 0 and hvd.local_rank() == 0:
            print('Step #%d\tLoss: %.6f' % (batch, loss_value))

    flat = np.concatenate([np.ravel(w) for w in mnist_model.get_weights()])
    same = np.array_equal(hvd.broadcast(tf.constant(flat), root_rank=0).numpy(), flat)
    print(f"[{hvd.rank()}] FINAL loss={float(loss_value):.4f} "
          f"weights_equal={bool(hvd.allreduce(tf.constant(float(same)), op=hvd.Min))}",
          flush=True)
    if hvd.rank() == 0:
        checkpoint.save(checkpoint_dir)
        return mnist_model


if __name__ == '__main__':
    train()
    sys.stdout.flush()
