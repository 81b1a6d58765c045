"""shoal.collective on tf.Tensor and tf.Variable: eager, inside tf.function, bad input."""
import numpy as np
import pytest

# the rank processes import TensorFlow (tens of seconds on a loaded machine)
pytestmark = pytest.mark.timeout(600)


def _allreduce_tensor(comm):
    import tensorflow as tf
    x = tf.constant(np.arange(6, dtype=np.float32).reshape(2, 3) + comm.rank)
    y = comm.allreduce(x, op="sum")
    return type(y).__name__, y.dtype.name, y.numpy().tolist(), x.numpy().tolist()


def test_allreduce_returns_a_new_tensor_and_leaves_the_input(tf_pool):
    out = tf_pool.run(_allreduce_tensor, 2)
    for rank, (kind, dtype, y, x) in enumerate(out):
        assert kind == "EagerTensor" and dtype == "float32"
        assert y == [[1.0, 3.0, 5.0], [7.0, 9.0, 11.0]]
        assert x == (np.arange(6).reshape(2, 3) + rank).tolist()   # tf.Tensor is immutable


def _variable_in_place(comm):
    import tensorflow as tf
    import keras
    v = tf.Variable(np.full(4, comm.rank + 1.0, np.float32))
    same = comm.allreduce(v, op="avg") is v
    kv = keras.Variable(np.full(3, 10.0 * comm.rank, np.float32))
    comm.broadcast(kv, src=1)
    out = tf.Variable(np.zeros(2, np.float32))
    comm.allreduce(tf.constant([1.0, 2.0]), out=out)
    return same, v.numpy().tolist(), np.asarray(kv.numpy()).tolist(), out.numpy().tolist()


def test_variables_are_updated_in_place_with_assign(tf_pool):
    for same, v, kv, out in tf_pool.run(_variable_in_place, 2):
        assert same and v == [1.5] * 4
        assert kv == [10.0] * 3
        assert out == [2.0, 4.0]


def _other_ops(comm):
    import tensorflow as tf
    r = comm.rank
    b = comm.broadcast(tf.constant([r, r], dtype=tf.int64), src=1)
    g = comm.allgather(tf.constant([[r]], dtype=tf.int32))
    rs = comm.reduce_scatter(tf.ones([4, 2], tf.float32))
    a2a = comm.alltoall(tf.constant([10 * r, 10 * r + 1], tf.int32))
    bf = comm.allreduce(tf.constant([1.5, 2.0], tf.bfloat16))
    bo = comm.allreduce(tf.constant([r == 0, False]), op="max")
    w = comm.allreduce(tf.constant([1.0, 2.0], tf.float64), async_op=True).wait()
    grp = comm.grouped_allreduce([tf.constant([1.0]), tf.constant([r], tf.int32)])
    return (b.numpy().tolist(), [t.numpy().tolist() for t in g], rs.numpy().tolist(),
            a2a.numpy().tolist(), bf.numpy().astype(float).tolist(), bo.numpy().tolist(),
            w.numpy().tolist(), [t.numpy().tolist() for t in grp])


def test_broadcast_allgather_reduce_scatter_alltoall_dtypes_async_and_grouped(tf_pool):
    for rank, (b, g, rs, a2a, bf, bo, w, grp) in enumerate(tf_pool.run(_other_ops, 2)):
        assert b == [1, 1]
        assert g == [[[0]], [[1]]]
        assert rs == [[2.0, 2.0], [2.0, 2.0]]
        assert a2a == [rank, 10 + rank]
        assert bf == [3.0, 4.0]
        assert bo == [True, False]
        assert w == [2.0, 4.0]
        assert grp == [[2.0], [1]]


def _inside_tf_function(comm):
    import tensorflow as tf
    v = tf.Variable([0.0, 0.0])

    @tf.function
    def step(t):
        s = comm.allreduce(t * 2.0, op="sum")
        parts = comm.allgather(t)
        comm.allreduce(v, op="sum")   # a variable: assigned in the graph
        v.assign_add(t)
        return s, tf.concat(parts, 0)

    outs = [step(tf.constant([1.0, float(comm.rank)])) for _ in range(2)]
    return [(s.numpy().tolist(), p.numpy().tolist()) for s, p in outs], v.numpy().tolist()


def test_ops_inside_tf_function_run_as_py_function(tf_pool):
    for rank, (steps, v) in enumerate(tf_pool.run(_inside_tf_function, 2)):
        assert steps == [([4.0, 2.0], [1.0, 0.0, 1.0, 1.0])] * 2
        # step 1: v = allreduce([0, 0]) + t = [1, rank]; step 2: v = [2, 1] + t
        assert v == [3.0, 1.0 + rank]


def _bad_input(comm):
    import tensorflow as tf
    errors = []
    for bad in (tf.constant(["a"]), tf.ragged.constant([[1], [2, 3]]),
                tf.sparse.from_dense(tf.eye(2)), tf.constant([1], tf.qint8)):
        try:
            comm.allreduce(bad)
        except TypeError as e:
            errors.append(str(e))
    try:
        comm.allreduce(tf.constant([1.0]), out=tf.constant([0.0]))
    except TypeError as e:
        errors.append(str(e))
    comm.barrier()   # the group still works after rejected input
    return errors


def test_unsupported_dtype_ragged_sparse_and_immutable_out_are_rejected(tf_pool):
    errors = tf_pool.run(_bad_input, 1)[0]
    assert len(errors) == 5
    assert "tf.string" in errors[0] and "tf.cast" in errors[0]
    assert "tf.RaggedTensor" in errors[1]
    assert "tf.SparseTensor" in errors[2]
    assert "tf.qint8" in errors[3]
    assert "immutable" in errors[4] and "tf.Variable" in errors[4]


def test_aligned_pool_reuses_a_buffer_only_once_nothing_references_it():
    from shoal.collective import tf_tensors as tft
    pool = tft.AlignedPool(keep=2)
    a = pool.get((100,), np.float32)
    assert a.__array_interface__["data"][0] % tft.ALIGN == 0 and a.shape == (100,)
    addr = a.__array_interface__["data"][0]
    view = a[10:]
    del a
    b = pool.get((100,), np.float32)          # a view still holds the first buffer
    assert b.__array_interface__["data"][0] != addr
    del view, b
    assert pool.get((100,), np.float32).__array_interface__["data"][0] == addr


def _pool_in_numpy_function(comm):
    import tensorflow as tf
    from shoal.collective import tf_tensors as tft
    pool = tft.AlignedPool(keep=4)

    def hop(a):
        tft.hold_thread_state()
        out = pool.get(a.shape, a.dtype)
        np.multiply(a, 2, out=out)
        return out

    f = tf.function(lambda x: tf.numpy_function(hop, [x], tf.float32))
    x = tf.constant(np.arange(1000, dtype=np.float32))
    held = [f(x + i) for i in range(6)]       # more than the pool keeps, all alive
    for _ in range(20):
        f(x)                                   # results dropped at once: buffers come back
    return ([float(np.abs(h.numpy() - 2 * (np.arange(1000) + i)).max())
             for i, h in enumerate(held)], len(pool._bufs[((1000,), np.dtype(np.float32))]))


def test_pool_buffers_tensorflow_still_holds_are_not_handed_out_again(tf_pool):
    errors, kept = tf_pool.run(_pool_in_numpy_function, 1)[0]
    assert errors == [0.0] * 6
    assert kept == 4
