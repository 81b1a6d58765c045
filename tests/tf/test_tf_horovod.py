"""shoal.horovod.tensorflow / .keras: Horovod's TensorFlow and Keras APIs on shoal."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

# the rank processes import TensorFlow (tens of seconds on a loaded machine)
pytestmark = pytest.mark.timeout(600)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def _keras_in_use(comm):
    import tensorflow as tf
    import shoal.horovod.tensorflow.keras as hvd
    opt = hvd.DistributedOptimizer(tf.keras.optimizers.SGD(0.1))
    return (type(opt).__mro__[1].__module__.split(".")[0],
            hvd.callbacks.MetricAverageCallback.__mro__[1].__module__.split(".")[0],
            hvd.SyncBatchNormalization.__mro__[1].__module__.split(".")[0])


def test_the_faces_wrap_the_keras_of_tf_keras(keras_pool, request):
    want = "tf_keras" if request.node.callspec.params["keras_pool"] == "keras2" else "keras"
    assert keras_pool.run(_keras_in_use, 1)[0] == (want, want, want)


def _ops(comm):
    import tensorflow as tf
    import shoal.horovod.tensorflow as hvd
    hvd.init(comm=comm)
    try:
        r = hvd.rank()
        out = {"ar": hvd.allreduce(tf.constant([1.0, 2.0 + r])).numpy().tolist(),
               "sum": hvd.allreduce(tf.constant([1, 2]), op=hvd.Sum).numpy().tolist(),
               "ag": hvd.allgather(tf.fill([r + 1, 2], float(r))).numpy().tolist(),
               "bc": hvd.broadcast(tf.constant([r, r]), root_rank=1).numpy().tolist(),
               "rs": hvd.reducescatter(tf.ones([4, 1]) * (r + 1), op=hvd.Sum).numpy().tolist(),
               "fp16": hvd.allreduce(tf.constant([1.0, 3.0]),
                                     compression=hvd.Compression.fp16).numpy().tolist(),
               "obj": hvd.broadcast_object({"a": r}, root_rank=1)}
        a, s = hvd.alltoall(tf.constant([[r], [10 + r]]))
        out["a2a"] = (a.numpy().tolist(), s.numpy().tolist())
        v = tf.Variable([float(r), 5.0 * r])
        hvd.broadcast_variables([v], root_rank=1)
        out["bv"] = v.numpy().tolist()
        sl = hvd.allreduce(tf.IndexedSlices(tf.constant([[1.0, 1.0]]), tf.constant([r]),
                                            tf.constant([2, 2], tf.int64)))
        out["sparse"] = tf.convert_to_tensor(sl).numpy().tolist()

        @tf.function
        def f(x):
            return hvd.allreduce(x, op=hvd.Sum), hvd.allgather(x)
        y, g = f(tf.constant([float(r)]))
        out["graph"] = (y.numpy().tolist(), g.numpy().tolist())

        @tf.function
        def rs(a, b):       # a group of one dtype with static shapes, in a graph
            return hvd.grouped_reducescatter([a, b], op=hvd.Sum)
        p, q = rs(tf.ones([4, 1]) * (r + 1), tf.fill([2, 3], float(r)))
        out["graph_rs"] = (p.numpy().tolist(), q.numpy().tolist())
        x = tf.constant([1.0, 2.0])
        with tf.GradientTape() as tape:
            tape.watch(x)
            z = tf.reduce_sum(hvd.allreduce(x * (r + 1), op=hvd.Sum))
        out["grad"] = tape.gradient(z, x).numpy().tolist()
        return out
    finally:
        hvd.shutdown()


def test_ops_match_horovod_semantics_eager_and_in_tf_function(tf_pool):
    for r, out in enumerate(tf_pool.run(_ops, 2)):
        assert out["ar"] == [1.0, 2.5] and out["sum"] == [2, 4]
        assert out["ag"] == [[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]
        assert out["bc"] == [1, 1] and out["bv"] == [1.0, 5.0] and out["obj"] == {"a": 1}
        assert out["rs"] == [[3.0], [3.0]]
        assert out["fp16"] == [1.0, 3.0]
        assert out["a2a"] == ([[10 * r], [10 * r + 1]], [1, 1])
        assert out["sparse"] == [[0.5, 0.5], [0.5, 0.5]]     # Average over 2 ranks
        assert out["graph"] == ([1.0], [0.0, 1.0])
        assert out["graph_rs"] == ([[3.0], [3.0]], [[1.0, 1.0, 1.0]])   # this rank's part
        assert out["grad"] == [2.0 * (r + 1)] * 2              # Sum's gradient: Sum of ones


def _tape_loop(comm, steps):
    """A custom GradientTape loop inside tf.function; each rank takes half of each batch."""
    from tensorflow import keras     # Keras 3, or Keras 2 in the keras2 pool
    import tensorflow as tf
    import shoal.horovod.tensorflow as hvd
    hvd.init(comm=comm)
    try:
        keras.utils.set_random_seed(3)
        rng = np.random.default_rng(0)
        x = rng.normal(size=(steps * 16, 6)).astype(np.float32)
        y = rng.normal(size=(steps * 16, 1)).astype(np.float32)
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="tanh"),
                                  keras.layers.Dense(1)])
        opt = keras.optimizers.Adam(0.01)

        @tf.function
        def step(xb, yb, first):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean((model(xb, training=True) - yb) ** 2)
            tape = hvd.DistributedGradientTape(tape)
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables))
            if first:
                hvd.broadcast_variables(model.variables, root_rank=0)
                hvd.broadcast_variables(opt.variables, root_rank=0)
            return loss

        for i in range(steps):
            sl = slice(i * 16 + hvd.rank(), (i + 1) * 16, hvd.size())
            step(x[sl], y[sl], i == 0)
        return [np.asarray(w) for w in model.get_weights()]
    finally:
        hvd.shutdown()


def test_gradient_tape_on_two_workers_equals_one_worker_on_the_whole_batch(keras_pool):
    two = keras_pool.run(_tape_loop, 2, 4)
    one = keras_pool.run(_tape_loop, 1, 4)[0]
    for a, b, ref in zip(two[0], two[1], one):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, ref, rtol=1e-5, atol=1e-6)


def _keras_fit(comm, tf_data=False, legacy=False):
    import shoal.horovod.tensorflow.keras as hvd
    sys.path.insert(0, os.path.join(HERE, "scripts"))
    import keras_mlp
    hvd.init(comm=comm)
    try:
        return keras_mlp.train(hvd, tf_data, legacy)
    finally:
        hvd.shutdown()


@pytest.fixture(scope="module")
def keras_one_worker(keras_pool):
    return keras_pool.run(_keras_fit, 1)[0]


def test_keras_fit_on_two_workers_equals_one_worker(keras_pool, keras_one_worker):
    two = keras_pool.run(_keras_fit, 2)
    assert two[0] == two[1]                       # weights and averaged metrics agree
    np.testing.assert_allclose(two[0]["weights"], keras_one_worker["weights"], rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(two[0]["loss"], keras_one_worker["loss"], rtol=1e-4)


def test_keras_fit_on_a_tf_data_dataset_on_two_workers_equals_one_worker(keras_pool,
                                                                        keras_one_worker):
    """As Horovod's Keras example feeds model.fit: a repeated tf.data dataset, per-rank rows."""
    two = keras_pool.run(_keras_fit, 2, True)
    assert two[0] == two[1]
    np.testing.assert_allclose(two[0]["weights"], keras_one_worker["weights"], rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(two[0]["loss"], keras_one_worker["loss"], rtol=1e-4)


def test_keras_2_legacy_optimizers_on_two_workers_equal_one_worker(tf2_pool):
    """Keras 2's older optimizers (tf_keras.optimizers.legacy, OptimizerV2) are wrapped too."""
    one = tf2_pool.run(_keras_fit, 1, False, True)[0]
    two = tf2_pool.run(_keras_fit, 2, False, True)
    assert two[0] == two[1]
    np.testing.assert_allclose(two[0]["weights"], one["weights"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(two[0]["loss"], one["loss"], rtol=1e-4)


@pytest.mark.slow
def test_a_horovod_keras_script_runs_under_shoal_launch(keras_one_worker):
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-m", "shoal.launch", "-n", "2",
                        os.path.join(HERE, "scripts", "keras_mlp.py")],
                       capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    out = json.loads(re.search(r"RESULT (.*)", r.stdout).group(1))
    np.testing.assert_allclose(out["weights"], keras_one_worker["weights"], rtol=1e-4,
                               atol=1e-5)


def _launch_keras2(script, cwd):
    """``TF_USE_LEGACY_KERAS=1 shoal launch -n 2 scripts/<script>`` in ``cwd``; asserts it
    exits 0 and returns the completed process."""
    pytest.importorskip("tf_keras")
    env = dict(os.environ, PYTHONPATH=ROOT, TF_USE_LEGACY_KERAS="1")
    r = subprocess.run([sys.executable, "-m", "shoal.launch", "-n", "2",
                        os.path.join(HERE, "scripts", script)],
                       capture_output=True, text=True, timeout=300, env=env, cwd=cwd)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return r


@pytest.mark.slow
def test_horovods_keras_2_mnist_example_runs_under_tf_keras(tmp_path):
    """Horovod's Keras example as written for Keras 2 (experimental_run_tf_function, an .h5
    checkpoint on rank 0, the warm-up callback), run under TF_USE_LEGACY_KERAS=1."""
    r = _launch_keras2("tensorflow2_keras_mnist.py", tmp_path)
    finals = re.findall(r"\[(\d)\] FINAL accuracy=([\d.]+) weights_equal=(\w+)", r.stdout)
    assert sorted(f[0] for f in finals) == ["0", "1"]
    assert all(f[2] == "True" for f in finals)
    assert float(finals[0][1]) > 0.5            # chance: 0.1
    assert "finished gradual learning rate warmup" in r.stdout
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*.h5")) == [
        f"checkpoint-{e}.h5" for e in range(1, 5)]


@pytest.mark.slow
def test_horovods_gradient_tape_mnist_example_runs_under_tf_keras(tmp_path):
    """Horovod's tensorflow2_mnist.py (DistributedGradientTape in a tf.function,
    broadcast_variables of opt.variables() after the first step, tf.train.Checkpoint)."""
    r = _launch_keras2("tensorflow2_mnist.py", tmp_path)
    finals = dict((rank, (float(loss), same)) for rank, loss, same in re.findall(
        r"\[(\d)\] FINAL loss=([\d.]+) weights_equal=(\w+)", r.stdout))
    assert sorted(finals) == ["0", "1"]
    assert all(same == "True" for _, same in finals.values())
    first = float(re.search(r"Step #0\tLoss: ([\d.]+)", r.stdout).group(1))
    assert finals["0"][0] < first / 2          # it learns (2.3 at the start: chance)
    assert (tmp_path / "checkpoints-1.index").exists()


@pytest.mark.slow
def test_horovods_tf2_keras_checks_pass_on_keras_2():
    """scripts/hvd_tf2_keras_suite.py: the cases of Horovod's test_tensorflow2_keras.py that
    use the public API (schedules and warm-up, sparse_as_dense, aggregation with a custom
    OptimizerV2 and local variables, from_config, the broadcast callback's local variables)."""
    r = _launch_keras2("hvd_tf2_keras_suite.py", ROOT)
    out = r.stdout + r.stderr
    assert out.count("Ran 9 tests") == 2 and out.count("] OK") == 2, out[-5000:]


def _broadcast_with_local(comm):
    """BroadcastGlobalVariablesCallback(local_variables=): frozen layers made with each
    rank's number; after fit, the local layer keeps it, the others hold rank 1's."""
    from tensorflow import keras     # Keras 3, or Keras 2 in the keras2 pool
    import shoal.horovod.tensorflow.keras as hvd
    hvd.init(comm=comm)
    try:
        init = keras.initializers.Constant(hvd.rank())
        model = keras.Sequential([keras.Input((3,)),
                                  keras.layers.Dense(3, kernel_initializer=init,
                                                     bias_initializer=init, trainable=False),
                                  keras.layers.Dense(2, kernel_initializer=init,
                                                     bias_initializer=init, trainable=False)])
        model.compile(loss="mse", optimizer=hvd.DistributedOptimizer(keras.optimizers.SGD()))
        local = list(model.layers[0].variables)
        model.fit(np.ones((2, 3)), np.ones((2, 2)), verbose=0, callbacks=[
            hvd.callbacks.BroadcastGlobalVariablesCallback(1, local_variables=local)])
        return [float(np.unique(np.asarray(v))[0]) for v in model.variables]
    finally:
        hvd.shutdown()


def test_the_broadcast_callback_leaves_local_variables_alone(keras_pool):
    for rank, values in enumerate(keras_pool.run(_broadcast_with_local, 2)):
        assert values == [rank, rank, 1.0, 1.0]


def _saved_and_loaded(comm, path):
    """Train with DistributedOptimizer(Adam), save on rank 0, hvd.load_model on every rank:
    the optimizer comes back wrapped, with the saved state, and training goes on in step."""
    import tensorflow as tf
    from tensorflow import keras     # Keras 3, or Keras 2 in the keras2 pool
    import shoal.horovod.tensorflow.keras as hvd
    hvd.init(comm=comm)
    try:
        rng = np.random.default_rng(hvd.rank())
        x = rng.normal(size=(16, 3)).astype(np.float32)
        y = rng.normal(size=(16, 1)).astype(np.float32)
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(1)])
        model.compile(optimizer=hvd.DistributedOptimizer(keras.optimizers.Adam(0.01)),
                      loss="mse", jit_compile=False)
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        if hvd.rank() == 0:
            model.save(path)
        hvd.barrier()
        loaded = hvd.load_model(path)
        saved_state = [np.asarray(v).tolist() for v in model.optimizer.variables]
        loaded_state = [np.asarray(v).tolist() for v in loaded.optimizer.variables]
        loaded.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        flat = np.concatenate([np.ravel(w) for w in loaded.get_weights()])
        same = np.array_equal(hvd.broadcast(tf.constant(flat), root_rank=0).numpy(), flat)
        return (type(loaded.optimizer).__name__, hasattr(loaded.optimizer, "_shoal_reducer"),
                saved_state == loaded_state, bool(same))
    finally:
        hvd.shutdown()


def test_load_model_wraps_the_saved_optimizer(keras_pool, tmp_path, request):
    keras2 = request.node.callspec.params["keras_pool"] == "keras2"
    path = str(tmp_path / ("model.h5" if keras2 else "model.keras"))
    for name, wrapped, state_kept, in_step in keras_pool.run(_saved_and_loaded, 2, path):
        assert (name, wrapped, state_kept, in_step) == ("Adam", True, True, True)


def _callbacks_and_errors(comm):
    from tensorflow import keras     # Keras 3, or Keras 2 in the keras2 pool
    import tensorflow as tf
    import shoal.horovod.tensorflow.keras as hvd
    hvd.init(comm=comm)
    try:
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        model.compile(optimizer=hvd.DistributedOptimizer(keras.optimizers.SGD(0.4)), loss="mse")
        seen = []
        record = keras.callbacks.LambdaCallback(on_batch_begin=lambda b, logs: seen.append(
            round(float(np.asarray(model.optimizer.learning_rate)), 6)))
        warm = hvd.callbacks.LearningRateWarmupCallback(0.4, warmup_epochs=2, momentum_correction=False)
        model.fit(np.ones((8, 2), np.float32), np.ones((8, 1), np.float32), batch_size=4,
                  epochs=3, callbacks=[warm, record], verbose=0)
        errors = []
        try:   # shapes differ between the ranks: the same error everywhere, then the next op runs
            hvd.allreduce(tf.ones([hvd.rank() + 1]), name="bad")
        except Exception as e:  # noqa: BLE001
            errors.append(f"{type(e).__name__}: {e}")
        try:
            hvd.DistributedOptimizer(keras.optimizers.SGD(), backward_passes_per_step=0)
        except ValueError as e:
            errors.append(str(e))
        try:
            hvd.allreduce(tf.ragged.constant([[1.0], [2.0, 3.0]]))
        except TypeError as e:
            errors.append(str(e))
        try:   # a group packed into one buffer: same total size, different shapes
            shapes = [[2, 3], [4]] if hvd.rank() == 0 else [[3, 2], [4]]
            hvd.grouped_allreduce([tf.ones(s) for s in shapes], name="badgroup")
        except Exception as e:  # noqa: BLE001
            errors.append(f"{type(e).__name__}: {e}")
        group = hvd.grouped_allreduce([tf.fill([2, 3], float(hvd.rank())), tf.ones([5])],
                                      op=hvd.Sum)
        after = hvd.allreduce(tf.constant([2.0]), op=hvd.Sum).numpy().tolist()
        return seen, errors, after, [g.numpy().tolist() for g in group]
    finally:
        hvd.shutdown()


def test_warmup_callback_and_errors(keras_pool):
    for seen, errors, after, group in keras_pool.run(_callbacks_and_errors, 2):
        # lr = 0.4 / 2 * (epoch * (2 - 1) / 2 + 1), epoch fractional per batch; then kept
        assert seen == [0.2, 0.25, 0.3, 0.35, 0.35, 0.35]
        assert "Mismatched allreduce shape" in errors[0] and "'bad'" in errors[0]
        assert "backward_passes_per_step=0 must be an int >= 1" in errors[1]
        assert "tf.RaggedTensor" in errors[2]
        assert "Mismatched allreduce shape" in errors[3] and "'badgroup'" in errors[3]
        assert "[2, 3]" in errors[3].replace("(2, 3)", "[2, 3]")
        assert after == [4.0]
        assert group == [[[1.0] * 3] * 2, [2.0] * 5]


def _aggregated(comm, average):
    """model.fit with backward_passes_per_step=2: on 2 workers of 16 rows each, batches of
    4; on 1 worker the rows of each update's 4 micro-batches as one batch of 16."""
    from tensorflow import keras     # Keras 3, or Keras 2 in the keras2 pool
    import shoal.horovod.tensorflow.keras as hvd
    hvd.init(comm=comm)
    try:
        rng = np.random.default_rng(0)
        X = rng.normal(size=(32, 3)).astype(np.float32)
        y = (X @ np.array([1.0, -2.0, 0.5], np.float32))[:, None] + 0.3
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        if hvd.size() == 1:
            # the sum of 2 passes (not divided by 2) steps twice as far
            opt = hvd.DistributedOptimizer(keras.optimizers.SGD(0.05 if average else 0.1))
            order = np.r_[0:8, 16:24, 8:16, 24:32]
            xs, ys, batch = X[order], y[order], 16
        else:
            opt = hvd.DistributedOptimizer(keras.optimizers.SGD(0.05), backward_passes_per_step=2,
                                           average_aggregated_gradients=average)
            rows = slice(16 * hvd.rank(), 16 * (hvd.rank() + 1))
            xs, ys, batch = X[rows], y[rows], 4
        model.compile(optimizer=opt, loss="mse", jit_compile=False)
        model.fit(xs, ys, batch_size=batch, epochs=2, shuffle=False, verbose=0)
        return ([w.tolist() for w in model.get_weights()], int(opt.iterations.numpy()))
    finally:
        hvd.shutdown()


@pytest.mark.parametrize("average", [True, False], ids=["averaged", "summed"])
def test_backward_passes_per_step_equals_one_worker_on_each_updates_rows(keras_pool, average):
    two = keras_pool.run(_aggregated, 2, average)
    (ref, ref_steps), = keras_pool.run(_aggregated, 1, average)
    assert two[0] == two[1]
    assert two[0][1] == 8 and ref_steps == 4     # every backward pass counts, as in Horovod
    for a, b in zip(two[0][0], ref):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _partial(comm):
    """One step of a model whose head is local, by PartialDistributedGradientTape and by
    model.fit with PartialDistributedOptimizer (SGD, learning rate 1); with each rank's
    plain gradients for reference."""
    from tensorflow import keras     # Keras 3, or Keras 2 in the keras2 pool
    import tensorflow as tf
    import shoal.horovod.tensorflow.keras as hvd
    hvd.init(comm=comm)
    try:
        rng = np.random.default_rng(hvd.rank())
        x = rng.normal(size=(8, 3)).astype(np.float32)
        y = rng.normal(size=(8, 1)).astype(np.float32)
        keras.utils.set_random_seed(0)          # the same initial weights on every rank
        shared, head = keras.layers.Dense(4), keras.layers.Dense(1)
        model = keras.Sequential([keras.Input((3,)), shared, head])
        variables = model.trainable_variables

        def tape_loss():
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean((model(x) - y) ** 2)
            return tape, loss
        tape, loss = tape_loss()
        plain = tape.gradient(loss, variables)
        tape, loss = tape_loss()
        tape = hvd.PartialDistributedGradientTape(tape, local_layers=[head])
        partial = tape.gradient(loss, variables)
        before = [v.numpy() for v in variables]
        opt = hvd.PartialDistributedOptimizer(keras.optimizers.SGD(1.0), local_layers=head)
        model.compile(optimizer=opt, loss="mse", jit_compile=False)
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        steps = [(b - v.numpy()).tolist() for b, v in zip(before, variables)]
        try:
            hvd.PartialDistributedGradientTape(tf.GradientTape(), local_layers=["dense"])
            error = None
        except ValueError as e:
            error = str(e)
        return ([g.numpy().tolist() for g in plain], [g.numpy().tolist() for g in partial],
                steps, error)
    finally:
        hvd.shutdown()


def test_partial_tape_and_optimizer_keep_the_local_layers_gradients_local(keras_pool):
    out = keras_pool.run(_partial, 2)
    plain = [[np.array(g) for g in o[0]] for o in out]
    for rank, (_, partial, steps, error) in enumerate(out):
        for i, (g, step) in enumerate(zip(partial, steps)):
            # kernel and bias of the shared layer: averaged; of the head: local, halved
            want = (plain[0][i] + plain[1][i]) / 2 if i < 2 else plain[rank][i] / 2
            np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(step, want, rtol=1e-4, atol=1e-5)   # SGD(1.0)
        assert "local_layers must be Keras layers; got str" in error
    assert out[0][2][:2] == out[1][2][:2] and out[0][2][2:] != out[1][2][2:]


def _sync_bn(comm):
    """SyncBatchNormalization on each rank's rows (6 on rank 0, 4 on rank 1), eager and in a
    tf.function, against BatchNormalization on all 10 rows; gradients of the sum of every
    rank's outputs times fixed weights."""
    from tensorflow import keras     # Keras 3, or Keras 2 in the keras2 pool
    import tensorflow as tf
    import shoal.horovod.tensorflow as hvd
    hvd.init(comm=comm)
    try:
        rng = np.random.default_rng(0)
        x_all = rng.normal(2.0, 3.0, size=(10, 3)).astype(np.float32)
        c_all = rng.normal(size=(10, 3)).astype(np.float32)
        rows = slice(0, 6) if hvd.rank() == 0 else slice(6, 10)
        if hvd.size() == 1:
            rows = slice(0, 10)
        x, c = tf.constant(x_all[rows]), tf.constant(c_all[rows])
        layer = (hvd.SyncBatchNormalization if hvd.size() > 1 else keras.layers.BatchNormalization)(
            momentum=0.5)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * c)
        dx = tape.gradient(loss, x)
        step = tf.function(lambda t: layer(t, training=True))
        y2 = step(x)
        return (y.numpy().tolist(), dx.numpy().tolist(), y2.numpy().tolist(),
                layer.moving_mean.numpy().tolist(), layer.moving_variance.numpy().tolist())
    finally:
        hvd.shutdown()


def test_sync_batch_normalization_equals_batch_normalization_on_every_ranks_rows(keras_pool):
    two = keras_pool.run(_sync_bn, 2)
    ref = keras_pool.run(_sync_bn, 1)[0]
    for part in range(3):       # outputs, input gradients, outputs in a tf.function
        got = two[0][part] + two[1][part]
        np.testing.assert_allclose(got, ref[part], rtol=1e-4, atol=1e-5)
    for part in (3, 4):         # moving statistics, updated twice
        np.testing.assert_allclose(two[0][part], ref[part], rtol=1e-5)
        assert two[0][part] == two[1][part]


def _undocumented(comm):
    import importlib
    import inspect
    out = []
    for package in ("shoal.horovod.tensorflow", "shoal.horovod.tensorflow.keras",
                    "shoal.horovod.keras", "shoal.horovod.tensorflow.keras.callbacks"):
        mod = importlib.import_module(package)
        for name in mod.__all__:
            obj = getattr(mod, name)
            if not inspect.ismodule(obj) and not getattr(obj, "__doc__", None):
                out.append(f"{package}.{name}")
    return out


def test_every_public_name_of_the_tf_faces_has_a_docstring(tf_pool):
    assert tf_pool.run(_undocumented, 1)[0] == []


@pytest.mark.slow
def test_the_tf_and_keras_faces_work_without_torch():
    # the script refuses `import torch` (a sys.meta_path finder), as if it were not installed
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-m", "shoal.launch", "-n", "2",
                        os.path.join(HERE, "scripts", "keras_without_torch.py")],
                       capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    out = json.loads(re.search(r"RESULT (.*)", r.stdout).group(1))
    assert out["size"] == 2 and out["allreduce"] == [1.5]
    assert out["object"] == {"from": 1} and out["objects"] == [0, 1]
    assert all(np.isfinite(out["weights"]))
    assert "MissingDependencyError" in out["torch_face"] and "shoal[train]" in out["torch_face"]
    assert out["torch_loaded"] is False
