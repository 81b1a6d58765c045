"""Scheduling in the driver: objects, tasks, dispatch to workers, nested waits.

A mixin of ``LocalBackend``. Private methods and ``rpc_*`` handlers run
with ``self.lock`` held; the public ones (put, get_descs, wait_ids,
submit_local, cancel) take it themselves.
"""
from __future__ import annotations

import threading
import time
from time import time as _now
from collections import deque
from typing import TYPE_CHECKING

from shoal.core._resources import Pool
from shoal.core._serialization import CONTAINED, IS_ERROR, PATH, _unlink, deserialize, serialize
from shoal.core._spec import TaskSpec
from shoal.core.object_ref import ObjectRef
from shoal.exceptions import (
    ActorDiedError,
    GetTimeoutError,
    ObjectLostError,
    TaskCancelledError,
)

if TYPE_CHECKING:
    from shoal.core._local import WorkerProc

DRIVER = 0
_PREFETCH = 4              # tasks queued ahead on a worker, for short tasks only
_SHORT_TASK_S = 0.002      # "short": mean run time below this
DEFERRED = object()        # an RPC whose reply comes later


class _Waiter:
    """A get or wait blocked on objects; ``fire`` runs when it is satisfied."""

    __slots__ = ("need", "ids", "ready", "event", "fire", "done")

    def __init__(self, ids, need, fire=None):
        self.ids = ids
        self.need = need
        self.ready: list = []
        self.event = threading.Event() if fire is None else None
        self.fire = fire
        self.done = False

    def __call__(self, oid):
        if self.done:
            return
        self.ready.append(oid)
        if len(self.ready) >= self.need:
            self.done = True
            if self.event is not None:
                self.event.set()
            else:
                self.fire(self)


class _Stream:
    """What the driver keeps of one streaming task's items."""

    __slots__ = ("oids", "pinned", "count", "end")

    def __init__(self):
        self.oids: dict = {}     # item index -> object id
        self.pinned: set = set()  # indexes not yet handed to a caller
        self.count = 0           # items received so far
        self.end = None          # index of the first slot past the last item, once known


_END_MARK = serialize(None, None)


class Scheduler:
    # ---------------------------------------------------------------- objects
    def _drain_refs(self) -> None:
        self._apply_refs(self.counter.drain(), DRIVER)

    def _apply_refs(self, events, proc) -> None:
        objs = self.objects
        for delta, key in events:
            if delta == 1:
                objs.add_holder(key, proc)
            elif delta == -1:
                objs.remove_holder(key, proc)
            else:  # +-2: a file mapped / unmapped
                objs.mapped(key, proc, 1 if delta > 0 else -1)

    def _ready(self, oid, desc) -> None:
        self.producing.pop(oid, None)
        for fn in self.objects.set_ready(oid, desc):
            fn(oid)

    def put(self, value) -> ObjectRef:
        oid = self.new_id()
        desc = serialize(value, self.new_path, what="shoal.put() value", alloc=self._alloc)
        with self.lock:
            self.objects.create(oid)
            ref = ObjectRef(oid)
            self._drain_refs()
            self._ready(oid, desc)
        return ref

    def _alloc(self, nbytes: int):
        with self.lock:
            self._drain_refs()
            return self.objects.allocate(nbytes, writable_map=True)

    def rpc_alloc(self, w, req, nbytes):
        got = self.objects.allocate(nbytes, writable_map=False)
        return None if got is None else got[0]

    def get_descs(self, ids: list, timeout: float | None) -> list:
        with self.lock:
            self._drain_refs()
            objs = self.objects.objs
            missing = []
            for oid in ids:
                o = objs.get(oid)
                if o is None:
                    raise ObjectLostError(f"object {oid:016x} was freed or never existed; "
                                          "keep an ObjectRef to it while you need its value")
                if o.desc is None:
                    missing.append(oid)
            if missing:
                waiter = _Waiter(missing, len(set(missing)))
                for oid in set(missing):
                    objs[oid].waiters.append(waiter)
        if missing:
            if not waiter.event.wait(timeout):
                with self.lock:
                    waiter.done = True
                raise GetTimeoutError(f"get() timed out after {timeout}s with "
                                      f"{len(set(missing)) - len(waiter.ready)} of {len(ids)} "
                                      "objects still pending")
        with self.lock:
            out = []
            for oid in ids:
                o = objs.get(oid)
                if o is None:
                    raise ObjectLostError(f"object {oid:016x} was freed while being fetched")
                self.objects.touch(oid)
                out.append(o.desc)
            return out

    def wait_ids(self, ids: list, num_returns: int, timeout: float | None) -> list:
        with self.lock:
            self._drain_refs()
            objs = self.objects.objs
            ready = [i for i in ids if i not in objs or objs[i].desc is not None]
            if len(ready) >= num_returns or timeout == 0:
                return ready
            pending = [i for i in ids if i in objs and objs[i].desc is None]
            waiter = _Waiter(pending, num_returns - len(ready))
            for oid in set(pending):
                objs[oid].waiters.append(waiter)
        waiter.event.wait(timeout)
        with self.lock:
            waiter.done = True
            return [i for i in ids if i not in objs or objs[i].desc is not None]

    # ---------------------------------------------------------------- tasks
    def register_function(self, fn_id, data: bytes) -> None:
        with self.lock:
            self.functions.setdefault(fn_id, data)

    def submit_local(self, spec: TaskSpec) -> list:
        """Submit from the driver; returns the ObjectRefs of the results."""
        with self.lock:
            self._drain_refs()
            for rid in spec.returns:
                self.objects.create(rid)
            refs = [ObjectRef(rid) for rid in spec.returns]
            self._drain_refs()
            self._submit(spec)
            self._schedule()
        return refs

    def _submit(self, spec: TaskSpec) -> None:
        objs = self.objects
        spec.t_submit = _now()
        for rid in spec.returns:
            objs.create(rid)
            self.producing[rid] = spec
        if spec.gen == 1 and spec.returns[0] not in self.streams:
            self._stream_open(spec.returns[0])
        for c in spec.args[CONTAINED]:  # contained refs inside the arguments
            objs.create(c).pins += 1
        unresolved = 0
        for d in spec.deps:
            o = objs.create(d)
            o.pins += 1
            if o.desc is None:
                unresolved += 1
                o.waiters.append(lambda oid, s=spec: self._dep_ready(s))
        spec.unresolved = unresolved
        if spec.actor_id is not None:
            a = self.actors.get(spec.actor_id)
            if a is None:
                self._fail(spec, ActorDiedError(f"actor {spec.actor_id:x} does not exist"))
                return
            a.submit(self, spec)
        elif unresolved == 0:
            self._enqueue(spec)

    def _dep_ready(self, spec: TaskSpec) -> None:
        spec.unresolved -= 1
        if spec.unresolved == 0 and not spec.done:
            if spec.actor_id is not None:
                a = self.actors.get(spec.actor_id)
                if a is not None:
                    a.pump(self)
            else:
                self._enqueue(spec)

    def _enqueue(self, spec: TaskSpec, front: bool = False) -> None:
        shape = (tuple(sorted(spec.demand.items())), spec.pg_id, spec.bundle)
        q = self.queues.get(shape)
        if q is None:
            q = self.queues[shape] = deque()
        if front:
            q.appendleft(spec)
        else:
            q.append(spec)

    def _pool_for(self, demand, pg_id, bundle) -> Pool | None:
        if pg_id is None:
            return self.node if self.node.fits(demand) else None
        pg = self.pgs.get(pg_id)
        return pg.pick(demand, bundle) if pg is not None else None

    def _schedule(self) -> None:
        if self.pg_pending:
            self._try_pgs()
        if self.pending_actors:
            for a in list(self.pending_actors):
                a.try_place(self)
        if not self.queues:
            return
        idle = [w for w in self.workers.values()
                if w.state == "idle" and w.actor is None and w.conn is not None]
        starting = sum(1 for w in self.workers.values() if w.state == "starting" and w.actor is None)
        for shape in list(self.queues):
            q = self.queues[shape]
            while q:
                spec = q[0]
                if spec.done:
                    q.popleft()
                    continue
                pool = self._pool_for(spec.demand, spec.pg_id, spec.bundle)
                if pool is not None and idle:
                    w = idle.pop()
                    pool.acquire(spec.demand)
                    w.lease = (pool, spec.demand)
                    w.shape = shape
                    w.state = "busy"
                    q.popleft()
                    self._dispatch(w, spec)
                    continue
                # Short tasks: queue a few more on a worker already running this shape.
                if self.fn_time.get(spec.fn_id, 1.0) < _SHORT_TASK_S:
                    w = self._prefetch_target(shape)
                    if w is not None:
                        q.popleft()
                        self._dispatch(w, spec)
                        continue
                if pool is not None and starting < min(len(q), self.max_starting):
                    self._spawn_worker()
                    starting += 1
                break
            if not q:
                del self.queues[shape]

    def _prefetch_target(self, shape):
        best = None
        for w in self.workers.values():
            if (w.state == "busy" and w.shape == shape and not w.blocked and w.actor is None
                    and len(w.inflight) < _PREFETCH and (best is None or len(w.inflight) < len(best.inflight))):
                best = w
        return best

    def _dispatch(self, w: WorkerProc, spec: TaskSpec) -> None:
        spec.worker = w
        w.inflight[spec.seq] = spec
        fn_bytes = None
        if spec.fn_id is not None and spec.fn_id not in w.fns_sent:
            w.fns_sent.add(spec.fn_id)
            fn_bytes = self.functions.get(spec.fn_id)
        objs = self.objects.objs
        deps = [objs[d].desc for d in spec.deps]
        self._send(w, ("task", spec.seq, spec.fn_id, fn_bytes, spec.name, spec.args, deps,
                       spec.returns, spec.method, spec.retry_exc, spec.gen))

    def _on_done(self, w: WorkerProc, seq, descs, elapsed, retryable) -> None:
        spec = w.inflight.pop(seq, None)
        if spec is None:
            for d in descs:
                if d is not None and d[PATH]:
                    _unlink(d[PATH])
            return
        if spec.fn_id is not None:
            old = self.fn_time.get(spec.fn_id)
            self.fn_time[spec.fn_id] = elapsed if old is None else 0.8 * old + 0.2 * elapsed
        if retryable and spec.retries_left != 0 and not spec.cancelled:
            spec.retries_left -= 1
            for d in descs:
                if d[PATH]:
                    _unlink(d[PATH])
            spec.worker = None
            if spec.actor_id is None:
                self._enqueue(spec, front=True)
            else:
                self.actors[spec.actor_id].retry(self, spec)
        else:
            self._complete(spec, descs, w.wid, elapsed)
        if w.actor is not None:
            w.actor.after_call(self)
        self._maybe_idle(w)

    def _complete(self, spec: TaskSpec, descs, wid=None, elapsed=0.0) -> None:
        spec.done = True
        spec.worker = None
        if self.task_events is not None:
            self.task_events.record(spec, descs, wid, elapsed)
        if spec.gen == 1:
            self._stream_close(spec.returns[0], descs[0])
        for rid, desc in zip(spec.returns, descs):
            self._ready(rid, desc)
        objs = self.objects
        for d in spec.deps:
            objs.unpin(d)
        for c in spec.args[CONTAINED]:
            objs.unpin(c)
        if spec.args[PATH]:
            self.objects.release_file(spec.args)

    def _fail(self, spec: TaskSpec, exc: BaseException) -> None:
        desc = serialize(exc, self.new_path, is_error=True)
        self._complete(spec, [desc] * len(spec.returns))

    def _maybe_idle(self, w: WorkerProc) -> None:
        if w.actor is None and not w.inflight and w.state == "busy":
            if w.lease is not None and not w.blocked:
                w.lease[0].release(w.lease[1])
            w.lease = None
            w.shape = None
            w.state = "idle"
            w.idle_since = time.monotonic()

    # ---------------------------------------------------------------- streaming generators
    # A streaming task's items are objects made as it yields. Slot k of a
    # stream is the object of item k; a caller asking for a slot not yet
    # filled waits on its object, which becomes ready with the item, or with
    # an end marker when the task ends sooner. The stream pins its slots until
    # they are handed out, and lets go of the rest when its generator is freed.
    def _stream_open(self, gid) -> None:
        self.streams[gid] = _Stream()
        self.objects.create(gid).on_free = lambda: self._stream_release(gid)

    def _stream_slot_oid(self, st: "_Stream", k: int):
        oid = st.oids.get(k)
        if oid is None:
            oid = st.oids[k] = self.new_id()
            self.objects.create(oid).pins += 1
            st.pinned.add(k)
        return oid

    def _on_yield(self, w, seq, index, desc) -> None:
        spec = w.inflight.get(seq)
        st = self.streams.get(spec.returns[0]) if spec is not None else None
        if st is None or st.end is not None or index != st.count:
            # A retry yields again what its first attempt did; keep the first.
            if desc[PATH]:
                _unlink(desc[PATH])
            return
        oid = self._stream_slot_oid(st, index)
        st.count += 1
        self._ready(oid, desc)

    def _stream_close(self, gid, desc) -> None:
        st = self.streams.get(gid)
        if st is None or st.end is not None:
            return
        if desc[IS_ERROR]:  # the error is the item after the last one yielded
            oid = self._stream_slot_oid(st, st.count)
            st.count += 1
            self._ready(oid, serialize(deserialize(desc), self.new_path, is_error=True))
        st.end = st.count
        for k, oid in list(st.oids.items()):
            if k >= st.end:
                self._ready(oid, _END_MARK)

    def _stream_release(self, gid) -> None:
        st = self.streams.pop(gid, None)
        if st is not None:
            for k in st.pinned:
                self.objects.unpin(st.oids[k])
            st.pinned = set()

    def _stream_slot(self, gid, k, proc):
        st = self.streams.get(gid)
        if st is None or (st.end is not None and k >= st.end):
            return None, "end"
        oid = self._stream_slot_oid(st, k)
        if k >= st.count:
            return oid, "pending"
        if oid not in self.objects.objs:
            raise ObjectLostError(f"item {k} of the generator was freed; take each item's "
                                  "ObjectRef once and keep it while you need the value")
        self.objects.add_holder(oid, proc)   # before the caller's own ref says so
        if k in st.pinned:
            st.pinned.discard(k)
            self.objects.unpin(oid)
        return oid, "item"

    def stream_slot(self, gid, k):
        with self.lock:
            self._drain_refs()
            return self._stream_slot(gid, k, DRIVER)

    def rpc_task_demand(self, w, req, seq):
        """The resources of a task the worker runs (asked rarely: not sent with each task)."""
        spec = w.inflight.get(seq)
        return dict(spec.demand) if spec is not None else {}

    def rpc_stream_slot(self, w, req, gid, k):
        return self._stream_slot(gid, k, w.wid)

    # ---------------------------------------------------------------- nested get/wait
    def rpc_get(self, w, req, ids, returned):
        return self._nested_wait(w, req, ids, len(set(ids)), returned, want_descs=True)

    def rpc_wait(self, w, req, ids, num_returns, returned):
        return self._nested_wait(w, req, ids, num_returns, returned, want_descs=False)

    def _nested_wait(self, w, req, ids, need, returned, want_descs):
        for seq in returned:  # tasks queued on the worker and not started go back
            spec = w.inflight.pop(seq, None)
            if spec is not None:
                spec.worker = None
                self._enqueue(spec, front=True)
        objs = self.objects.objs
        for oid in ids:
            if oid not in objs:
                raise ObjectLostError(f"object {oid:016x} was freed or never existed")
        ready = [i for i in ids if objs[i].desc is not None]
        if len(set(ready)) >= need:
            return [objs[i].desc for i in ids] if want_descs else ready

        def fire(waiter):
            w.gets.pop(req, None)
            self._unblock(w)
            if want_descs:
                self._send(w, ("reply", req, True, [objs[i].desc for i in ids]))
            else:
                self._send(w, ("reply", req, True, [i for i in ids if objs[i].desc is not None]))

        pending = list({i for i in ids if objs[i].desc is None})
        waiter = _Waiter(pending, need - len(set(ready)), fire)
        for oid in pending:
            objs[oid].waiters.append(waiter)
        w.gets[req] = waiter
        # The worker waits: lend its resources so nested work cannot deadlock.
        w.blocked += 1
        if w.blocked == 1 and w.lease is not None:
            w.lease[0].release(w.lease[1])
        return DEFERRED

    def rpc_get_cancel(self, w, req):
        waiter = w.gets.pop(req, None)
        if waiter is not None and not waiter.done:
            waiter.done = True
            self._unblock(w)
        return None

    def _unblock(self, w: WorkerProc) -> None:
        if w.blocked <= 0:
            return
        w.blocked -= 1
        if w.blocked == 0 and w.lease is not None:
            w.lease[0].acquire(w.lease[1], force=True)

    def cancel(self, oid, force: bool = False) -> None:
        with self.lock:
            spec = self.producing.get(oid)
            if spec is None or spec.done:
                return
            spec.cancelled = True
            w = spec.worker
            if w is None:
                for q in self.queues.values():
                    if spec in q:
                        q.remove(spec)
                if spec.actor_id is not None and spec.actor_id in self.actors:
                    self.actors[spec.actor_id].remove(spec)
                self._fail(spec, TaskCancelledError(f"task {spec.name} was cancelled"))
            elif force and w.actor is None:
                w.proc.kill()
            else:
                self._send(w, ("cancel", spec.seq))
