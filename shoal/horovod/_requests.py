"""The framework-neutral part of shoal.horovod's ops: submitting a request to the process
set's engine, handles, and the ops that need no tensor library (barrier, join, object
collectives on NumPy bytes). horovod.torch's face (``_ops``) and horovod.tensorflow's build
on it; it imports no torch, so the TensorFlow and Keras faces work without it.
"""
from __future__ import annotations

import itertools
import pickle
import threading

import numpy as np

from shoal.horovod._engine import (ALLGATHER, ALLREDUCE, BARRIER, BROADCAST, JOIN, Request,
                                   packed_extra)
from shoal.horovod._world import _w, engine_of, global_process_set

Average, Sum, Adasum, Min, Max, Product = "avg", "sum", "adasum", "min", "max", "prod"
_OPS = {Average, Sum, Min, Max, Product}

_handles: dict = {}
_handles_lock = threading.Lock()
_next_handle = itertools.count(1)


def _check_op(op, average) -> str:
    if average is not None:
        if op is not None:
            raise ValueError("The op parameter supersedes average. Please provide only one of them.")
        op = Average if average else Sum
    op = Average if op is None else op
    if op == Adasum:
        raise NotImplementedError("Adasum is not supported by shoal.horovod; use hvd.Average "
                                  "or hvd.Sum")
    if op not in _OPS:
        raise ValueError(f"unknown reduce op {op!r}; use hvd.Average, Sum, Min, Max or Product")
    return op


def _submit(kind, name, tensors, finish, process_set, op="sum", root=-1, pre=1.0, post=1.0,
            error=None, splits=None, wake=True, extra=None) -> int:
    eng = engine_of(process_set)
    key = str(name) if name is not None else eng.auto_name(kind)
    req = Request(key, kind, tensors, op, root, pre, post, extra=extra, error=error)
    req.splits = splits
    handle = eng.submit(req, wake and not getattr(_tls, "sync", False))
    h = next(_next_handle)
    with _handles_lock:
        _handles[h] = (eng, handle, finish)
    return h


_tls = threading.local()


def _now(async_fn, *args, **kwargs):
    """Run an async op and wait for it; the calling thread drives the negotiation."""
    _tls.sync = True
    try:
        h = async_fn(*args, **kwargs)
    finally:
        _tls.sync = False
    return synchronize(h)


def synchronize(handle):
    """Wait for an async op; returns its output (tensor, or tuple for alltoall).

    Raises the op's error (the same on every rank for mismatched calls).
    """
    if callable(handle):            # sparse_allreduce_async returns a function, as Horovod's
        return handle()
    with _handles_lock:
        entry = _handles.pop(handle, None)
    if entry is None:
        raise ValueError(f"unknown or already synchronized Horovod handle {handle!r}")
    eng, h, finish = entry
    return finish(h.wait(eng, None))


def poll(handle) -> bool:
    """True if the async op of ``handle`` is done (``synchronize`` will not block)."""
    with _handles_lock:
        entry = _handles.get(handle)
    if entry is None:
        raise ValueError(f"unknown or already synchronized Horovod handle {handle!r}")
    return entry[1].event.is_set()


def grouped_allreduce_async_(tensors, average=None, name=None, op=None, prescale_factor=1.0,
                             postscale_factor=1.0, process_set=global_process_set) -> int:
    """Start an in-place allreduce of a list of tensors as one fused op; returns a handle."""
    op = _check_op(op, average)
    return _submit(ALLREDUCE, name, list(tensors), lambda outs: outs, process_set, op, -1,
                   prescale_factor, postscale_factor)


def packed_allreduce_(flat, shapes, name=None, op=None, prescale_factor=1.0,
                      postscale_factor=1.0, process_set=global_process_set) -> int:
    """Start an in-place allreduce of ``flat``, a buffer the caller packed a group of
    tensors of ``shapes`` into: one tensor on the wire (no fusion copies), while the
    ranks still check each other's shapes as for a grouped allreduce."""
    op = _check_op(op, None)
    return _submit(ALLREDUCE, name, [flat], lambda outs: outs, process_set, op, -1,
                   prescale_factor, postscale_factor, extra=packed_extra(shapes))


def _check_root(root_rank, process_set) -> tuple[int, str | None]:
    """The root's rank within the set, or an error every rank raises."""
    ranks = engine_of(process_set).set_ranks
    if root_rank not in ranks:
        return -1, f"root_rank {root_rank} is not a rank of the process set {ranks}"
    return ranks.index(root_rank), None


def _bytes(obj) -> np.ndarray:
    return np.frombuffer(bytearray(pickle.dumps(obj)), dtype=np.uint8)  # writable


def _first(outs):
    return outs[0]


def broadcast_object(obj, root_rank=0, name=None, process_set=global_process_set):
    """Rank ``root_rank``'s picklable ``obj`` on every rank (peers are authenticated)."""
    me = _w().rank
    root, err = _check_root(root_rank, process_set)
    payload = _bytes(obj) if me == root_rank else None
    base = name or engine_of(process_set).auto_name("object")
    n = np.array([0 if payload is None else payload.size], np.int64)
    _now(_submit, BROADCAST, f"{base}.size", [n], _first, process_set, root=root, error=err)
    data = payload if payload is not None else np.empty(int(n[0]), np.uint8)
    _now(_submit, BROADCAST, f"{base}.data", [data], _first, process_set, root=root, error=err)
    return obj if me == root_rank else pickle.loads(data.tobytes())


def allgather_object(obj, name=None, process_set=global_process_set) -> list:
    """Every rank's picklable ``obj``, in rank order."""
    payload = _bytes(obj)
    base = name or engine_of(process_set).auto_name("object")
    sizes = _now(_submit, ALLGATHER, f"{base}.sizes", [np.array([payload.size], np.int64)],
                 _first, process_set)
    data = _now(_submit, ALLGATHER, f"{base}.data", [payload], _first, process_set).tobytes()
    out, at = [], 0
    for s in sizes.tolist():
        out.append(pickle.loads(data[at:at + s]))
        at += s
    return out


# ------------------------------------------------------------------ barrier, join
def barrier(process_set=global_process_set) -> None:
    """Return once every rank of the process set reached the barrier."""
    _now(_submit, BARRIER, None, [], lambda outs: None, process_set)


def join(device=-1) -> int:
    """Signal that this rank has no more data; returns the rank that joined last.

    Until every rank has joined, this rank keeps taking part in the
    collectives the others still issue, as in Horovod: it contributes zeros to
    allreduces (Average still divides by ``size()``, as Horovod's does) and no
    rows to allgathers; broadcast, alltoall and reducescatter raise on the
    ranks that issue them meanwhile. Among ranks that joined in the same
    round, the highest counts as the last.
    """
    eng = engine_of(global_process_set)
    req = Request(f"join.{id(eng)}", JOIN)
    handle = eng.submit(req)
    return handle.wait(eng, None)
