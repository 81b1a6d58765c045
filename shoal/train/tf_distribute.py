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
``all_reduce`` travel as one flat buffer per dtype, in one ``tf.numpy_function``
call: the Python hop costs once per step, not once per variable (see
``_allreduce``).

Datasets given to ``experimental_distribute_dataset`` (and so to Keras'
``fit``) are split as MultiWorkerMirroredStrategy splits them: every global
batch is cut into ``num_replicas_in_sync`` parts and worker r keeps part r.
Trainable variables created in ``scope()`` start from rank 0's values.
Keras' logs (loss, metrics) are each worker's own: average them with a
callback if every worker must see the same numbers.
"""
from __future__ import annotations

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

    Use it as MultiWorkerMirroredStrategy: build and compile the model inside
    ``scope()``, then ``fit``, or write a custom loop with ``strategy.run``
    and ``ReplicaContext.all_reduce``.
    """

    def __init__(self, comm=None, device: str = "/cpu:0"):
        comm = _session_comm() if comm is None else comm
        distribute_lib.Strategy.__init__(self, _ShoalExtended(self, device, comm))
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
    def __init__(self, container, device, comm):
        super().__init__(container, device)
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
        return _allreduce(self._comm, _op_name(reduce_op), values)

    def _replica_ctx_all_reduce(self, reduce_op, value, options=None):
        return _allreduce(self._comm, _op_name(reduce_op), list(value))

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
    if isinstance(v, tf.IndexedSlices):
        return tf.convert_to_tensor(v)  # allreduced dense (MWMS allgathers the slices)
    if isinstance(v, values_lib.DistributedValues):
        v = v.values[0]  # one replica per worker
    v = tf.convert_to_tensor(v)
    tf_tensors.check(v, "value")
    return v


def _allreduce(comm, op: str, values: list) -> list:
    """``op`` of each tensor over the group: one collective per dtype, one Python hop.

    Inside ``tf.function`` the hop is a ``tf.numpy_function`` (stateful, so
    tf.function keeps the collectives of a step in program order on every
    rank). Its NumPy arguments are views of the tensors' buffers; they are
    packed into one new buffer (each at a 64-byte aligned offset), reduced
    there in place, and each result goes back to TensorFlow as a view of that
    buffer, which TensorFlow adopts without a copy. One memcpy in, one
    collective for all the gradients, no copy out.
    """
    dense = [_dense(v) for v in values]
    if comm is None:
        return dense
    out: list = [None] * len(dense)
    by_dtype: dict = {}
    for i, t in enumerate(dense):
        by_dtype.setdefault(t.dtype, []).append(i)
    for dtype, idx in by_dtype.items():
        parts = [dense[i] for i in idx]
        reduced = tf.numpy_function(_Packed(comm, op), parts, [dtype] * len(parts),
                                    name="shoal_allreduce")
        if not isinstance(reduced, (list, tuple)):  # eager mode unpacks a single output
            reduced = [reduced]
        for i, r, p in zip(idx, reduced, parts):
            r.set_shape(p.shape)
            out[i] = r
    return out


class _Packed:
    """Allreduce NumPy arrays as one buffer; returns aligned views of it (see _allreduce)."""

    def __init__(self, comm, op: str):
        self.comm, self.op = comm, op

    def __call__(self, *arrays):
        align = tf_tensors.ALIGN // arrays[0].itemsize or 1
        offsets, at = [], 0
        for a in arrays:
            offsets.append(at)
            at += -(-a.size // align) * align
        flat = tf_tensors.empty_aligned((at,), arrays[0].dtype)
        end = 0
        for a, o in zip(arrays, offsets):
            flat[end:o] = 0  # padding between the parts: reduced, never read
            flat[o:o + a.size] = a.reshape(-1)
            end = o + a.size
        flat[end:] = 0
        self.comm.allreduce(flat, op=self.op)
        return [flat[o:o + a.size].reshape(a.shape) for a, o in zip(arrays, offsets)]


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
