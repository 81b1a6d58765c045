"""shoal.train.tf_distribute.ShoalStrategy: tf.distribute on shoal.collective, with Keras'
fit and with a custom loop, on Keras 3 and Keras 2; 2 workers equal 1 worker on the
concatenated batch."""
import numpy as np
import pytest

# the rank processes import TensorFlow (tens of seconds on a loaded machine)
pytestmark = pytest.mark.timeout(600)

GLOBAL_BATCH, SAMPLES = 32, 128


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(SAMPLES, 8)).astype(np.float32)
    y = (x @ rng.normal(size=(8,)) > 0).astype(np.int64)
    return x, y


def _keras_fit(comm):
    """Every worker passes the whole data set; batch_size is the global batch (as MWMS)."""
    from tensorflow import keras     # Keras 3, or Keras 2 in the keras2 pool
    from shoal.train.tf_distribute import ShoalStrategy
    strategy = ShoalStrategy(comm)
    x, y = _data()
    keras.utils.set_random_seed(1 + comm.rank)   # different draws: rank 0's weights must win
    with strategy.scope():
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                                  keras.layers.Dense(2)])
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), metrics=["accuracy"],
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    hist = model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=2, shuffle=False, verbose=0)
    return {"replicas": strategy.num_replicas_in_sync, "weights": model.get_weights(),
            "loss": hist.history["loss"]}


def test_keras_fit_on_two_workers_equals_one_worker_on_the_global_batch(keras_pool):
    one = keras_pool.run(_keras_fit, 1)[0]
    two = keras_pool.run(_keras_fit, 2)
    assert one["replicas"] == 1 and two[0]["replicas"] == 2
    for a, b, ref in zip(two[0]["weights"], two[1]["weights"], one["weights"]):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, ref, rtol=1e-5, atol=1e-6)
    # each worker logs the loss of its half of every batch: their mean is the global loss
    np.testing.assert_allclose((np.array(two[0]["loss"]) + two[1]["loss"]) / 2, one["loss"],
                               rtol=1e-5)


def _custom_loop(comm, steps):
    """A GradientTape loop in tf.function with strategy.run (Keras' optimizer sums the
    gradients over the replicas with ReplicaContext.all_reduce, as under MWMS); the data
    comes through distribute_datasets_from_function (each worker its own rows)."""
    import tensorflow as tf
    from tensorflow import keras     # Keras 3, or Keras 2 in the keras2 pool
    from shoal.train.tf_distribute import ShoalStrategy
    strategy = ShoalStrategy(comm)
    x, y = _data()
    keras.utils.set_random_seed(3)
    with strategy.scope():
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8, activation="tanh"),
                                  keras.layers.Dense(1)])
        opt = keras.optimizers.SGD(0.2)   # not Adam: it would hide a wrong gradient scale
    variables = model.trainable_variables

    def dataset_fn(ctx):
        per_replica = ctx.get_per_replica_batch_size(GLOBAL_BATCH)
        rows = np.concatenate([np.arange(b, b + GLOBAL_BATCH)[ctx.input_pipeline_id::
                                                               ctx.num_input_pipelines]
                               for b in range(0, SAMPLES, GLOBAL_BATCH)])
        yf = y[rows, None].astype(np.float32)
        return tf.data.Dataset.from_tensor_slices((x[rows], yf)).batch(per_replica)

    def replica(xb, yb):
        with tf.GradientTape() as tape:
            per_example = (model(xb, training=True) - yb) ** 2
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=GLOBAL_BATCH)
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return tf.distribute.get_replica_context().all_reduce("sum", loss)

    @tf.function
    def step(batch):
        return strategy.run(replica, args=batch)

    losses = [float(step(b)) for b in strategy.distribute_datasets_from_function(dataset_fn)]
    gathered = strategy.gather(tf.constant([[float(comm.rank)] * 2]), axis=0)
    return {"weights": model.get_weights(), "losses": losses[:steps],
            "gathered": gathered.numpy().tolist()}


def test_custom_loop_on_two_workers_equals_one_worker(keras_pool):
    one = keras_pool.run(_custom_loop, 1, 4)[0]
    two = keras_pool.run(_custom_loop, 2, 4)
    for a, b, ref in zip(two[0]["weights"], two[1]["weights"], one["weights"]):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(two[0]["losses"], one["losses"], rtol=1e-5)
    assert two[0]["losses"] == two[1]["losses"]
    assert two[1]["gathered"] == [[0.0, 0.0], [1.0, 1.0]]


def _bad_input(comm):
    import tensorflow as tf
    from shoal.train.tf_distribute import ShoalStrategy
    strategy = ShoalStrategy(comm)
    errors = []
    for bad in (tf.constant(["a"]), tf.ragged.constant([[1.0], [2.0, 3.0]])):
        try:
            strategy.run(lambda v: tf.distribute.get_replica_context().all_reduce("sum", v),
                         args=(bad,))
        except (TypeError, ValueError) as e:
            errors.append(f"{type(e).__name__}: {e}")
    ok = strategy.reduce("mean", tf.constant([1.0 + comm.rank]), axis=None)
    return errors, ok.numpy().tolist()


def test_unsupported_values_are_rejected_and_the_group_goes_on(tf_pool):
    for errors, ok in tf_pool.run(_bad_input, 2):
        assert len(errors) == 2
        assert "tf.string" in errors[0]
        assert "TypeError" in errors[1] and "tf.RaggedTensor" in errors[1]
        assert ok == [1.5]


def _buckets_equal_one_buffer(comm):
    """The same reduction in 256-byte buckets (started early, finished after) and in one
    buffer; mixed dtypes and a scalar."""
    import tensorflow as tf
    from shoal.train.tf_distribute import ShoalStrategy
    values = [tf.fill([40], 1.0 + comm.rank), tf.constant(2.0 * comm.rank),
              tf.range(70, dtype=tf.int64) * (comm.rank + 1), tf.ones([3, 30]) * comm.rank]
    out = []
    for bucket_bytes in (0, 256):
        strategy = ShoalStrategy(comm, bucket_bytes=bucket_bytes)

        @tf.function
        def step():
            return strategy.run(
                lambda: tf.distribute.get_replica_context().all_reduce("sum", values))
        out.append([t.numpy().tolist() for t in step()])
    return out


def test_bucketed_reduction_equals_one_buffer(tf_pool):
    for one, bucketed in tf_pool.run(_buckets_equal_one_buffer, 2):
        assert one == bucketed
        assert one[0] == [3.0] * 40 and one[1] == 2.0
        assert one[2] == [3 * i for i in range(70)] and one[3] == [[1.0] * 30] * 3


def _unknown_dimensions(comm):
    """Tensors whose sizes are known only when the step runs (packed and cut at run time)."""
    import tensorflow as tf
    from shoal.train.tf_distribute import ShoalStrategy
    strategy = ShoalStrategy(comm)

    @tf.function(input_signature=[tf.TensorSpec([None, 3]), tf.TensorSpec([None])])
    def step(a, b):
        return strategy.run(lambda: tf.distribute.get_replica_context().all_reduce("sum", [a, b]))
    out = step(tf.ones([2, 3]) * (comm.rank + 1), tf.range(4, dtype=tf.float32))
    return [t.numpy().tolist() for t in out]


def test_reduction_of_tensors_with_unknown_dimensions(tf_pool):
    for a, b in tf_pool.run(_unknown_dimensions, 2):
        assert a == [[3.0] * 3] * 2
        assert b == [0.0, 2.0, 4.0, 6.0]
