"""shoal.train.Trainer running TensorFlow: TF_CONFIG for MultiWorkerMirroredStrategy
(TensorflowConfig), and Keras checkpoints reported through shoal.train.report."""
import os

import numpy as np
import pytest

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]

STEPS, LOCAL = 6, 8


@pytest.fixture(scope="module")
def cluster():
    import shoal
    if shoal.is_initialized():
        shoal.shutdown()
    shoal.init(num_cpus=4)
    yield
    shoal.shutdown()


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(STEPS * 2 * LOCAL, 5)).astype(np.float32)
    y = (x @ rng.normal(size=(5, 1))).astype(np.float32)
    return x, y


def _sgd_loop(strategy, rank, size):
    """Plain SGD on an MLP; rank r takes rows r, r+size, ... of every global batch."""
    import keras
    import tensorflow as tf
    keras.utils.set_random_seed(7)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(8, activation="tanh"),
                              keras.layers.Dense(1)])
    variables = model.trainable_variables
    x, y = _data()

    def replica(xb, yb):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((model(xb) - yb) ** 2)
        grads = tape.gradient(loss, variables)
        if strategy is not None:
            ctx = tf.distribute.get_replica_context()
            grads = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, grads)
        for v, g in zip(variables, grads):
            v.assign_sub(0.05 * g)
        return loss

    @tf.function
    def step(xb, yb):
        if strategy is None:
            return replica(xb, yb)
        return strategy.run(replica, args=(xb, yb))

    g = 2 * LOCAL
    for i in range(STEPS):
        rows = slice(i * g + rank, (i + 1) * g, size)
        step(tf.constant(x[rows]), tf.constant(y[rows]))
    return [np.asarray(w) for w in model.get_weights()]


def mwms_loop(config):
    import json
    import tensorflow as tf
    import shoal.train as st
    tf_config = json.loads(os.environ["TF_CONFIG"])
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    ctx = st.get_context()
    weights = _sgd_loop(strategy, ctx.rank, ctx.world_size)
    st.report({"workers": len(tf_config["cluster"]["worker"]),
               "index": tf_config["task"]["index"],
               "replicas": strategy.num_replicas_in_sync},
              checkpoint=st.Checkpoint.from_dict({"weights": weights}))


def _reference(comm):
    return _sgd_loop(None, 0, 1)


def test_tf_config_gang_with_multiworker_mirrored_equals_one_worker(cluster, tmp_path, tf_pool):
    import shoal.train as st
    result = st.Trainer(mwms_loop, num_workers=2, strategy=st.TensorflowConfig(),
                        run_config=st.RunConfig(name="mwms", storage_path=str(tmp_path),
                                                verbose=0)).fit()
    assert result.error is None
    assert result.metrics["workers"] == 2 and result.metrics["replicas"] == 2
    assert result.metrics["index"] == 0
    ref = tf_pool.run(_reference, 1)[0]
    for w, r in zip(result.checkpoint.to_dict()["weights"], ref):
        np.testing.assert_allclose(w, r, rtol=1e-5, atol=1e-6)
    assert "TF_CONFIG" not in os.environ


def keras_hvd_loop(config):
    """Horovod's Keras face inside a Trainer worker (hvd.init() takes the gang's group), with
    Keras checkpoints through ReportCheckpointCallback; rank 1 dies once, in epoch 2."""
    import keras
    import shoal.horovod.tensorflow.keras as hvd
    from shoal.train.keras import ReportCheckpointCallback, resume
    hvd.init()
    try:
        x, y = _data()
        # a restored model's optimizer comes back as the plain SGD it was saved as: wrap it
        model, start = resume(custom_objects=None, compile=False)
        if model is None:
            keras.utils.set_random_seed(7)
            model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(8, activation="tanh"),
                                      keras.layers.Dense(1)])
        model.compile(optimizer=hvd.DistributedOptimizer(keras.optimizers.SGD(0.05)), loss="mse")

        class Die(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                if epoch == 2 and hvd.rank() == 1 and not os.path.exists(config["marker"]):
                    open(config["marker"], "w").close()
                    os._exit(1)

        rows = np.arange(len(x))[hvd.rank()::hvd.size()]
        model.fit(x[rows], y[rows], batch_size=LOCAL, epochs=4, initial_epoch=start,
                  shuffle=False, verbose=0,
                  callbacks=[hvd.callbacks.BroadcastGlobalVariablesCallback(0),
                             hvd.callbacks.MetricAverageCallback(), Die(),
                             ReportCheckpointCallback(metrics=["loss"])])
    finally:
        hvd.shutdown()


def test_keras_checkpoints_are_reported_and_a_dead_worker_resumes_from_them(cluster, tmp_path):
    import shoal.train as st
    from shoal.train.keras import resume
    marker = str(tmp_path / "died")
    result = st.Trainer(keras_hvd_loop, num_workers=2, config={"marker": marker},
                        run_config=st.RunConfig(name="keras", storage_path=str(tmp_path),
                                                verbose=0),
                        failure_config=st.FailureConfig(max_failures=1)).fit()
    assert result.error is None and os.path.exists(marker)
    assert result.attempts == 2
    epochs = list(result.metrics_dataframe["epoch"])
    assert epochs == [1, 2, 3, 4]          # epochs 3 and 4 ran after the restart, from epoch 2's
    assert np.isfinite(result.metrics["loss"])
    model, next_epoch = resume(result.checkpoint, compile=False)
    assert next_epoch == 4 and model.count_params() == 5 * 8 + 8 + 8 + 1


def mwms_keras2_fit_loop(config):
    """Ray Train's TensorflowTrainer example's shape: MultiWorkerMirroredStrategy, the model
    compiled in its scope, model.fit with ReportCheckpointCallback, on Keras 2 (whose
    model.fit runs under the strategy with several workers; Keras 3's does not)."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"       # before TensorFlow loads
    import tensorflow as tf
    from shoal.train.keras import ReportCheckpointCallback
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    x, y = _data()
    with strategy.scope():
        tf.keras.utils.set_random_seed(7)
        model = tf.keras.Sequential([tf.keras.Input((5,)),
                                     tf.keras.layers.Dense(8, activation="tanh"),
                                     tf.keras.layers.Dense(1)])
        model.compile(optimizer=tf.keras.optimizers.SGD(0.05), loss="mse")
    # every worker passes the whole data; batch_size is the global batch, cut per worker
    model.fit(x, y, batch_size=2 * LOCAL, epochs=2, shuffle=False, verbose=0,
              callbacks=[ReportCheckpointCallback(metrics=["loss"])])


def _keras2_fit(comm, path=None):
    """The same fit on one process (Keras 2), or the weights of the model saved at ``path``."""
    import tensorflow as tf
    if path is not None:
        return [np.asarray(w) for w in tf.keras.models.load_model(path).get_weights()]
    x, y = _data()
    tf.keras.utils.set_random_seed(7)
    model = tf.keras.Sequential([tf.keras.Input((5,)), tf.keras.layers.Dense(8, activation="tanh"),
                                 tf.keras.layers.Dense(1)])
    model.compile(optimizer=tf.keras.optimizers.SGD(0.05), loss="mse")
    model.fit(x, y, batch_size=2 * LOCAL, epochs=2, shuffle=False, verbose=0)
    return [np.asarray(w) for w in model.get_weights()]


def test_mwms_model_fit_on_keras_2_reports_keras_checkpoints(tmp_path, tf2_pool):
    import shoal
    import shoal.train as st
    if shoal.is_initialized():
        shoal.shutdown()
    shoal.init(num_cpus=4)               # fresh workers: TensorFlow not yet loaded in them
    try:
        result = st.Trainer(mwms_keras2_fit_loop, num_workers=2, strategy=st.TensorflowConfig(),
                            run_config=st.RunConfig(name="keras2", storage_path=str(tmp_path),
                                                    verbose=0)).fit()
    finally:
        shoal.shutdown()
    assert result.error is None
    assert list(result.metrics_dataframe["epoch"]) == [1, 2]
    saved = os.path.join(result.checkpoint.path, "model.keras")
    got = tf2_pool.run(_keras2_fit, 1, saved)[0]
    for w, r in zip(got, tf2_pool.run(_keras2_fit, 1)[0]):
        np.testing.assert_allclose(w, r, rtol=1e-5, atol=1e-6)
