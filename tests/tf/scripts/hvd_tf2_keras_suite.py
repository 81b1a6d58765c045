"""Checks in the manner of Horovod's test/parallel/test_tensorflow2_keras.py (written for
shoal, same expectations, public API only), run as a unittest program on every rank under
``TF_USE_LEGACY_KERAS=1 shoal launch -n 2``: Keras 2, its legacy optimizers included."""
import unittest

import numpy as np
import tensorflow as tf
from tensorflow import keras

import shoal.horovod.tensorflow.keras as hvd


def _embedding(opt):
    """An Embedding model compiled with ``opt``, rank 0's weights everywhere, and this
    rank's data (its gradient is an IndexedSlices)."""
    model = keras.models.Sequential()
    model.add(keras.layers.Embedding(1000, 64, input_length=10))
    model.compile(loss=keras.losses.mean_squared_error, optimizer=opt,
                  experimental_run_tf_function=False)
    rng = np.random.default_rng(hvd.rank())
    x, y = rng.integers(1000, size=(32, 10)), rng.random((32, 10, 64))
    hvd.broadcast_variables(model.variables, root_rank=0)
    return model, x, y


class HorovodTf2KerasTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        hvd.init()

    def test_keras_is_keras_2(self):
        self.assertTrue(type(keras.optimizers.SGD()).__module__.startswith("tf_keras"))

    def test_train_model_lr_schedule(self):
        initial_lr = 0.1 * hvd.size()
        opt = hvd.DistributedOptimizer(keras.optimizers.legacy.Adam())

        def linear_multiplier(epoch):
            return epoch

        model = keras.models.Sequential()
        model.add(keras.layers.Dense(2, input_shape=(3,)))
        model.add(keras.layers.RepeatVector(3))
        model.add(keras.layers.ThresholdedReLU(0.5))
        model.compile(loss=keras.losses.mean_squared_error, optimizer=opt,
                      metrics=[keras.metrics.categorical_accuracy],
                      experimental_run_tf_function=False)
        rng = np.random.default_rng(hvd.rank())
        x, y = rng.random((10, 3)), rng.random((10, 3, 2))
        seen = []

        class StoreLearningRateCallback(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                seen.append((epoch, float(self.model.optimizer.lr.numpy())))

        callbacks = [
            hvd.callbacks.BroadcastGlobalVariablesCallback(0),
            hvd.callbacks.MetricAverageCallback(),
            hvd.callbacks.LearningRateWarmupCallback(initial_lr=initial_lr, warmup_epochs=5),
            hvd.callbacks.LearningRateScheduleCallback(initial_lr=initial_lr, multiplier=1e-1,
                                                       start_epoch=5, end_epoch=10),
            hvd.callbacks.LearningRateScheduleCallback(initial_lr=initial_lr, multiplier=1e-2,
                                                       start_epoch=10, end_epoch=15),
            hvd.callbacks.LearningRateScheduleCallback(initial_lr=initial_lr,
                                                       multiplier=linear_multiplier,
                                                       start_epoch=15, end_epoch=20),
            StoreLearningRateCallback()]
        history = model.fit(x, y, steps_per_epoch=5, callbacks=callbacks, epochs=20, verbose=0)
        for epoch, lr in seen:
            if epoch < 5:
                self.assertTrue(lr <= initial_lr or np.isclose(lr, initial_lr))
            if 5 < epoch < 10:
                self.assertTrue(lr <= initial_lr * 1e-1 or np.isclose(lr, initial_lr * 1e-1))
            if 10 < epoch < 15:
                self.assertTrue(lr < initial_lr * 1e-2 or np.isclose(lr, initial_lr * 1e-2))
            if 15 <= epoch < 20:
                self.assertTrue(np.isclose(lr, initial_lr * linear_multiplier(epoch)))
        self.assertEqual(len(seen), 20)
        # the averaged metrics are the same on every rank
        losses = tf.convert_to_tensor(history.history["loss"], dtype=tf.float32)
        np.testing.assert_allclose(hvd.broadcast(losses, root_rank=0).numpy(), losses.numpy())

    def test_sparse_as_dense(self):
        opt = hvd.DistributedOptimizer(keras.optimizers.RMSprop(learning_rate=0.0001),
                                       sparse_as_dense=True)
        model, x, y = _embedding(opt)
        model.train_on_batch(x, y)
        flat = model.get_weights()[0]
        np.testing.assert_array_equal(hvd.broadcast(tf.constant(flat), root_rank=0).numpy(),
                                      flat)

    def test_sparse_as_dense_with_grad_aggregation(self):
        opt = hvd.DistributedOptimizer(keras.optimizers.legacy.RMSprop(learning_rate=0.0001),
                                       sparse_as_dense=True, backward_passes_per_step=2)
        model, x, y = _embedding(opt)
        start = model.get_weights()[0]
        model.train_on_batch(x, y)
        np.testing.assert_array_equal(model.get_weights()[0], start)   # first pass: no update
        for _ in range(2):
            model.train_on_batch(x, y)
        self.assertEqual(int(opt.iterations.numpy()), 3)
        flat = model.get_weights()[0]
        self.assertFalse(np.array_equal(flat, start))
        np.testing.assert_array_equal(hvd.broadcast(tf.constant(flat), root_rank=0).numpy(),
                                      flat)

    def test_grad_aggregation_with_inf_grad(self):
        passes = 2
        step_count = tf.Variable(0, trainable=False, dtype=tf.int32)
        opt = hvd.DistributedOptimizer(keras.optimizers.legacy.SGD(),
                                       backward_passes_per_step=passes, sparse_as_dense=True)
        x = tf.Variable(0.)
        var = [x]

        def loss():
            step_count.assign_add(1)
            return tf.cond(pred=tf.greater(step_count, 1), true_fn=lambda: x,
                           false_fn=lambda: x * float("inf"))
        for _ in range(2 * passes):
            # the first cycle's gradient is infinite; its sums must not reach the second
            grads_and_vars = opt._compute_gradients(loss=loss, var_list=var)
            opt.apply_gradients(grads_and_vars)
        self.assertTrue(bool(tf.math.is_finite(grads_and_vars[0][0])))

    def test_from_config(self):
        hopt = hvd.DistributedOptimizer(keras.optimizers.legacy.Adam())
        cfg = hopt.get_config()
        self.assertEqual(cfg, hopt.from_config(cfg).get_config())
        self.assertEqual(cfg, hopt.__class__.from_config(cfg).get_config())

    def _aggregation(self, average, local_vars):
        class TestingOptimizer(keras.optimizers.legacy.Optimizer):
            """Adds the gradient to the variable: the update shows the aggregated gradient."""

            def get_config(self):
                return super().get_config()

            def _create_slots(self, var_list):
                pass

            def _resource_apply_dense(self, grad, var, apply_state=None):
                return var.assign_add(grad)

        passes = 4
        opt = hvd.DistributedOptimizer(optimizer=TestingOptimizer("test"),
                                       backward_passes_per_step=passes,
                                       average_aggregated_gradients=average,
                                       sparse_as_dense=True)
        _ = opt.iterations
        x0, y0, y1 = 0.0, 1.0, 2.0
        x = tf.Variable([x0])
        y = tf.Variable([y0, y1])
        if local_vars:
            opt.register_local_var(x)

        def loss():
            # tf.gather gives y an IndexedSlices gradient (made dense by sparse_as_dense)
            return x - tf.gather(y, [0])

        @tf.function
        def step(var_list, **kwargs):
            grads_and_vars = opt._compute_gradients(loss, var_list=var_list)
            opt.apply_gradients(grads_and_vars, **kwargs)

        for idx in range(10):
            step(var_list=[x, y], experimental_aggregate_gradients=False)
            updates = (idx + 1) // passes
            scale = 1.0 if average else float(passes)
            # local x: the same gradient on every rank, divided by the set's size (Average)
            gx = updates * scale * (1.0 / hvd.size() if local_vars else 1.0)
            self.assertTrue(np.isclose(x.numpy(), x0 + gx))
            self.assertTrue(np.allclose(y.numpy(), [y0 - updates * scale, y1]))
            self.assertEqual(idx + 1, int(opt.iterations.numpy()))

    def test_gradient_aggregation(self):
        for average in (True, False):
            with self.subTest(average=average):
                self._aggregation(average, local_vars=False)

    def test_gradient_aggregation_with_local_vars(self):
        for average in (True, False):
            with self.subTest(average=average):
                self._aggregation(average, local_vars=True)

    def test_broadcast_global_variables_callback_with_local_vars(self):
        root_rank = hvd.size() - 1
        rng = np.random.default_rng(0)
        X, Y = rng.random((1, 3)), rng.random((1, 3, 3))
        # every layer frozen, so that fit leaves the broadcast values as they are
        init = keras.initializers.Constant(hvd.rank())
        model = keras.models.Sequential()
        model.add(keras.layers.Dense(3, input_shape=(3,), kernel_initializer=init,
                                     bias_initializer=init, trainable=False))
        for _ in range(3):
            model.add(keras.layers.Dense(3, kernel_initializer=init, bias_initializer=init,
                                         trainable=False))
        model.add(keras.layers.RepeatVector(3))
        model.add(keras.layers.Dense(3, kernel_initializer=init, bias_initializer=init,
                                     trainable=False))
        model.compile(loss=keras.losses.MSE, metrics=[keras.metrics.categorical_accuracy])
        local = list(model.layers[0].variables)
        model.fit(X, Y, verbose=0, callbacks=[hvd.callbacks.BroadcastGlobalVariablesCallback(
            root_rank=root_rank, local_variables=local)])
        local_refs = {v.ref() for v in local}
        for var in model.variables:
            want = hvd.rank() if var.ref() in local_refs else root_rank
            np.testing.assert_allclose(var.numpy(), np.full(var.shape, float(want)))


if __name__ == "__main__":
    unittest.main(verbosity=2)
