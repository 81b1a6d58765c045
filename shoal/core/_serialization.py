"""Values to bytes and back: pickle protocol 5, big buffers out of band.

A serialized object is a tuple ``(data, path, layout, contained, is_error, nbytes)``:
``data`` is the pickle stream; buffers of at least ``INLINE_BUFFER`` bytes
are written to the file ``path`` (shared memory, or a spill file on disk)
at the offsets in ``layout``, so a reader maps them without a copy;
``contained`` lists the ids of ObjectRefs pickled inside the value.
"""
from __future__ import annotations

import mmap
import os
import pickle
import weakref

import cloudpickle

from shoal.core import object_ref as _oref
from shoal.exceptions import SerializationError

INLINE_BUFFER = 64 * 1024
_ALIGN = 64
DATA, PATH, LAYOUT, CONTAINED, IS_ERROR, NBYTES = range(6)


def dumps_code(obj) -> bytes:
    """Pickle a function or class by value (cloudpickle)."""
    return cloudpickle.dumps(obj, protocol=5)


def _dumps(value, take, bufs: list, ids: list) -> bytes:
    """Pickle with the fast C pickler; fall back to cloudpickle for lambdas,
    local classes and anything of the driver's ``__main__``, which pickles by
    reference there but cannot be imported by a worker."""
    try:
        data = pickle.dumps(value, protocol=5, buffer_callback=take)
        if b"__main__" not in data:
            return data
    except (pickle.PicklingError, AttributeError, TypeError):
        pass
    bufs.clear()
    ids.clear()
    return cloudpickle.dumps(value, protocol=5, buffer_callback=take)


def serialize(value, new_path, *, is_error: bool = False, what: str = "value",
              alloc=None) -> tuple:
    """Serialize ``value``; ``new_path()`` names a fresh file for big buffers.

    ``alloc(nbytes)``, if given, may return ``(path, mm)``: a recycled file
    whose pages are already in memory (``mm`` its writable mapping, or None),
    which is much faster to fill than fresh pages.
    """
    bufs: list = []

    def take(buf):
        raw = buf.raw()
        if raw.nbytes < INLINE_BUFFER:
            return True
        bufs.append(raw)
        return False

    ids: list = []
    _oref._collect.ids = ids
    try:
        data = _dumps(value, take, bufs, ids)
    except Exception as e:  # noqa: BLE001 - any pickling failure becomes one clear error
        raise SerializationError(
            f"could not serialize {what} of type {type(value).__name__}: {e}. "
            "Pass only picklable objects (open files, locks, sockets and generators are not), "
            "or create the object inside the task instead.") from e
    finally:
        _oref._collect.ids = None
    if not bufs:
        return (data, None, None, tuple(ids), is_error, 0)
    layout, off = [], 0
    for raw in bufs:
        layout.append((off, raw.nbytes))
        off += (raw.nbytes + _ALIGN - 1) // _ALIGN * _ALIGN
    got = alloc(off) if alloc is not None else None
    if got is None:
        path = new_path()
        write_buffers(path, bufs, layout, off)
    else:
        path, mm = got
        fill_buffers(path, mm, bufs, layout)
    return (data, path, tuple(layout), tuple(ids), is_error, off)


def write_buffers(path: str, bufs, layout, total: int) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, total)
        for raw, (off, n) in zip(bufs, layout):
            view = raw.cast("B") if raw.format != "B" or raw.ndim != 1 else raw
            done = 0
            while done < n:  # the kernel copies straight into the shared pages
                done += os.pwrite(fd, view[done:], off + done)
    except BaseException:
        os.close(fd)
        _unlink(path)
        raise
    os.close(fd)


def fill_buffers(path: str, mm, bufs, layout) -> None:
    """Write buffers into an existing file (through its mapping when we have one)."""
    if mm is not None:
        for raw, (off, n) in zip(bufs, layout):
            mm[off:off + n] = raw.cast("B") if raw.format != "B" or raw.ndim != 1 else raw
        return
    fd = os.open(path, os.O_RDWR)
    try:
        for raw, (off, n) in zip(bufs, layout):
            view = raw.cast("B") if raw.format != "B" or raw.ndim != 1 else raw
            done = 0
            while done < n:
                done += os.pwrite(fd, view[done:], off + done)
    finally:
        os.close(fd)


# Where this process reports that it maps (2, path) or stopped mapping (-2, path)
# an object's file: the driver recycles a file only when nobody maps it.
map_events = None


def deserialize(desc: tuple):
    """The value of a serialized object (buffers mapped read-only, no copy)."""
    path = desc[PATH]
    if path is None:
        return pickle.loads(desc[DATA])
    fd = os.open(path, os.O_RDONLY)
    try:
        mm = mmap.mmap(fd, desc[NBYTES], prot=mmap.PROT_READ) if desc[NBYTES] else b""
    finally:
        os.close(fd)
    if map_events is not None and mm:
        map_events.append((2, path))
        weakref.finalize(mm, map_events.append, (-2, path))
    view = memoryview(mm)
    return pickle.loads(desc[DATA], buffers=[view[o:o + n] for o, n in desc[LAYOUT]])


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
