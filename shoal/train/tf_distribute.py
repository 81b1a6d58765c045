"""``ShoalStrategy``: a ``tf.distribute.Strategy`` whose reductions run on shoal.collective.

    strategy = ShoalStrategy()               # the gang's group (Trainer or shoal launch)
    with strategy.scope():
        model = keras.Sequential([...])
        model.compile(optimizer="adam", loss="mse")
    model.fit(x, y, batch_size=64)          # 64: the global batch, as under MWMS

Each worker is one replica: the strategy is TensorFlow's OneDeviceStrategy
(one CPU device per worker) whose ``num_replicas_in_sync`` is the group's
size and whose cross-replica reductions (``ReplicaContext.all_reduce``,
``Strategy.reduce``, ``gather``; what Keras' optimizer and a custom loop
call) go through the group's communicator instead of TensorFlow's
collectives, so no ``TF_CONFIG`` or gRPC server is needed. The tensors of one
``all_reduce`` travel as one packed buffer per dtype (or in buckets that
overlap backward, ``bucket_bytes``), not one collective per variable; see
``_allreduce``.

Datasets given to ``experimental_distribute_dataset`` (and so to Keras'
``fit``) are split as MultiWorkerMirroredStrategy splits them: every global
batch is cut into ``num_replicas_in_sync`` parts and worker r keeps part r.
Trainable variables created in ``scope()`` start from rank 0's values.
Keras' logs (loss, metrics) are each worker's own: average them with a
callback if every worker must see the same numbers.
"""
from __future__ import annotations

import itertools
import threading

import numpy as np
import tensorflow as tf
from tensorflow.python.distribute import distribute_lib, distribute_utils, input_util
from tensorflow.python.distribute import one_device_strategy
from tensorflow.python.distribute import values as values_lib

from shoal.collective import tf_tensors

_OPS = {"SUM": "sum", "MEAN": "avg"}


def _session_comm():
    from shoal.train.context import current_session
    session = current_session(required=False)
    return None if session is None else session.comm


class ShoalStrategy(one_device_strategy.OneDeviceStrategy):
    """A tf.distribute strategy over a shoal communicator: one replica per worker.

    Args:
        comm: the communicator (default: the shoal.train gang's, or the group
            of a script under ``shoal launch``; without either, a world of one).
        device: this worker's device ("/cpu:0"; shoal's collectives move host memory).
        bucket_bytes: the size of the buckets one all_reduce's tensors travel in;
            0 (the default): one bucket per dtype, reduced in one hop. With
            buckets, each one's reduction starts on the communicator's thread as
            soon as its tensors exist and overlaps the rest of backward, which
            pays where a worker has a core to spare (benchmarks/tf.py: on a
            saturated CPU, one bucket was faster).

    Use it as MultiWorkerMirroredStrategy: build and compile the model inside
    ``scope()``, then ``fit``, or write a custom loop with ``strategy.run``
    and ``ReplicaContext.all_reduce``.
    """

    def __init__(self, comm=None, device: str = "/cpu:0", bucket_bytes: int = 0):
        if bucket_bytes < 0:
            raise ValueError(f"bucket_bytes must be >= 0 (0: one bucket), got {bucket_bytes}")
        comm = _session_comm() if comm is None else comm
        distribute_lib.Strategy.__init__(self, _ShoalExtended(self, device, comm, bucket_bytes))
        distribute_lib.distribution_strategy_gauge.get_cell("V2").set("ShoalStrategy")

    @property
    def rank(self) -> int:
        """This worker's rank (its replica id in the group)."""
        return self.extended._rank

    @property
    def comm(self):
        """The communicator the reductions run on (None in a world of one)."""
        return self.extended._comm


class _ShoalExtended(one_device_strategy.OneDeviceExtended):
    def __init__(self, container, device, comm, bucket_bytes):
        super().__init__(container, device)
        self._bucket_bytes = bucket_bytes
        self._comm = comm if comm is not None and comm.world_size > 1 else None
        self._rank = 0 if comm is None else comm.rank
        self._world = 1 if comm is None else comm.world_size

    # ---------------------------------------------------------------- replicas
    @property
    def _num_replicas_in_sync(self):
        return self._world

    def _in_multi_worker_mode(self):
        # no TensorFlow cluster: TensorFlow's own multi-worker paths stay off
        return False

    @property
    def _global_batch_size(self):
        return True  # a dataset's batch is the global batch, as under MWMS

    def _call_for_each_replica(self, fn, args, kwargs):
        args, kwargs = distribute_utils.select_replica(0, (args, kwargs or {}))
        return super()._call_for_each_replica(fn, args, kwargs)

    def _create_variable(self, next_creator, **kwargs):
        var = super()._create_variable(next_creator, **kwargs)
        if self._comm is not None and kwargs.get("trainable", True) is not False \
                and tf.executing_eagerly():
            self._comm.broadcast(var, src=0)  # every replica starts from rank 0's values
        return var

    # ---------------------------------------------------------------- input
    def _input_context(self):
        return distribute_lib.InputContext(num_input_pipelines=self._world,
                                           input_pipeline_id=self._rank,
                                           num_replicas_in_sync=self._world)

    def _experimental_distribute_dataset(self, dataset, options):
        if self._world == 1:
            return super()._experimental_distribute_dataset(dataset, options)
        return input_util.get_distributed_dataset(
            dataset, self._input_workers_with_options(options), self._container_strategy(),
            num_replicas_in_sync=self._world, input_context=self._input_context(),
            options=options)

    def _distribute_datasets_from_function(self, dataset_fn, options):
        return input_util.get_distributed_datasets_from_function(
            dataset_fn, self._input_workers_with_options(options), [self._input_context()],
            self._container_strategy(), options=options)

    def _experimental_distribute_values_from_function(self, value_fn):
        return value_fn(distribute_lib.ValueContext(self._rank, self._world))

    # ---------------------------------------------------------------- reductions
    def _reduce_to(self, reduce_op, value, destinations, options):
        return self._batch_reduce_to(reduce_op, [(value, destinations)], options)[0]

    def _batch_reduce_to(self, reduce_op, value_destination_pairs, options):
        values = [v for v, _ in value_destination_pairs]
        return _allreduce(self._comm, _op_name(reduce_op), values, self._bucket_bytes)

    def _replica_ctx_all_reduce(self, reduce_op, value, options=None):
        return _allreduce(self._comm, _op_name(reduce_op), list(value), self._bucket_bytes)

    def _gather_to_implementation(self, value, destinations, axis, options):
        return _allgather(self._comm, value, axis)

    def _use_merge_call(self):
        return False  # one replica per worker: nothing to merge locally


def _op_name(reduce_op) -> str:
    key = getattr(reduce_op, "value", str(reduce_op)).upper()
    if key not in _OPS:
        raise ValueError(f"ShoalStrategy reduces with SUM or MEAN, got {reduce_op!r}")
    return _OPS[key]


def _dense(v):
    if isinstance(v, (tf.RaggedTensor, tf.SparseTensor)):
        tf_tensors.check(v, "value")  # raises, naming the kind and what to pass instead
    if isinstance(v, tf.IndexedSlices):
        return tf.convert_to_tensor(v)  # allreduced dense (MWMS allgathers the slices)
    if isinstance(v, values_lib.DistributedValues):
        v = v.values[0]  # one replica per worker
    v = tf.convert_to_tensor(v)
    tf_tensors.check(v, "value")
    return v


def _allreduce(comm, op: str, values: list, bucket_bytes: int = 0) -> list:
    """``op`` of each tensor over the group, in buckets of about ``bucket_bytes``.

    With one bucket per dtype, TensorFlow packs the tensors (``tf.concat``),
    one ``tf.numpy_function`` hop with one input and one output reduces the
    packed buffer into a 64-byte aligned buffer that TensorFlow adopts
    without a copy (one of a pool, reused once TensorFlow let go of it: no
    fresh pages to fault in each step), and ``tf.split`` cuts it back: one
    memcpy in (in the graph), one collective, no copy out. A hop's cost grows with its number
    of arguments (each is wrapped as a NumPy array going in and adopted as a
    tensor coming out), so one argument instead of one per variable is what
    this saves over packing inside the hop (benchmarks/tf.py).

    With more buckets, each is one collective and two hops: the first packs
    and starts the allreduce on the communicator's thread, the second waits
    for it and hands back the views. Buckets are filled from the last tensor back (backward
    produces the last layer's gradients first), and a bucket's start depends
    only on its own tensors, so its reduction runs while backward still
    computes the earlier layers' gradients. The hops are stateful, so
    tf.function keeps them in program order on every rank.
    """
    dense = [_dense(v) for v in values]
    if comm is None:
        return dense
    out: list = [None] * len(dense)
    buckets = _buckets(dense, bucket_bytes)
    if len(buckets) == len({dtype for dtype, _ in buckets}):
        # one bucket per dtype: nothing to overlap, so reduce within one hop (no hand-off
        # to the communicator's thread)
        hops = [(dtype, idx, _reduce_packed(comm, op, [dense[i] for i in idx]))
                for dtype, idx in buckets]
    else:
        started = [(dtype, idx, tf.numpy_function(_PENDING.start(comm, op),
                                                  [dense[i] for i in idx], tf.int64,
                                                  name="shoal_start"))
                   for dtype, idx in buckets]
        hops = [(dtype, idx, tf.numpy_function(_PENDING.finish, [key], [dtype] * len(idx),
                                               name="shoal_finish"))
                for dtype, idx, key in started]
    for dtype, idx, reduced in hops:
        if not isinstance(reduced, (list, tuple)):  # eager mode unpacks a single output
            reduced = [reduced]
        for i, r in zip(idx, reduced):
            r.set_shape(dense[i].shape)
            out[i] = r
    return out


def _reduce_packed(comm, op: str, tensors: list) -> list:
    """``tensors`` (one dtype) reduced in one hop: packed and split in the graph."""
    def reduce(flat):
        tf_tensors.hold_thread_state()
        out = _RESULTS.get(flat.shape, flat.dtype)  # TensorFlow adopts it
        comm.allreduce(flat, op=op, out=out)
        return out
    if len(tensors) == 1:
        flat = tf.reshape(tensors[0], [-1])
    else:
        flat = tf.concat([tf.reshape(t, [-1]) for t in tensors], 0)
    reduced = tf.numpy_function(reduce, [flat], flat.dtype, name="shoal_allreduce")
    reduced.set_shape(flat.shape)
    sizes = [t.shape.num_elements() for t in tensors]
    if None in sizes:  # a dimension unknown while tracing: cut at run time
        sizes = tf.stack([tf.size(t) for t in tensors])
    parts = tf.split(reduced, sizes, num=len(tensors)) if len(tensors) > 1 else [reduced]
    return [tf.reshape(p, tf.shape(t)) if not t.shape.is_fully_defined() else
            tf.reshape(p, t.shape) for p, t in zip(parts, tensors)]


def _buckets(tensors: list, bucket_bytes: int) -> list:
    """(dtype, indices) per bucket: one dtype each, filled from the last tensor back."""
    by_dtype: dict = {}
    for i, t in enumerate(tensors):
        by_dtype.setdefault(t.dtype, []).append(i)
    out = []
    for dtype, idx in by_dtype.items():
        cur, size = [], 0
        for i in reversed(idx):
            n = tensors[i].shape.num_elements()
            nbytes = bucket_bytes if n is None else n * dtype.size
            if cur and bucket_bytes and size + nbytes > bucket_bytes:
                out.append((dtype, cur))
                cur, size = [], 0
            cur.append(i)
            size += nbytes
        out.append((dtype, cur))
    return out


class _Pending:
    """Allreduces started by one numpy_function and finished by another, by key."""

    def __init__(self):
        self._ops: dict = {}
        self._keys = itertools.count()
        self._lock = threading.Lock()

    def start(self, comm, op: str):
        def start(*arrays):
            tf_tensors.hold_thread_state()
            flat, offsets = tf_tensors.pack_aligned(arrays, _RESULTS)
            # out= keeps the communicator from holding it back for fusion: it is packed already
            work = comm.allreduce(flat, op=op, async_op=True, out=flat)
            key = next(self._keys)
            with self._lock:
                self._ops[key] = (comm, work, flat, offsets, [a.shape for a in arrays])
            return np.int64(key)
        return start

    def finish(self, key):
        tf_tensors.hold_thread_state()
        with self._lock:
            comm, work, flat, offsets, shapes = self._ops.pop(int(key))
        work.wait(comm.timeout)
        return [flat[o:o + int(np.prod(shape))].reshape(shape)
                for o, shape in zip(offsets, shapes)]


_PENDING = _Pending()
_RESULTS = tf_tensors.AlignedPool()


def _allgather(comm, value, axis: int):
    t = _dense(value)
    if comm is None:
        return t

    def gather(x):
        return np.concatenate(comm.allgather_object(np.asarray(x)), axis=axis)
    out = tf.numpy_function(gather, [t], t.dtype, name="shoal_gather")
    shape = t.shape.as_list() if t.shape.rank is not None else None
    if shape is not None:
        shape[axis] = None
        out.set_shape(shape)
    return out
