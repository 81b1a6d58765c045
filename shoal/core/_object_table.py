"""The driver's table of objects: readiness, reference counts, memory, spilling.

An object is alive while some process holds an ObjectRef to it (``holders``:
the processes), a pending task uses it as an argument, or another live object
contains a ref to it (``pins``). Its big buffers live in a shared-memory file;
when the store is over capacity the least recently used files move to disk
and readers map them from there.
"""
from __future__ import annotations

import mmap
import os
import shutil
from collections import OrderedDict

from shoal.core._serialization import CONTAINED, NBYTES, PATH, _unlink

_MIN_RECYCLE = 1 << 20     # files this big are kept for reuse when freed


class Obj:
    __slots__ = ("desc", "holders", "pins", "waiters", "on_free", "abandoned")

    def __init__(self):
        self.desc = None        # serialized value once ready
        self.holders = set()    # process ids holding refs
        self.pins = 0           # pending tasks using it + live objects containing it
        self.waiters = []       # callables(oid) run when it becomes ready
        self.on_free = None     # callable run when it is freed
        self.abandoned = False  # every holder left before it was ready


class ObjectTable:
    def __init__(self, capacity: int, shm_dir: str, spill_dir: str):
        self.objs: dict = {}
        self.capacity = capacity
        self.used = 0
        self.shm_dir = shm_dir
        self.spill_dir = spill_dir
        self._resident: OrderedDict = OrderedDict()  # oid -> nbytes, LRU order
        self.spilled_bytes = 0
        self.spill_count = 0
        # Freed files whose pages stay in memory, for the next big object:
        # filling warm pages is several times faster than faulting in new ones.
        self.pool: list = []               # [size, path, writable mmap or None]
        self.pool_bytes = 0
        self.pool_cap = capacity // 4
        self.mappers: dict = {}            # path -> {process: number of live mappings}
        self.unmapped_waiting: dict = {}   # path -> size, freed but still mapped somewhere
        self.sizes: dict = {}              # path -> file size, for files from the pool
        self._writers: dict = {}           # path -> the driver's writable mmap of it

    def create(self, oid) -> Obj:
        o = self.objs.get(oid)
        if o is None:
            o = self.objs[oid] = Obj()
        return o

    def set_ready(self, oid, desc) -> list:
        """Store the value; returns the waiters to run."""
        o = self.objs.get(oid)
        if o is None:  # nobody can reach it any more: drop the value
            self._drop_desc(desc)
            return []
        if o.desc is not None:  # a retried task produced it again; keep the first
            self._drop_desc(desc)
            return []
        o.desc = desc
        for c in desc[CONTAINED]:
            self.create(c).pins += 1
        if desc[PATH] is not None and desc[PATH].startswith(self.shm_dir):
            self._resident[oid] = desc[NBYTES]
            self.used += desc[NBYTES]
            if self.used + self.pool_bytes > self.capacity:
                self.trim_pool()
            if self.used > self.capacity:
                self.spill(keep=oid)
        waiters, o.waiters = o.waiters, []
        if not o.holders and not o.pins:
            self.free(oid)
        return waiters

    def touch(self, oid) -> None:
        if oid in self._resident:
            self._resident.move_to_end(oid)

    def add_holder(self, oid, proc) -> None:
        self.create(oid).holders.add(proc)

    def remove_holder(self, oid, proc) -> None:
        o = self.objs.get(oid)
        if o is None:
            return
        o.holders.discard(proc)
        self.maybe_free(oid, o)

    def unpin(self, oid) -> None:
        o = self.objs.get(oid)
        if o is None:
            return
        o.pins -= 1
        self.maybe_free(oid, o)

    def maybe_free(self, oid, o: Obj) -> None:
        if o.holders or o.pins > 0:
            return
        if o.desc is None:
            o.abandoned = True
            if o.on_free is None and not o.waiters:
                return
        self.free(oid)

    def free(self, oid) -> None:
        o = self.objs.pop(oid, None)
        if o is None:
            return
        if o.desc is not None:
            self._drop_desc(o.desc, oid)
            for c in o.desc[CONTAINED]:
                self.unpin(c)
        if o.on_free is not None:
            o.on_free()

    def _drop_desc(self, desc, oid=None) -> None:
        path = desc[PATH]
        if path is None:
            return
        if oid is not None and self._resident.pop(oid, None) is not None:
            self.used -= desc[NBYTES]
        elif path.startswith(self.spill_dir):
            self.spilled_bytes -= desc[NBYTES]
            _unlink(path)
            return
        size = self.sizes.pop(path, None) or desc[NBYTES]
        if self.mappers.get(path):
            self.unmapped_waiting[path] = size
        else:
            self._recycle(path, size)

    def release_file(self, desc) -> None:
        """A task's argument file is no longer needed (recycled once unmapped)."""
        self._drop_desc(desc)

    # ---------------------------------------------------------------- recycling
    def mapped(self, path, proc, delta: int) -> None:
        procs = self.mappers.get(path)
        if procs is None:
            if delta < 0:
                return
            procs = self.mappers[path] = {}
        n = procs.get(proc, 0) + delta
        if n > 0:
            procs[proc] = n
        else:
            procs.pop(proc, None)
            if not procs:
                del self.mappers[path]
                size = self.unmapped_waiting.pop(path, None)
                if size is not None:
                    self._recycle(path, size)

    def forget_process(self, proc) -> None:
        for path in [p for p, procs in self.mappers.items() if proc in procs]:
            self.mapped(path, proc, -self.mappers[path][proc])

    def _recycle(self, path, size) -> None:
        mm = self._writers.pop(path, None)
        if (size < _MIN_RECYCLE or not path.startswith(self.shm_dir)
                or self.pool_bytes + size > self.pool_cap):
            if mm is not None:
                mm.close()
            _unlink(path)
            return
        self.pool.append([size, path, mm])
        self.pool_bytes += size

    def allocate(self, nbytes: int, writable_map: bool):
        """A recycled file of at least ``nbytes`` (not much more), or None."""
        if nbytes < _MIN_RECYCLE or not self.pool:
            return None
        best = None
        for i, (size, _path, _mm) in enumerate(self.pool):
            if nbytes <= size <= 2 * nbytes + _MIN_RECYCLE and (best is None or size < self.pool[best][0]):
                best = i
        if best is None:
            return None
        size, path, mm = self.pool.pop(best)
        self.pool_bytes -= size
        self.sizes[path] = size
        if writable_map and mm is None:
            fd = os.open(path, os.O_RDWR)
            try:
                mm = mmap.mmap(fd, size)
            finally:
                os.close(fd)
        elif not writable_map and mm is not None:
            mm.close()
            mm = None
        if mm is not None:
            self._writers[path] = mm
        return path, mm

    def trim_pool(self) -> None:
        while self.pool and self.used + self.pool_bytes > self.capacity:
            size, path, mm = self.pool.pop(0)
            self.pool_bytes -= size
            if mm is not None:
                mm.close()
            _unlink(path)

    def spill(self, keep=None) -> None:
        """Move least recently used shared-memory objects to disk until under capacity."""
        os.makedirs(self.spill_dir, exist_ok=True)
        for oid in list(self._resident):
            if self.used <= self.capacity:
                break
            o = self.objs.get(oid)
            if o is None or o.desc is None:
                self._resident.pop(oid, None)
                continue
            if oid == keep and len(self._resident) > 1:
                continue
            src = o.desc[PATH]
            dst = os.path.join(self.spill_dir, os.path.basename(src))
            shutil.copyfile(src, dst)
            _unlink(src)
            self.sizes.pop(src, None)
            w = self._writers.pop(src, None)
            if w is not None:
                w.close()
            d = list(o.desc)
            d[PATH] = dst
            o.desc = tuple(d)
            n = self._resident.pop(oid)
            self.used -= n
            self.spilled_bytes += n
            self.spill_count += 1

    def drop_all(self) -> None:
        for size, path, mm in self.pool:
            if mm is not None:
                mm.close()
            _unlink(path)
        self.pool.clear()
        for oid in list(self.objs):
            o = self.objs.pop(oid)
            if o.desc is not None:
                self._drop_desc(o.desc, oid)
        self._resident.clear()
        self.used = 0
