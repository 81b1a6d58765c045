"""Horovod's TensorFlow collectives on shoal.horovod's engine.

Each op hands the engine NumPy arrays (a zero-copy DLPack view of an eager
tensor, or a 64-byte aligned copy where the op writes) and gives back
tf.Tensors that own the result buffer (``shoal.collective.tf_tensors``). The
engine is the one shoal.horovod's torch API uses: ops matched across ranks by
name, checked, and consecutive allreduces fused.

Each op is written once, on NumPy arrays. In eager mode it runs on views of
the tensors; inside ``tf.function`` it runs as a ``tf.numpy_function``, which
passes the tensors' buffers as arrays and adopts the (64-byte aligned) result
arrays without a copy; it is lighter than a ``tf.py_function``, which would
wrap every argument and result in an eager tensor. Horovod compiles a custom
op instead; here the collective is Python and shared memory anyway, so a
custom op would save only the hop into Python per call (DistributedGradientTape
and DistributedOptimizer make one call per step for all gradients), and would
tie shoal to one TensorFlow ABI and a compiler. The cost: a step that uses
these ops cannot be XLA-compiled (``jit_compile``).
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from shoal.collective import tf_tensors as tft
from shoal.horovod import _requests as H
from shoal.horovod._engine import ALLGATHER, ALLREDUCE, ALLTOALL, BROADCAST, REDUCESCATTER
from shoal.horovod._world import _w, engine_of, global_process_set
from shoal.horovod.tensorflow.compression import Compression

Average, Sum, Adasum, Min, Max, Product = H.Average, H.Sum, H.Adasum, H.Min, H.Max, H.Product
_RESULTS = tft.AlignedPool()


# ------------------------------------------------------------------ conversion
def _writable(arr: np.ndarray) -> np.ndarray:
    """An aligned copy of ``arr`` for an op that writes its input (tensors are immutable)."""
    copy = tft.empty_aligned(arr.shape, arr.dtype)
    copy[...] = arr
    return copy


def _eager_or_graph(fn, inputs: list, tout: list, shapes: list):
    """``fn(*arrays)`` (NumPy arrays in, a list of arrays out): now, on views of eager
    tensors, or as a ``tf.numpy_function`` when building a graph."""
    if tf.executing_eagerly():
        outs = fn(*[tft.to_numpy(t) for t in inputs])
        return [tft.from_numpy(np.asarray(o), tf.as_dtype(d).name) for o, d in zip(outs, tout)]
    def hop(*arrays):
        tft.hold_thread_state()
        return fn(*arrays)
    outs = tf.numpy_function(hop, inputs, [tf.as_dtype(d) for d in tout])
    outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
    for o, s in zip(outs, shapes):
        o.set_shape(s)
    return outs


def _dense(t, name="tensor"):
    if isinstance(t, (tf.Variable,)) or tft.is_tf(t) and hasattr(t, "assign"):
        t = tf.convert_to_tensor(t)
    elif not tf.is_tensor(t):
        t = tf.convert_to_tensor(t)
    tft.check(t, name)
    return t


# ------------------------------------------------------------------ allreduce
def _grouped_allreduce_now(arrays, op, pre, post, name, process_set):
    if len(arrays) > 1 and len({a.dtype for a in arrays}) == 1:
        # one copy into one aligned buffer (tensors are immutable, so a copy is due anyway),
        # reduced in place, handed back as views TensorFlow adopts: no fusion copies
        flat, offsets = tft.pack_aligned(arrays, _RESULTS)
        H._now(H.packed_allreduce_, flat, [a.shape for a in arrays], name, op, pre, post,
               process_set)
        return tft.unpack_views(flat, offsets, arrays)
    out = [_writable(a) for a in arrays]
    H._now(H.grouped_allreduce_async_, out, None, name, op, pre, post, process_set)
    return out


def _packs_in_graph(tensors) -> bool:
    """Whether a group is packed by TensorFlow (in a graph, one dtype, static shapes)."""
    return (not tf.executing_eagerly() and len(tensors) > 1
            and len({t.dtype for t in tensors}) == 1
            and all(t.shape.is_fully_defined() for t in tensors))


def _grouped_allreduce_packed(tensors, op, pre, post, name, process_set) -> list:
    """A group of one dtype in one hop with one argument: ``tf.concat`` packs it in the
    graph, the hop reduces an aligned copy (the engine works in place; TensorFlow adopts
    the copy, a buffer of a pool it has let go of), ``tf.split`` cuts the result. A hop costs per argument (each is wrapped
    going in and adopted coming out), so this is cheaper than one argument per tensor."""
    shapes = [tuple(t.shape.as_list()) for t in tensors]

    def reduce(flat):
        tft.hold_thread_state()
        buf = _RESULTS.get(flat.shape, flat.dtype)  # reduced in place; TensorFlow adopts it
        np.copyto(buf, flat)
        H._now(H.packed_allreduce_, buf, shapes, name, op, pre, post, process_set)
        return buf
    flat = tf.concat([tf.reshape(t, [-1]) for t in tensors], 0)
    reduced = tf.numpy_function(reduce, [flat], flat.dtype, name="shoal_hvd_allreduce")
    reduced.set_shape(flat.shape)
    parts = tf.split(reduced, [t.shape.num_elements() for t in tensors], num=len(tensors))
    return [tf.reshape(p, t.shape) for p, t in zip(parts, tensors)]


def grouped_allreduce(tensors, average=None, device_dense="", device_sparse="",
                      compression=Compression.none, op=None, prescale_factor=1.0,
                      postscale_factor=1.0, process_set=global_process_set, name=None):
    """Allreduce a list of tensors as one fused operation; returns new tensors.

    tf.IndexedSlices in the list are allreduced as Horovod does (their values
    and indices allgathered). Runs in eager mode and inside tf.function.
    """
    op = H._check_op(op, average)
    tensors = list(tensors)
    if not tensors:
        return []
    sparse = [i for i, t in enumerate(tensors) if isinstance(t, tf.IndexedSlices)]
    if sparse:
        out = list(tensors)
        dense = [i for i in range(len(tensors)) if i not in sparse]
        for i in sparse:
            out[i] = allreduce(tensors[i], op=op, process_set=process_set,
                               prescale_factor=prescale_factor, postscale_factor=postscale_factor)
        reduced = grouped_allreduce([tensors[i] for i in dense], op=op,
                                    compression=compression, prescale_factor=prescale_factor,
                                    postscale_factor=postscale_factor, process_set=process_set,
                                    name=name)
        for i, r in zip(dense, reduced):
            out[i] = r
        return out
    dense = [_dense(t, f"tensors[{i}]") for i, t in enumerate(tensors)]
    pairs = [compression.compress(t) for t in dense]
    wire = [p[0] for p in pairs]
    if _packs_in_graph(wire):
        outs = _grouped_allreduce_packed(wire, op, prescale_factor, postscale_factor, name,
                                         process_set)
        return [compression.decompress(o, c) for o, (_, c) in zip(outs, pairs)]
    outs = _eager_or_graph(
        lambda *ts: _grouped_allreduce_now(ts, op, prescale_factor, postscale_factor, name,
                                           process_set),
        wire, [t.dtype for t in wire], [t.shape for t in wire])
    return [compression.decompress(o, c) for o, (_, c) in zip(outs, pairs)]


def allreduce(tensor, average=None, device_dense="", device_sparse="",
              compression=Compression.none, op=None, prescale_factor=1.0, postscale_factor=1.0,
              name=None, process_set=global_process_set, ignore_name_scope=False):
    """Reduce ``tensor`` over the ranks (default: Average); returns a new tensor.

    ``op`` is hvd.Average, Sum, Min, Max or Product. A tf.IndexedSlices is
    reduced as in Horovod: every rank's values and indices are allgathered
    (Average divides the values by the number of ranks). Differentiable for
    Average and Sum (the gradient is the same allreduce of the gradient).
    """
    op = H._check_op(op, average)
    if isinstance(tensor, tf.IndexedSlices):
        if op not in (Average, Sum):
            raise ValueError(f"allreduce of tf.IndexedSlices supports hvd.Average and hvd.Sum, "
                             f"got {op!r}")
        base = name or engine_of(process_set).auto_name("sparse")
        values = allgather(tensor.values, name=f"{base}.values", process_set=process_set)
        indices = allgather(tensor.indices, name=f"{base}.indices", process_set=process_set)
        scale = prescale_factor * postscale_factor
        if op == Average:
            scale /= len(engine_of(process_set).set_ranks)
        if scale != 1.0:
            values = values * tf.cast(scale, values.dtype)
        return tf.IndexedSlices(values, indices, dense_shape=tensor.dense_shape)
    t = _dense(tensor)

    def run(x):
        return grouped_allreduce([x], op=op, compression=compression, process_set=process_set,
                                 prescale_factor=prescale_factor,
                                 postscale_factor=postscale_factor, name=name)[0]
    if op not in (Average, Sum) or not t.dtype.is_floating:
        return run(t)

    @tf.custom_gradient
    def differentiable(x):
        def grad(dy):
            return grouped_allreduce([dy], op=op, process_set=process_set,
                                     prescale_factor=prescale_factor,
                                     postscale_factor=postscale_factor)[0]
        return run(x), grad
    return differentiable(t)


# ------------------------------------------------------------------ allgather
def _allgather_now(arrays, name, process_set):
    if any(a.ndim == 0 for a in arrays):
        err = ("hvd.allgather needs a tensor of at least one dimension (rows are concatenated "
               "along dimension 0); reshape a scalar with tf.reshape(t, [1])")
    else:
        err = None
    h = H._submit(ALLGATHER, name, list(arrays), lambda outs: outs, process_set, error=err,
                  wake=False)
    return [np.asarray(o) for o in H.synchronize(h)]


def allgather(tensor, name=None, ignore_name_scope=False, process_set=global_process_set):
    """Every rank's ``tensor`` concatenated along dimension 0 (first dimensions may differ).

    Differentiable: the gradient is this rank's rows of the sum of the gradients.
    """
    t = _dense(tensor)
    shape = [None, *t.shape[1:]] if t.shape.rank else None

    def run(x):
        return _eager_or_graph(lambda y: _allgather_now([y], name, process_set), [x],
                               [x.dtype], [shape])[0]
    if not t.dtype.is_floating:
        return run(t)

    @tf.custom_gradient
    def differentiable(x):
        def grad(dy):
            reduced = grouped_allreduce([dy], op=Sum, process_set=process_set)[0]
            rows = run(tf.reshape(tf.shape(x, out_type=tf.int64)[0], [1]))
            me = engine_of(process_set).set_ranks.index(_w().rank)
            start = tf.reduce_sum(rows[:me])
            return tf.slice(reduced, tf.concat([[start], tf.zeros([tf.rank(dy) - 1], tf.int64)], 0),
                            tf.shape(x, out_type=tf.int64))
        return run(x), grad
    return differentiable(t)


def grouped_allgather(tensors, name=None, process_set=global_process_set) -> list:
    """``allgather`` of each tensor of a list, as one operation."""
    ts = [_dense(t, f"tensors[{i}]") for i, t in enumerate(tensors)]
    return _eager_or_graph(lambda *xs: _allgather_now(xs, name, process_set), ts,
                           [t.dtype for t in ts], [[None, *t.shape[1:]] for t in ts])


# ------------------------------------------------------------------ broadcast
def _broadcast_now(arrays, root_rank, name, process_set):
    root, err = H._check_root(root_rank, process_set)
    out = [_writable(a) for a in arrays]
    h = H._submit(BROADCAST, name, out, lambda outs: outs, process_set, root=root, error=err,
                  wake=False)
    H.synchronize(h)
    return out


def broadcast(tensor, root_rank, name=None, ignore_name_scope=False,
              process_set=global_process_set):
    """Rank ``root_rank``'s ``tensor`` on every rank (a new tensor).

    Differentiable: the root's gradient is the sum of every rank's, the others' zero.
    """
    t = _dense(tensor)

    def run(x):
        return _eager_or_graph(lambda y: _broadcast_now([y], root_rank, name, process_set),
                               [x], [x.dtype], [x.shape])[0]
    if not t.dtype.is_floating:
        return run(t)

    @tf.custom_gradient
    def differentiable(x):
        def grad(dy):
            reduced = grouped_allreduce([dy], op=Sum, process_set=process_set)[0]
            return reduced if _w().rank == root_rank else tf.zeros_like(reduced)
        return run(x), grad
    return differentiable(t)


def broadcast_(variables, root_rank, name=None, process_set=global_process_set):
    """Broadcast variables in place (assign) from ``root_rank``, as one operation."""
    variables = list(variables)
    values = _eager_or_graph(
        lambda *xs: _broadcast_now(xs, root_rank, name, process_set),
        [tf.convert_to_tensor(v) for v in variables], [v.dtype for v in variables],
        [v.shape for v in variables])
    for v, x in zip(variables, values):
        v.assign(x)
    return variables


def broadcast_variables(variables, root_rank, process_set=global_process_set, inplace=False):
    """Assign rank ``root_rank``'s values to ``variables`` on every rank (one packed broadcast).

    Works on tf.Variables and Keras variables, in eager mode and inside tf.function.
    """
    variables = [v for v in variables if v is not None]
    if not variables:
        return None
    broadcast_(variables, root_rank, process_set=process_set)
    return None


def broadcast_object(obj, root_rank=0, session=None, name=None, process_set=global_process_set):
    """Rank ``root_rank``'s picklable ``obj`` on every rank (peers are authenticated)."""
    return H.broadcast_object(obj, root_rank, name, process_set)


def allgather_object(obj, session=None, name=None, process_set=global_process_set) -> list:
    """Every rank's picklable ``obj``, in rank order."""
    return H.allgather_object(obj, name, process_set)


# ------------------------------------------------------------------ alltoall, reducescatter
def _alltoall_now(arr, splits, name, process_set):
    n_ranks = len(engine_of(process_set).set_ranks)
    n = arr.shape[0] if arr.ndim else 0
    err, send = None, None
    if arr.ndim == 0:
        err = "hvd.alltoall needs a tensor of at least one dimension"
    elif splits is None or (hasattr(splits, "shape") and splits.shape == (0,)):
        if n % n_ranks:
            err = (f"alltoall without splits needs the first dimension ({n}) to be divisible "
                   f"by the number of ranks ({n_ranks})")
        else:
            send = [n // n_ranks] * n_ranks
    else:
        send = [int(s) for s in np.asarray(splits).reshape(-1)]
        if len(send) != n_ranks or sum(send) != n or min(send) < 0:
            err = (f"splits must hold {n_ranks} non-negative counts summing to the first "
                   f"dimension {n}, got {send}")
    h = H._submit(ALLTOALL, name, [arr], lambda outs: outs, process_set, error=err, splits=send,
                  wake=False)
    out, received = H.synchronize(h)
    return [np.asarray(out), np.asarray(received, np.int32)]


def alltoall(tensor, splits=None, name=None, ignore_name_scope=False,
             process_set=global_process_set):
    """Rows ``splits[q]`` of ``tensor`` go to rank q; returns (received rows, received splits).

    Without ``splits`` dimension 0 is split evenly (it must divide by the number of ranks).
    """
    t = _dense(tensor)
    inputs = [t] if splits is None else [t, tf.convert_to_tensor(splits, tf.int32)]
    out = _eager_or_graph(
        lambda x, s=None: _alltoall_now(x, s, name, process_set),
        inputs, [t.dtype, tf.int32], [[None, *t.shape[1:]], [None]])
    return out[0], out[1]


def _reducescatter_now(arrays, op, pre, post, name, process_set):
    err = ("hvd.reducescatter needs tensors of at least one dimension"
           if any(a.ndim == 0 for a in arrays) else None)
    h = H._submit(REDUCESCATTER, name, list(arrays), lambda outs: outs, process_set, op, -1,
                  pre, post, error=err, wake=False)
    return [np.asarray(o) for o in H.synchronize(h)]


def reducescatter(tensor, op=Average, name=None, ignore_name_scope=False,
                  process_set=global_process_set, prescale_factor=1.0, postscale_factor=1.0,
                  compression=Compression.none):
    """Reduce ``tensor`` over the ranks; this rank gets its part along dimension 0.

    Parts follow ``numpy.array_split``: the first ``dim0 % size`` ranks get one more row.
    """
    return grouped_reducescatter([tensor], op, name, process_set, prescale_factor,
                                 postscale_factor, compression)[0]


def grouped_reducescatter(tensors, op=Average, name=None, process_set=global_process_set,
                          prescale_factor=1.0, postscale_factor=1.0,
                          compression=Compression.none) -> list:
    """``reducescatter`` of each tensor of a list, as one operation."""
    op = H._check_op(op, None)
    pairs = [compression.compress(_dense(t, f"tensors[{i}]")) for i, t in enumerate(tensors)]
    wire = [p[0] for p in pairs]
    outs = _eager_or_graph(
        lambda *xs: _reducescatter_now(xs, op, prescale_factor, postscale_factor, name,
                                       process_set),
        wire, [t.dtype for t in wire], [[None, *t.shape[1:]] for t in wire])
    return [compression.decompress(o, c) for o, (_, c) in zip(outs, pairs)]


# ------------------------------------------------------------------ barrier, join
def barrier(process_set=global_process_set) -> None:
    """Return once every rank of the process set reached the barrier."""
    H.barrier(process_set)


def join() -> int:
    """Signal that this rank has no more data; returns the rank that joined last (Horovod's)."""
    return H.join()


def _scalar_op(fn):
    def op(*args, **kwargs):
        return tf.constant(fn(*args, **kwargs), dtype=tf.int32)
    op.__doc__ = f"``{fn.__name__}()`` as an int32 tf.Tensor (Horovod's graph op)."
    return op
