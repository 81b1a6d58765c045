"""The local backend: a scheduler in the driver and a pool of worker processes.

One I/O thread owns the sockets and pipes of every worker; the user's
threads submit and wait under one lock. Workers are ordinary Python
processes (``shoal.core._worker``) that authenticate over a Unix socket in a
private directory. Big buffers move through shared-memory files
(``_serialization``); everything else travels in small pickled messages.
"""
from __future__ import annotations

import itertools
import json
import os
import secrets
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import deque

from shoal.core import _serialization as _ser
from shoal.core import object_ref as _oref
from shoal.core._actors import ActorState
from shoal.core._auth import server_handshake
from shoal.core._object_table import ObjectTable
from shoal.core._protocol import NonBlockingConn, encode
from shoal.core._resources import PlacementGroupState, Pool
from shoal.core._runtime import ProcessRuntime
from shoal.core._serialization import CONTAINED, PATH, _unlink, serialize
from shoal.core._spec import ActorSpec, TaskSpec
from shoal.core.kv import TCPStore
from shoal.core.object_ref import ObjectRef, RefCounter
from shoal.exceptions import (ActorDiedError, GetTimeoutError, InfeasibleResourceError,
                              ObjectLostError, ShoalError, TaskCancelledError, WorkerCrashedError)

DRIVER = 0
_PREFETCH = 4              # tasks queued ahead on a worker, for short tasks only
_SHORT_TASK_S = 0.002      # "short": mean run time below this
_IDLE_REAP_S = 30.0
DEFERRED = object()


class WorkerProc:
    __slots__ = ("wid", "proc", "conn", "state", "inflight", "lease", "blocked", "fns_sent",
                 "actor", "shape", "started", "idle_since", "pipes", "gets")

    def __init__(self, wid, proc, actor=None):
        self.wid = wid
        self.proc = proc
        self.conn: NonBlockingConn | None = None
        self.state = "starting"   # starting | idle | busy | dead
        self.inflight: dict = {}  # seq -> TaskSpec, in dispatch order
        self.lease = None         # (pool, demand) held while it runs tasks
        self.blocked = 0          # nested gets in progress
        self.fns_sent: set = set()
        self.actor = actor
        self.shape = None
        self.started = time.monotonic()
        self.idle_since = time.monotonic()
        self.pipes = 2
        self.gets: dict = {}      # req -> waiter, for nested get/wait


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


class LocalBackend(ProcessRuntime):
    name = "local"

    def __init__(self, num_cpus=None, num_gpus=None, resources=None, object_store_memory=None,
                 namespace=None, log_to_driver=True):
        import psutil
        ncpu = (os.cpu_count() or 1) if num_cpus is None else num_cpus
        total = {"CPU": float(ncpu), "GPU": float(num_gpus or 0)}
        mem = psutil.virtual_memory().total
        store = int(object_store_memory or min(mem * 0.3, _shm_free() * 0.8))
        total["memory"] = float(mem - store)
        total["object_store_memory"] = float(store)
        for k, v in (resources or {}).items():
            total[k] = float(v)
        total = {k: v for k, v in total.items() if v > 0 or k == "CPU"}
        self.node = Pool(total)
        self.num_cpus = ncpu
        self.namespace = namespace or "default"
        self.log_to_driver = log_to_driver
        self.session = secrets.token_hex(6)
        self.node_id = secrets.token_hex(14)
        self.secret = secrets.token_bytes(32)
        self.dir = tempfile.mkdtemp(prefix=f"shoal-{self.session}-")
        self.shm_dir = "/dev/shm" if os.path.isdir("/dev/shm") else os.path.join(self.dir, "shm")
        os.makedirs(self.shm_dir, exist_ok=True)
        self.shm_prefix = os.path.join(self.shm_dir, f"shoal-{self.session}-")
        self.objects = ObjectTable(store, self.shm_prefix, os.path.join(self.dir, "spill"))
        self.lock = threading.RLock()
        self.counter = RefCounter()
        _oref.set_counter(self.counter)
        _ser.map_events = self.counter.events
        self._ids = itertools.count(1)
        self._paths = itertools.count(1)
        self._wids = itertools.count(1)
        self.workers: dict = {}            # wid -> WorkerProc
        self.queues: dict = {}             # shape -> deque of ready TaskSpecs
        self.producing: dict = {}          # return id -> TaskSpec while pending
        self.functions: dict = {}          # fn_id -> cloudpickled bytes
        self.fn_time: dict = {}            # fn_id -> mean run seconds
        self.actors: dict = {}             # actor_id -> ActorState
        self.named: dict = {}              # (namespace, name) -> actor_id
        self.pgs: dict = {}                # pg_id -> PlacementGroupState
        self.pg_pending: deque = deque()
        self.pg_ready_oid: dict = {}
        self.pending_actors: deque = deque()
        self.min_workers = max(1, int(ncpu))
        self.max_starting = max(1, int(ncpu))  # worker processes starting at once
        self.closed = False
        self.kv = TCPStore(is_server=True, secret=self.secret)
        self.sock_path = os.path.join(self.dir, "driver.sock")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.sock_path)
        os.chmod(self.sock_path, 0o600)
        self.listener.listen(256)
        self.listener.setblocking(False)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.listener, selectors.EVENT_READ, ("listen", None))
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.sel.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        self._dirty: set = set()           # conns with pending output
        self._io = threading.Thread(target=self._io_loop, name="shoal-io", daemon=True)
        self._io.start()
        with self.lock:
            for _ in range(self.min_workers):
                self._spawn_worker()

    # ---------------------------------------------------------------- ids & paths
    def new_id(self) -> int:
        return next(self._ids)

    def new_path(self) -> str:
        return f"{self.shm_prefix}0-{next(self._paths)}"

    # ---------------------------------------------------------------- processes
    def _spawn_worker(self, actor: ActorState | None = None) -> WorkerProc:
        wid = next(self._wids)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env.setdefault(var, "1")
        env["SHOAL_WORKER"] = "1"
        proc = subprocess.Popen(
            [sys.executable, "-m", "shoal.core._worker"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True,
            close_fds=True)
        boot = {"sock": self.sock_path, "secret": self.secret.hex(), "wid": wid,
                "session": self.session, "shm_prefix": self.shm_prefix, "node_id": self.node_id,
                "kv": [self.kv.host, self.kv.port], "namespace": self.namespace,
                "actor": actor.spec.actor_id if actor else None, "driver_pid": os.getpid()}
        proc.stdin.write(json.dumps(boot).encode() + b"\n")
        proc.stdin.close()
        w = WorkerProc(wid, proc, actor)
        self.workers[wid] = w
        for pipe, out in ((proc.stdout, "stdout"), (proc.stderr, "stderr")):
            os.set_blocking(pipe.fileno(), False)
            self.sel.register(pipe, selectors.EVENT_READ, ("pipe", (w, out)))
        return w

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass

    def _send(self, w: WorkerProc, msg) -> None:
        if w.conn is not None and w.conn.send(msg):
            self._dirty.add(w.conn)
            self._wake()

    # ---------------------------------------------------------------- I/O loop
    def _io_loop(self) -> None:
        last_reap = time.monotonic()
        while not self.closed:
            try:
                events = self.sel.select(0.05)
            except (OSError, ValueError):
                if self.closed:
                    return
                continue
            for key, mask in events:
                kind, data = key.data
                if kind == "conn":
                    if mask & selectors.EVENT_WRITE:
                        with self.lock:
                            self._flush(data.conn)
                    if mask & selectors.EVENT_READ:
                        self._read_worker(data)
                elif kind == "pipe":
                    self._read_pipe(key.fileobj, *data)
                elif kind == "listen":
                    self._accept()
                elif kind == "wake":
                    try:
                        while os.read(self._wake_r, 4096):
                            pass
                    except (BlockingIOError, OSError):
                        pass
            with self.lock:
                if self.closed:
                    return
                self._drain_refs()
                for conn in list(self._dirty):
                    self._flush(conn)
                now = time.monotonic()
                if now - last_reap > 1.0:
                    last_reap = now
                    self._check_processes(now)

    def _flush(self, conn: NonBlockingConn) -> None:
        more = conn.flush()
        key = self.sel.get_key(conn.sock) if conn.sock.fileno() >= 0 else None
        if key is None:
            self._dirty.discard(conn)
            return
        want = selectors.EVENT_READ | (selectors.EVENT_WRITE if more else 0)
        if key.events != want:
            self.sel.modify(conn.sock, want, key.data)
        if not more:
            self._dirty.discard(conn)

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, OSError):
            return
        sock.setblocking(True)
        threading.Thread(target=self._handshake, args=(sock,), daemon=True).start()

    def _handshake(self, sock: socket.socket) -> None:
        try:
            server_handshake(sock, self.secret)
            sock.settimeout(10)
            head = sock.recv(8)
            wid = int.from_bytes(head, "little") if len(head) == 8 else -1
        except (ShoalError, OSError):
            sock.close()
            return
        with self.lock:
            w = self.workers.get(wid)
            if w is None or w.conn is not None or self.closed:
                sock.close()
                return
            w.conn = NonBlockingConn(sock)
            self.sel.register(sock, selectors.EVENT_READ, ("conn", w))
            if w.actor is not None:
                self._init_actor_worker(w)
            else:
                w.state = "idle"
                w.idle_since = time.monotonic()
                self._schedule()

    def _read_pipe(self, pipe, w: WorkerProc, out) -> None:
        try:
            data = pipe.read()
        except (BlockingIOError, OSError, ValueError):
            data = b""
        if data:
            if self.log_to_driver:
                try:
                    stream = getattr(sys, out)  # looked up now: it may have been redirected
                    stream.write(data.decode(errors="replace"))
                    stream.flush()
                except (ValueError, OSError):
                    pass
            return
        if data is None:
            return
        self.sel.unregister(pipe)
        pipe.close()
        with self.lock:
            w.pipes -= 1
            if w.pipes == 0 and w.state != "dead":
                self._on_worker_death(w)

    def _read_worker(self, w: WorkerProc) -> None:
        try:
            msgs = w.conn.read()
        except OSError:
            msgs = None
        with self.lock:
            if msgs is None:
                self._on_worker_death(w)
                return
            for m in msgs:
                if m is None:
                    self._on_worker_death(w)
                    return
                try:
                    self._handle(w, m)
                except Exception:  # noqa: BLE001 - a bad message must not kill the I/O thread
                    sys.stderr.write(f"shoal: error handling {m[0]!r} from worker {w.wid}:\n"
                                     f"{traceback.format_exc()}")
            self._schedule()

    def _check_processes(self, now: float) -> None:
        for w in list(self.workers.values()):
            if w.state == "dead":
                continue
            if w.proc.poll() is not None:
                self._on_worker_death(w)
            elif (w.actor is None and w.state == "idle" and not w.inflight
                  and now - w.idle_since > _IDLE_REAP_S
                  and sum(1 for x in self.workers.values()
                          if x.actor is None and x.state != "dead") > self.min_workers):
                self._send(w, ("exit",))
                w.state = "dead"
                self.workers.pop(w.wid, None)

    # ---------------------------------------------------------------- messages
    def _handle(self, w: WorkerProc, m) -> None:
        op = m[0]
        if op == "done":
            self._on_done(w, m[1], m[2], m[3], m[4])
        elif op == "ref":
            self._apply_refs(m[1], w.wid)
        elif op == "submit":
            spec = TaskSpec.from_wire(m[1])
            spec.owner = w.wid
            self._submit(spec)
        elif op == "fn":
            self.functions[m[1]] = m[2]
        elif op == "put":
            self.objects.add_holder(m[1], w.wid)
            self._ready(m[1], m[2])
        elif op == "call":
            req, method, args = m[1], m[2], m[3]
            try:
                result = getattr(self, "rpc_" + method)(w, req, *args)
            except Exception as e:  # noqa: BLE001 - returned to the caller
                self._send(w, ("reply", req, False, e))
                return
            if result is not DEFERRED:
                self._send(w, ("reply", req, True, result))
        elif op == "bounce":
            for seq in m[1]:
                spec = w.inflight.pop(seq, None)
                if spec is not None:
                    spec.worker = None
                    self._enqueue(spec, front=True)
            self._maybe_idle(w)
        elif op == "actor_ready":
            self._on_actor_ready(w, m[1])
        elif op == "unblock":
            self._unblock(w)

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
        for rid in spec.returns:
            objs.create(rid)
            self.producing[rid] = spec
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
                       spec.returns, spec.method, spec.retry_exc))

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
            self._complete(spec, descs)
        if w.actor is not None:
            w.actor.after_call(self)
        self._maybe_idle(w)

    def _complete(self, spec: TaskSpec, descs) -> None:
        spec.done = True
        spec.worker = None
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

    # ---------------------------------------------------------------- failures
    def _on_worker_death(self, w: WorkerProc) -> None:
        if w.state == "dead" and w.wid not in self.workers:
            return
        w.state = "dead"
        self.workers.pop(w.wid, None)
        if w.conn is not None:
            try:
                self.sel.unregister(w.conn.sock)
            except (KeyError, ValueError):
                pass
            w.conn.sock.close()
            w.conn.closed = True
            self._dirty.discard(w.conn)
        if w.proc.poll() is None:
            try:
                w.proc.kill()
            except OSError:
                pass
        if w.lease is not None and not w.blocked:
            w.lease[0].release(w.lease[1])
        w.lease = None
        for oid in list(self.objects.objs):  # refs held by the dead process are gone
            o = self.objects.objs.get(oid)
            if o is not None and w.wid in o.holders:
                self.objects.remove_holder(oid, w.wid)
        self.objects.forget_process(w.wid)
        inflight = list(w.inflight.values())
        w.inflight.clear()
        if w.actor is not None:
            w.actor.on_death(self, w, inflight)
            return
        code = w.proc.poll()
        for spec in inflight:
            if spec.cancelled:
                self._fail(spec, TaskCancelledError(f"task {spec.name} was cancelled"))
            elif spec.retries_left != 0:
                spec.retries_left -= 1
                spec.worker = None
                self._enqueue(spec, front=True)
            else:
                self._fail(spec, WorkerCrashedError(
                    f"the worker running task {spec.name} died (exit code {code}) and the "
                    f"{spec.max_retries} retries are spent; the task may crash its process "
                    "(segfault, os._exit, out of memory). Raise max_retries to try more often."))
        if not self.closed:
            alive = sum(1 for x in self.workers.values() if x.actor is None)
            if alive < self.min_workers:
                self._spawn_worker()
            self._schedule()

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

    # ---------------------------------------------------------------- actors
    def create_actor_spec(self, spec: ActorSpec, cls_bytes: bytes | None):
        with self.lock:
            return self.rpc_create_actor(None, None, spec.wire(), cls_bytes)

    def rpc_create_actor(self, w, req, spec_d, cls_bytes):
        spec = ActorSpec(**spec_d)
        if cls_bytes is not None:
            self.functions.setdefault(spec.cls_id, cls_bytes)
        if spec.name:
            key = (spec.namespace or self.namespace, spec.name)
            existing = self.named.get(key)
            if existing is not None and self.actors[existing].state != "dead":
                if spec.get_if_exists:
                    a = self.actors[existing]
                    return a.spec.actor_id, a.spec.handle_oid, a.spec.methods
                raise ValueError(f"an actor named {spec.name!r} already exists in namespace "
                                 f"{key[0]!r}; pick another name, or pass get_if_exists=True")
        self._check_feasible(spec.demand, spec.pg_id, spec.bundle, f"actor {spec.cls_name}")
        a = ActorState(spec)
        self.actors[spec.actor_id] = a
        h = self.objects.create(spec.handle_oid)
        h.desc = (b"", None, None, (), False, 0)
        h.on_free = lambda a=a: a.handles_gone(self)
        if spec.name:
            self.named[(spec.namespace or self.namespace, spec.name)] = spec.actor_id
            h.pins += 1  # a named actor lives until killed
        for d in spec.deps:
            self.objects.create(d).pins += 1
        a.try_place(self)
        return spec.actor_id, spec.handle_oid, spec.methods

    def _init_actor_worker(self, w: WorkerProc) -> None:
        a = w.actor
        objs = self.objects.objs
        deps = [objs[d].desc if d in objs else None for d in a.spec.deps]
        self._send(w, ("actor_init", a.spec.wire(), self.functions[a.spec.cls_id],
                       deps))

    def _on_actor_ready(self, w: WorkerProc, err_desc) -> None:
        if w.actor is not None:
            w.actor.on_ready(self, w, err_desc)

    def rpc_get_actor(self, w, req, name, namespace):
        return self.get_actor(name, namespace)

    def get_actor(self, name, namespace=None):
        with self.lock:
            aid = self.named.get((namespace or self.namespace, name))
            if aid is None or self.actors[aid].state == "dead":
                raise ValueError(f"no live actor named {name!r} in namespace "
                                 f"{namespace or self.namespace!r}")
            a = self.actors[aid]
            return a.spec.actor_id, a.spec.handle_oid, a.spec.methods, a.spec.is_async

    def rpc_kill(self, w, req, actor_id, no_restart):
        self.kill(actor_id, no_restart)

    def kill(self, actor_id, no_restart: bool = True) -> None:
        with self.lock:
            a = self.actors.get(actor_id)
            if a is not None:
                a.kill(self, no_restart)

    def rpc_cancel(self, w, req, oid, force):
        self.cancel(oid, force)

    # ---------------------------------------------------------------- resources & groups
    def _check_feasible(self, demand, pg_id, bundle, what: str) -> None:
        if pg_id is not None:
            pg = self.pgs.get(pg_id)
            if pg is None or pg.removed:
                raise ValueError(f"{what}: its placement group was removed or never existed")
            if not pg.feasible_in(demand, bundle):
                raise InfeasibleResourceError(
                    f"{what} asks for {demand!r}, more than its placement group bundle "
                    f"{bundle} holds ({pg.bundles!r}); ask for less or make bigger bundles")
        elif not self.node.feasible(demand):
            raise InfeasibleResourceError(
                f"{what} asks for {demand!r} but the cluster has {self.node.total!r} in all; "
                "it could never run. Ask for less, or start shoal with more "
                "(shoal.init(num_cpus=..., num_gpus=..., resources=...)).")

    def check_feasible(self, demand, pg_id, bundle, what) -> None:
        with self.lock:
            self._check_feasible(demand, pg_id, bundle, what)

    def rpc_check_feasible(self, w, req, demand, pg_id, bundle, what):
        self._check_feasible(demand, pg_id, bundle, what)

    def rpc_create_pg(self, w, req, pg_id, bundles, strategy, name):
        return self.create_pg(pg_id, bundles, strategy, name)

    def create_pg(self, pg_id, bundles, strategy, name):
        with self.lock:
            pg = PlacementGroupState(pg_id, bundles, strategy, name)
            pg.check_feasible(self.node, 1)
            self.pgs[pg_id] = pg
            ready = self.new_id()
            self.objects.create(ready).pins += 1
            self.pg_ready_oid[pg_id] = ready
            self.pg_pending.append(pg)
            self._schedule()
            return ready

    def _try_pgs(self) -> None:
        while self.pg_pending:
            pg = self.pg_pending[0]
            if pg.removed:
                self.pg_pending.popleft()
                continue
            if not pg.try_reserve(self.node):
                return
            self.pg_pending.popleft()
            oid = self.pg_ready_oid[pg.id]
            self._ready(oid, serialize(True, self.new_path))

    def rpc_remove_pg(self, w, req, pg_id):
        self.remove_pg(pg_id)

    def remove_pg(self, pg_id) -> None:
        with self.lock:
            pg = self.pgs.pop(pg_id, None)
            if pg is None:
                return
            pg.removed = True
            for a in list(self.actors.values()):
                if a.spec.pg_id == pg_id and a.state != "dead":
                    a.kill(self, True)
            pg.unreserve(self.node)
            oid = self.pg_ready_oid.pop(pg_id, None)
            if oid is not None:
                self.objects.unpin(oid)
            self._schedule()

    def rpc_resources(self, w, req, which):
        return self.resources(which)

    def resources(self, which: str) -> dict:
        with self.lock:
            src = self.node.total if which == "total" else self.node.avail
            return {k: max(0.0, v) for k, v in src.items()}

    def nodes(self) -> list:
        return [{"NodeID": self.node_id, "Alive": True, "NodeManagerAddress": "127.0.0.1",
                 "Resources": self.resources("total")}]

    def rpc_nodes(self, w, req):
        return self.nodes()

    def rpc_store_stats(self, w, req):
        return self.store_stats()

    def store_stats(self) -> dict:
        with self.lock:
            t = self.objects
            return {"objects": len(t.objs), "shm_bytes": t.used, "capacity": t.capacity,
                    "spilled_bytes": t.spilled_bytes, "spill_count": t.spill_count}

    # ---------------------------------------------------------------- shutdown
    def shutdown(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
            workers = list(self.workers.values())
            for w in workers:
                if w.conn is not None:
                    try:
                        w.conn.sock.setblocking(True)
                        w.conn.sock.settimeout(0.2)
                        w.conn.sock.sendall(encode(("exit",)))
                    except OSError:
                        pass
        self._wake()
        self._io.join(timeout=2)
        deadline = time.monotonic() + 1.0
        for w in workers:
            try:
                w.proc.wait(timeout=max(0.01, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait(timeout=5)
        for w in workers:
            for f in (w.proc.stdout, w.proc.stderr):
                try:
                    f.close()
                except OSError:
                    pass
            if w.conn is not None:
                w.conn.sock.close()
        self.sel.close()
        self.listener.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        self.kv.close()
        self.objects.drop_all()
        _remove_session_files(self.shm_prefix)
        import shutil
        shutil.rmtree(self.dir, ignore_errors=True)
        if _oref._counter is self.counter:
            _oref.set_counter(None)


def _shm_free() -> int:
    try:
        st = os.statvfs("/dev/shm")
        return st.f_bavail * st.f_frsize
    except OSError:
        return 1 << 31


def _remove_session_files(prefix: str) -> None:
    d, base = os.path.split(prefix)
    try:
        names = os.listdir(d)
    except OSError:
        return
    for n in names:
        if n.startswith(base):
            _unlink(os.path.join(d, n))

