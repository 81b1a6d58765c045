"""TensorFlow tensors and variables in collectives, without importing TensorFlow.

A ``tf.Tensor`` is immutable, so an op that works in place on NumPy and torch
(allreduce, broadcast, reduce, recv, the grouped forms) returns a new
``tf.Tensor`` holding the result for it; a ``tf.Variable`` (or a Keras 3
variable) is updated in place with ``assign`` and returned. Data moves
zero-copy where TensorFlow allows: an eager CPU tensor is read through DLPack
(a read-only NumPy view of its memory), and a result is handed to TensorFlow
through DLPack (the tensor owns the NumPy buffer the collective wrote). An op
that must write into its input works on one copy of it; allreduce instead
writes straight into a new buffer. bfloat16 has no DLPack path in TensorFlow
and takes one copy each way (as an ``ml_dtypes.bfloat16`` array).

Inside ``tf.function`` an op on symbolic tensors runs as a ``tf.py_function``
(see ``graph_call``): the collective itself is Python and shared memory, so a
custom op would buy only the hop into Python, at the price of a compiled
kernel tied to one TensorFlow ABI.

TensorFlow is recognised by the type's module, so ``import shoal.collective``
never imports it; only a caller that passes a TensorFlow object reaches this
module's use of ``tensorflow``.
"""
from __future__ import annotations

import ctypes
import sys
import threading

import numpy as np

from shoal.exceptions import InvalidInputTypeError

# TensorFlow dtype name -> shoal's dtype name (the ones collectives reduce)
SUPPORTED = ("bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
             "float16", "bfloat16", "float32", "float64", "complex64", "complex128")
_SUPPORTED = frozenset(SUPPORTED)
# ops that write their tensor arguments (on TF objects: a copy, then the result handed back)
_WRITES = frozenset({"allreduce", "grouped_allreduce", "reduce", "broadcast", "grouped_broadcast",
                     "grouped_reduce", "recv"})
# where an op takes ``out=`` in its argument tuple
_OUT_ARG = {"allreduce": 2, "reduce": 3, "reduce_scatter": 2, "allgather": 1, "scatter": 2,
            "alltoall": 3}
_KINDS = {"RaggedTensor": "a tf.RaggedTensor", "SparseTensor": "a tf.SparseTensor",
          "IndexedSlices": "tf.IndexedSlices", "SparseTensorValue": "a tf.SparseTensor"}


def loaded() -> bool:
    """Whether TensorFlow or Keras is imported at all (else nothing can be a TF object)."""
    m = sys.modules
    return "tensorflow" in m or "keras" in m


def is_tf(x) -> bool:
    """Whether ``x`` is a TensorFlow tensor, variable, or Keras variable (by its type's module)."""
    mod = type(x).__module__
    return mod.startswith("tensorflow.") or (mod.startswith("keras.") and hasattr(x, "assign"))


def mentions(args) -> bool:
    """Whether an op's arguments hold a TF object (top level or inside a list/tuple)."""
    for a in args:
        if is_tf(a):
            return True
        if isinstance(a, (list, tuple)) and any(is_tf(x) for x in a):
            return True
    return False


def _tf():
    import tensorflow as tf  # the caller passed a TF object: TensorFlow is already imported
    return tf


def _is_variable(x) -> bool:
    return hasattr(x, "assign") and hasattr(x, "read_value") or (
        type(x).__module__.startswith("keras.") and hasattr(x, "assign"))


def _value(x):
    """The tensor behind ``x`` (a variable's current value, or ``x``)."""
    if type(x).__module__.startswith("keras.") and hasattr(x, "value"):
        x = x.value
    if hasattr(x, "read_value") and hasattr(x, "assign"):
        x = x.read_value()
    return x


def check(x, name: str = "tensor") -> str:
    """The dtype name of a TF tensor/variable, or a clear error for what collectives cannot take."""
    kind = _KINDS.get(type(x).__name__)
    if kind is not None:
        raise InvalidInputTypeError(
            f"{name} is {kind}, which collectives do not take; pass a dense tf.Tensor "
            "(tf.convert_to_tensor / .to_tensor() / tf.sparse.to_dense) or, with "
            "shoal.horovod.tensorflow, allgather its values and indices")
    dt = getattr(x, "dtype", None)
    dname = dt if isinstance(dt, str) else getattr(dt, "name", None)  # Keras 3: a string
    if dname is None:
        raise InvalidInputTypeError(f"{name} ({type(x).__name__}) is not a TensorFlow tensor or "
                                    "variable")
    if dname not in _SUPPORTED:
        raise InvalidInputTypeError(
            f"{name} has dtype tf.{dname}, which collectives do not reduce; cast it to one of "
            f"{', '.join(SUPPORTED)} (tf.cast)")
    dev = getattr(x, "device", "") or ""
    if "GPU" in dev.upper() and "CPU" not in dev.upper().rsplit("/", 1)[-1]:
        raise InvalidInputTypeError(f"{name} is on {dev}; shoal's collectives move host memory: "
                                    "copy it to the CPU (with tf.device('/CPU:0'))")
    return dname


def is_symbolic(x) -> bool:
    """A graph tensor inside ``tf.function`` (it has no value yet)."""
    v = _value(x) if _is_variable(x) else x
    return not hasattr(v, "numpy") or not _tf().executing_eagerly()


def to_numpy(x, name: str = "tensor") -> np.ndarray:
    """A NumPy array of an eager TF tensor's data: a read-only zero-copy view via DLPack
    (bfloat16: a copy of its bits as uint16, as shoal's collectives carry bfloat16)."""
    dname = check(x, name)
    v = _value(x)
    if dname in ("bfloat16", "bool"):  # no DLPack for these in TensorFlow
        return np.ascontiguousarray(v.numpy())  # bfloat16: an ml_dtypes.bfloat16 array
    return np.from_dlpack(v)


def from_numpy(arr: np.ndarray, dname: str):
    """A tf.Tensor that owns ``arr``'s memory (DLPack: no copy); bfloat16 from its bits."""
    tf = _tf()
    if dname == "bfloat16":
        if arr.dtype == np.uint16:  # the bits, as collectives allocate bfloat16 outputs
            return tf.bitcast(tf.constant(arr), tf.bfloat16)
        return tf.constant(arr)
    if (arr.dtype == np.bool_ or not arr.flags.c_contiguous or not arr.flags.writeable
            or arr.__array_interface__["data"][0] % _ALIGN):
        # TensorFlow's kernels assume 64-byte aligned buffers; DLPack has no bool and no
        # read-only arrays (e.g. Arrow's buffers): copy
        return tf.constant(arr)
    return tf.experimental.dlpack.from_dlpack(arr.__dlpack__())


ALIGN = _ALIGN = 64  # EIGEN_MAX_ALIGN_BYTES in TensorFlow's CPU builds


def empty_aligned(shape, dtype) -> np.ndarray:
    """A new array whose data starts on a 64-byte boundary, so TensorFlow can own it."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(n + _ALIGN, np.uint8)
    start = -raw.__array_interface__["data"][0] % _ALIGN
    return raw[start:start + n].view(dtype).reshape(shape)


class AlignedPool:
    """Aligned result buffers for ``tf.numpy_function`` hops, reused once TensorFlow let go.

    A hop that returns a new array each step makes the allocator map fresh pages and fault
    them in (a 0.4 MB gradient buffer: about 80 us a step on a 2-core VM); TensorFlow
    adopts the array it gets back and drops its reference when the tensor dies, so a
    buffer that no one but the pool references (the array and the memory it views) is free
    again. ``keep`` buffers per shape and dtype; beyond that a hop gets a fresh one.
    """

    def __init__(self, keep: int = 4):
        self.keep = keep
        self._bufs: dict[tuple, list] = {}
        self._lock = threading.Lock()

    def get(self, shape, dtype) -> np.ndarray:
        """An aligned array of ``shape`` and ``dtype`` that nothing else references."""
        key = (tuple(shape), np.dtype(dtype))
        with self._lock:
            bufs = self._bufs.setdefault(key, [])
            for pair in bufs:
                # references: the pool's tuple and getrefcount's argument (plus ``out``'s
                # base reference for the owner); any view or holder adds one
                if sys.getrefcount(pair[1]) == 2 and sys.getrefcount(pair[0]) == 3:
                    return pair[1]
            out = empty_aligned(*key)
            if len(bufs) < self.keep:
                bufs.append((out.base if out.base is not None else out, out))
            return out


_held: set[int] = set()


def hold_thread_state() -> None:
    """Keep the calling thread's Python thread state alive between hops.

    TensorFlow runs a ``tf.numpy_function`` on its own (non-Python) threads and wraps each
    call in ``PyGILState_Ensure``/``Release``, which creates the thread's Python state and
    destroys it again every call, including a map and unmap of its frame stack (the unmap
    interrupts every core running the process): about 60 us per hop on a 2-core VM. One
    extra ``Ensure`` that is never released keeps the state, so later calls only take the
    GIL. Python threads and the main thread keep theirs anyway; this costs them nothing.
    """
    tid = threading.get_ident()
    if tid in _held:
        return
    _held.add(tid)
    ctypes.pythonapi.PyGILState_Ensure()


def pack_aligned(arrays, pool: AlignedPool | None = None) -> tuple[np.ndarray, list[int]]:
    """One aligned buffer holding ``arrays`` (one dtype), each at a 64-byte aligned
    offset, and those offsets: reduced in place, its parts go back to TensorFlow as views
    (``unpack_views``) that TensorFlow adopts without a copy. The buffer is new, or from
    ``pool`` (one whose earlier views TensorFlow has let go of)."""
    align = ALIGN // arrays[0].itemsize or 1
    offsets, at = [], 0
    for a in arrays:
        offsets.append(at)
        at += -(-a.size // align) * align
    flat = pool.get((at,), arrays[0].dtype) if pool is not None else \
        empty_aligned((at,), arrays[0].dtype)
    end = 0
    for a, o in zip(arrays, offsets):
        flat[end:o] = 0  # padding between the parts: reduced, never read
        flat[o:o + a.size] = a.reshape(-1)
        end = o + a.size
    flat[end:] = 0
    return flat, offsets


def unpack_views(flat: np.ndarray, offsets: list[int], parts) -> list:
    """Views of ``flat`` shaped as ``parts`` (the arrays ``pack_aligned`` took)."""
    return [flat[o:o + p.size].reshape(p.shape) for o, p in zip(offsets, parts)]



class _Sub:
    """One TF object in an op's arguments: the array that stands in for it, and its dtype."""

    __slots__ = ("original", "array", "dname", "value")

    def __init__(self, original, array, dname):
        self.original, self.array, self.dname = original, array, dname
        self.value = None

    def result(self, arr: np.ndarray):
        """The TF value to return for ``arr`` (the op's output for this argument)."""
        if self.value is None:
            self.value = self._make(arr)
        return self.value

    def _make(self, arr: np.ndarray):
        if _is_variable(self.original):
            self.original.assign(from_numpy(arr, self.dname))
            return self.original
        if arr is self.array and not self.array.flags.writeable:
            return self.original  # read, never written: the same tensor
        return from_numpy(arr, self.dname)


def adapt(what: str, args: tuple, world_size: int):
    """NumPy stand-ins for the TF objects in ``args``, and the function that turns the
    op's result back into TF objects. Raises for symbolic tensors (see ``graph_call``)."""
    subs: dict[int, _Sub] = {}
    writes = what in _WRITES
    dnames: list[str] = []

    def sub(x, name, writable):
        dname = check(x, name)
        if is_symbolic(x):
            raise InvalidInputTypeError(
                f"{name} is a symbolic tensor (inside tf.function) passed to {what}; call the "
                "collective in eager mode, or use shoal.horovod.tensorflow's ops, which run "
                "inside tf.function")
        arr = to_numpy(x, name)
        if writable:
            copy = empty_aligned(arr.shape, arr.dtype)
            copy[...] = arr  # the one copy: the op writes into it
            arr = copy
        subs[id(arr)] = _Sub(x, arr, dname)
        dnames.append(dname)
        return arr

    out = list(args)
    for i, a in enumerate(args):
        if is_tf(a):
            out[i] = sub(a, "tensor", writes and what != "allreduce")
        elif isinstance(a, (list, tuple)) and any(is_tf(x) for x in a):
            out[i] = [sub(x, f"tensors[{j}]", writes) if is_tf(x) else x for j, x in enumerate(a)]
    o, out_sub = _OUT_ARG.get(what), None
    if o is not None and args[o] is not None and is_tf(args[o]):
        if not _is_variable(args[o]):
            raise InvalidInputTypeError(
                "out is a tf.Tensor, which is immutable; pass a tf.Variable as out, or omit "
                "out and use the returned tensor")
        fresh = empty_aligned(out[o].shape, out[o].dtype)
        out_sub = subs[id(fresh)] = _Sub(args[o], fresh, subs.pop(id(out[o])).dname)
        out[o] = fresh
    elif what == "allreduce" and is_tf(args[0]) and args[2] is None:
        # read the input where it lies and write the result into a new buffer: no copy
        fresh = empty_aligned(out[0].shape, out[0].dtype)
        subs[id(fresh)] = _Sub(args[0], fresh, subs[id(out[0])].dname)
        out[2] = fresh
    dname0 = dnames[0] if dnames else None

    def back(result):
        if out_sub is not None:
            out_sub.result(out_sub.array)  # assign ``out`` even where the op returns views of it
        return _convert(result, subs, dname0)
    return tuple(out), back


def _convert(r, subs: dict, dname):
    if isinstance(r, np.ndarray):
        s = subs.get(id(r))
        if s is not None:
            return s.result(r)
        return from_numpy(r, dname if dname == "bfloat16" and r.dtype == np.uint16 else r.dtype.name)
    if isinstance(r, list):
        return [_convert(x, subs, dname) for x in r]
    if isinstance(r, tuple):
        return tuple(_convert(x, subs, dname) for x in r)
    return r


# ------------------------------------------------------------------ inside tf.function
# op -> how its output looks: "same" (one tensor like the input), "list" (world_size
# tensors like the input), "part" (one tensor, dimension 0 unknown), "each" (a list like
# the input list)
_GRAPH_OUT = {"allreduce": "same", "broadcast": "same", "reduce": "same", "recv": "same",
              "allgather": "list", "reduce_scatter": "part", "alltoall": "part",
              "grouped_allreduce": "each", "grouped_broadcast": "each"}


def graph_call(comm, what: str, run, args: tuple):
    """Run ``run(*eager_args)`` as a ``tf.py_function`` on the symbolic TF arguments.

    Variables written by the op are assigned the result in the graph.
    """
    tf = _tf()
    shape_of = _GRAPH_OUT.get(what)
    if shape_of is None:
        raise InvalidInputTypeError(
            f"{what} does not run on symbolic tensors inside tf.function; call it in eager mode "
            f"(ops that do: {', '.join(sorted(_GRAPH_OUT))})")
    positions, inputs, originals = [], [], []
    for i, a in enumerate(args):
        items = a if isinstance(a, (list, tuple)) and shape_of == "each" and i == 0 else [a]
        for j, x in enumerate(items):
            if is_tf(x):
                check(x, "tensor")
                positions.append((i, j if items is a else None))
                originals.append(x)
                inputs.append(_value(x) if _is_variable(x) else x)
    if not inputs:
        raise InvalidInputTypeError(f"{what}: no TensorFlow tensor among the arguments")
    dtypes = [t.dtype for t in inputs]
    if shape_of == "list":
        tout = [dtypes[0]] * comm.world_size
    elif shape_of == "each":
        tout = dtypes
    else:
        tout = [dtypes[0]]

    def eager(*vals):
        a = list(args)
        for (i, j), v in zip(positions, vals):
            if j is None:
                a[i] = v
            else:
                a[i] = list(a[i])
                a[i][j] = v
        res = run(*a)
        if shape_of in ("list", "each"):
            return list(res)
        return [res]

    outs = tf.py_function(eager, inputs, tout)
    outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
    if shape_of in ("same", "each"):
        for o, t in zip(outs, inputs):
            o.set_shape(t.shape)
    elif shape_of == "list":
        for o in outs:
            o.set_shape([None, *inputs[0].shape[1:]])
    else:
        outs[0].set_shape([None, *inputs[0].shape[1:]])
    if shape_of in ("same", "each"):
        for k, (o, x) in enumerate(zip(outs, originals)):
            if _is_variable(x):
                x.assign(o)
                outs[k] = x
    if shape_of in ("list", "each"):
        return outs
    return outs[0]
