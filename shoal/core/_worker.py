"""A worker process of the local backend: runs tasks, or hosts one actor.

Started by the driver with its bootstrap (socket path, secret, ids) on
stdin. A reader thread receives messages; tasks run on the main thread (or
an actor's threads / event loop); results and nested API calls go back
over the same authenticated socket.
"""
from __future__ import annotations

import asyncio
import ctypes
import inspect
import itertools
import json
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterator

import cloudpickle

from shoal.core import _serialization as _ser
from shoal.core import object_ref as _oref
from shoal.core._auth import client_handshake
from shoal.core._protocol import BlockingConn, FrameReader, encode
from shoal.core._runtime import ProcessRuntime, fill_deps, value_of
from shoal.core._serialization import serialize
from shoal.core._spec import TaskSpec
from shoal.core.generator import DynamicObjectRefGenerator
from shoal.core.object_ref import ObjectRef, RefCounter
from shoal.exceptions import (
    GetTimeoutError,
    SerializationError,
    TaskCancelledError,
    TaskError,
)

_FLUSH_EVERY = 64


class _Reply:
    __slots__ = ("event", "ok", "value")

    def __init__(self):
        self.event = threading.Event()
        self.ok = True
        self.value = None


class WorkerRuntime(ProcessRuntime):
    """The backend seen by code running inside a worker."""

    name = "local"

    def __init__(self, boot: dict, conn: BlockingConn):
        self.boot = boot
        self.conn = conn
        self.wid = boot["wid"]
        self.session = boot["session"]
        self.node_id = boot["node_id"]
        self.namespace = boot["namespace"]
        self.shm_prefix = boot["shm_prefix"]
        self.dir = os.path.dirname(boot["sock"])   # the session's directory
        self._ids = itertools.count(1)
        self._paths = itertools.count(1)
        self._reqs = itertools.count(1)
        self.replies: dict = {}
        self.counter = RefCounter()
        _oref.set_counter(self.counter)
        _ser.map_events = self.counter.events
        self.fns: dict = {}
        self.registered: set = set()
        self.queue: deque = deque()
        self.qcond = threading.Condition()
        self.blocked = False
        self.current_seq = None
        self.current_name = ""
        self.actor_id = boot.get("actor")
        self.actor = None
        self.actor_spec = None
        self.pool = None
        self.loop = None
        self.main_ident = threading.get_ident()
        self.out: list = []
        self.sock = conn.sock
        self.read_lock = threading.Lock()
        self.frames = FrameReader()
        self.busy = False
        self.busy_since = 0.0
        self.main_reading = False
        self.cancel_pending = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._kv = None
        self.local = threading.local()

    # ------------------------------------------------------------ primitives
    def new_id(self) -> int:
        return (self.wid << 40) | next(self._ids)

    def new_path(self) -> str:
        return f"{self.shm_prefix}{self.wid}-{next(self._paths)}"

    def send(self, msg) -> None:
        """Send ``msg`` after any pending ref changes and buffered results."""
        held, released = _split_ref_events(self.counter.drain())
        with self.qcond:
            parts = self.out
            self.out = []
        if held:
            parts.insert(0, encode(("ref", held)))
        if msg is not None:
            parts.append(encode(msg))
        if released:  # after the messages, whose results may pin what is released here
            parts.append(encode(("ref", released)))
        if parts:
            self.conn.send_bytes(b"".join(parts))

    def call(self, method: str, *args, timeout=None):
        """Ask the driver; the main thread reads the reply itself (no thread hand-off)."""
        req = next(self._reqs)
        r = _Reply()
        self.replies[req] = r
        self.send(("call", req, method, args))
        if threading.get_ident() == self.main_ident:
            try:
                ok = self._read_until(r, timeout)
            finally:
                if self.blocked:
                    with self.qcond:
                        self.blocked = False
        else:
            ok = r.event.wait(timeout)
        if not ok:
            self.replies.pop(req, None)
            self.send(("call", next(self._reqs), "get_cancel", (req,)))
            raise GetTimeoutError(f"{method} timed out after {timeout}s")
        if not r.ok:
            raise r.value
        return r.value

    def register_function(self, fn_id, data: bytes) -> None:
        if fn_id not in self.registered:
            self.registered.add(fn_id)
            self.send(("fn", fn_id, data))

    def submit_local(self, spec: TaskSpec) -> list:
        refs = [ObjectRef(r) for r in spec.returns]
        self.send(("submit", spec.wire()))
        return refs

    def put(self, value) -> ObjectRef:
        oid = self.new_id()
        desc = serialize(value, self.new_path, what="shoal.put() value", alloc=self._alloc)
        ref = ObjectRef(oid)
        self.send(("put", oid, desc))
        return ref

    def _alloc(self, nbytes: int):
        """A recycled shared-memory file from the driver for a big value."""
        if nbytes < (1 << 20):
            return None
        path = self.call("alloc", nbytes)
        return None if path is None else (path, None)

    def _hand_back(self) -> list:
        """Before blocking, give queued tasks back so nothing waits behind us."""
        if self.actor_id is not None or threading.get_ident() != self.main_ident:
            return []
        with self.qcond:
            returned = [m[1] for m in self.queue]
            self.queue.clear()
            self.blocked = True
        return returned

    def task_demand(self, seq) -> dict:
        return self.call("task_demand", seq)

    def current_actor(self):
        from shoal.core.api import ActorHandle
        spec = self.actor_spec
        return ActorHandle(self.actor_id, ObjectRef(spec["handle_oid"]), spec["cls_name"],
                           spec["methods"], spec["is_async"])

    def stream_slot(self, gid, k):
        return self.call("stream_slot", gid, k)

    def get_descs(self, ids, timeout):
        return self.call("get", ids, self._hand_back(), timeout=timeout)

    def wait_ids(self, ids, num_returns, timeout):
        try:
            return self.call("wait", ids, num_returns, self._hand_back(), timeout=timeout)
        except GetTimeoutError:
            return self.call("wait", ids, 0, [])  # what is ready now

    def cancel(self, oid, force=False):
        self.call("cancel", oid, force)

    def create_actor_spec(self, spec, cls_bytes):
        return self.call("create_actor", spec.wire(), cls_bytes)

    def get_actor(self, name, namespace=None):
        return self.call("get_actor", name, namespace)

    def kill(self, actor_id, no_restart=True):
        self.call("kill", actor_id, no_restart)

    def check_feasible(self, demand, pg_id, bundle, what):
        self.call("check_feasible", demand, pg_id, bundle, what)

    def create_pg(self, pg_id, bundles, strategy, name):
        return self.call("create_pg", pg_id, bundles, strategy, name)

    def remove_pg(self, pg_id):
        self.call("remove_pg", pg_id)

    def resources(self, which):
        return self.call("resources", which)

    def nodes(self):
        return self.call("nodes")

    def store_stats(self):
        return self.call("store_stats")

    @property
    def kv(self):
        if self._kv is None:
            from shoal.core.kv import TCPStore
            host, port = self.boot["kv"]
            self._kv = TCPStore(host, port, secret=bytes.fromhex(self.boot["secret"]))
        return self._kv

    # ------------------------------------------------------------ reading
    # The main thread reads the socket itself whenever it is not running a
    # task, and while it waits in a nested get, so a call costs no thread
    # hand-off. While it runs a task, a watcher thread reads in its place
    # (replies for other threads, cancellations, tasks to queue).

    def _pump(self, poller, timeout) -> None:
        """Wait up to ``timeout`` seconds for bytes and handle the messages they hold."""
        try:
            events = poller.poll(None if timeout is None else max(0, int(timeout * 1000)))
        except InterruptedError:
            return
        if not events:
            return
        if any(fd == self._wake_r for fd, _ in events):
            try:
                os.read(self._wake_r, 4096)
            except BlockingIOError:
                pass
        with self.read_lock:
            try:
                data = self.sock.recv(1 << 20, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                _driver_gone(self.shm_prefix)
            for m in self.frames.feed(data):
                self._dispatch(m)

    def _read_until(self, r: _Reply, timeout) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        self.main_reading = True
        try:
            while not r.event.is_set():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._pump(self._main_poller, 0.05 if left is None else min(left, 0.05))
                if self.cancel_pending:
                    self.cancel_pending = False
                    raise TaskCancelledError(f"task {self.current_name} was cancelled")
            return True
        finally:
            self.main_reading = False

    def _wake_main(self) -> None:
        if threading.get_ident() != self.main_ident:
            try:
                os.write(self._wake_w, b"x")
            except BlockingIOError:
                pass

    def watch_loop(self) -> None:
        """Read for the main thread while it runs a task for more than a moment."""
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        while True:
            time.sleep(0.01)
            while (self.busy and not self.main_reading
                   and time.monotonic() - self.busy_since > 0.005):
                self._pump(poller, 0.005)

    def _dispatch(self, m) -> None:
        op = m[0]
        if op == "task":
            self._on_task(m)
        elif op == "reply":
            r = self.replies.pop(m[1], None)
            if r is not None:
                r.ok, r.value = m[2], m[3]
                r.event.set()
                if self.main_reading:
                    self._wake_main()
        elif op == "cancel":
            self._on_cancel(m[1])
        elif op == "actor_init":
            # a pooled worker becomes an actor's: set before the actor's calls arrive
            self.actor_id = m[1]["actor_id"]
            with self.qcond:
                self.queue.append(m)
            self._wake_main()
        elif op == "exit":
            _flush_std()
            os._exit(0)

    def _on_task(self, m) -> None:
        if m[3] is not None:  # the function arrives once, with its first task (even a bounced one)
            self.fns[m[2]] = cloudpickle.loads(m[3])
        if self.actor is not None and self.actor_spec["max_concurrency"] > 1:
            if self.loop is not None:
                self.loop.call_soon_threadsafe(self._start_async, m)
            else:
                self.pool.submit(self.run, m)
            return
        with self.qcond:
            bounce = self.blocked and self.actor_id is None
            if not bounce:
                self.queue.append(m)
        if bounce:
            self.send(("bounce", [m[1]]))
        else:
            self._wake_main()

    def _on_cancel(self, seq) -> None:
        with self.qcond:
            for m in self.queue:
                if m[0] == "task" and m[1] == seq:
                    self.queue.remove(m)
                    err = serialize(TaskCancelledError(f"task {m[4]} was cancelled"),
                                    self.new_path, is_error=True)
                    self.out.append(encode(("done", seq, [err] * len(m[7]), 0.0, False)))
                    break
            else:
                if self.current_seq == seq:
                    if threading.get_ident() == self.main_ident:
                        self.cancel_pending = True  # raised by the nested wait, not mid-dispatch
                    else:
                        ctypes.pythonapi.PyThreadState_SetAsyncExc(
                            ctypes.c_ulong(self.main_ident), ctypes.py_object(TaskCancelledError))
                return
        self.send(None)

    # ------------------------------------------------------------ execution
    def main_loop(self) -> None:
        self._main_poller = select.poll()
        self._main_poller.register(self.sock, select.POLLIN)
        self._main_poller.register(self._wake_r, select.POLLIN)
        while True:
            with self.qcond:
                m = self.queue.popleft() if self.queue else None
            if m is None:
                if self.out or self.counter.events:
                    self.send(None)
                self._pump(self._main_poller, None)
                continue
            if m[0] == "actor_init":
                self._init_actor(m)
                continue
            self.cancel_pending = False
            self.busy_since = time.monotonic()
            self.busy = True
            try:
                self.run(m)
            finally:
                self.busy = False
            with self.qcond:
                flush = not self.queue or len(self.out) >= _FLUSH_EVERY
            if flush:
                self.send(None)

    def _resolve(self, m):
        fn_id, args_desc, dep_descs, method = m[2], m[5], m[6], m[8]
        args, kwargs = value_of(args_desc)
        if dep_descs:
            args, kwargs = fill_deps(args, kwargs, [value_of(d) for d in dep_descs])
        fn = self.fns[fn_id] if fn_id is not None else getattr(self.actor, method)
        return fn, args, kwargs

    def run(self, m) -> None:
        seq, name, returns, retry_exc, gen = m[1], m[4], m[7], m[9], m[10]
        on_main = threading.get_ident() == self.main_ident
        t0 = time.perf_counter()
        retryable = False
        if on_main:
            self.current_seq, self.current_name = seq, name
        self.local.task = seq
        self.local.name = name
        try:
            fn, args, kwargs = self._resolve(m)
            result = fn(*args, **kwargs)
            if inspect.iscoroutine(result):
                result = asyncio.run(result)
            if gen:
                result = self._drain_generator(result, seq, name, gen)
                # A dynamic generator's retryable error reruns the task while retries last.
                retryable = _retryable(getattr(result, "_error", None), retry_exc)
            if on_main:
                self.current_seq = None
            descs = self._store(result, returns, name)
        except BaseException as e:  # noqa: BLE001 - every failure goes back to the caller
            if on_main:
                self.current_seq = None
            descs, retryable = self._error(e, name, returns, retry_exc)
        self._finish(seq, descs, time.perf_counter() - t0, retryable, on_main)

    def _drain_generator(self, result, seq, name, gen):
        """Run a generator task's body: stream each item, or collect their refs (dynamic)."""
        if inspect.isasyncgen(result):
            result = _sync_iter(result)
        elif not inspect.isgenerator(result) and not isinstance(result, Iterator):
            raise TypeError(f"{name} was called with num_returns="
                            f"{'streaming' if gen == 1 else 'dynamic'!r} but returned "
                            f"{type(result).__name__}, not a generator; make it yield its items")
        if gen == 1:
            for i, item in enumerate(result):
                desc = serialize(item, self.new_path, what=f"item {i} of {name}",
                                 alloc=self._alloc)
                self.send(("yield", seq, i, desc))
            return None
        refs = []
        try:
            for item in result:
                refs.append(self.put(item))
        except Exception as e:  # noqa: BLE001 - stored as the last item, as Ray does
            refs.append(self._put_error(e, name))
            return DynamicObjectRefGenerator(refs, error=e)
        return DynamicObjectRefGenerator(refs)

    def _put_error(self, e, name) -> ObjectRef:
        desc, _ = self._error(e, name, (None,), False)
        oid = self.new_id()
        ref = ObjectRef(oid)
        self.send(("put", oid, desc[0]))
        return ref

    async def _stream_async(self, result, seq, name, gen):
        """An async actor's generator method: iterate it on the event loop."""
        if not inspect.isasyncgen(result):
            return self._drain_generator(result, seq, name, gen)
        if gen == 1:
            i = 0
            async for item in result:
                desc = serialize(item, self.new_path, what=f"item {i} of {name}",
                                 alloc=self._alloc)
                self.send(("yield", seq, i, desc))
                i += 1
            return None
        refs = []
        try:
            async for item in result:
                refs.append(self.put(item))
        except Exception as e:  # noqa: BLE001 - stored as the last item
            refs.append(self._put_error(e, name))
            return DynamicObjectRefGenerator(refs, error=e)
        return DynamicObjectRefGenerator(refs)

    def _finish(self, seq, descs, elapsed, retryable, buffered) -> None:
        msg = encode(("done", seq, descs, elapsed, retryable))
        with self.qcond:
            self.out.append(msg)
        if not buffered:  # off the main thread nobody flushes later: send now
            self.send(None)

    def _store(self, result, returns, name) -> list:
        n = len(returns)
        if inspect.isgenerator(result):
            return self._store_yielded(result, returns, name)
        if n == 1:
            return [serialize(result, self.new_path, what=f"return value of {name}",
                              alloc=self._alloc)]
        if not isinstance(result, (tuple, list)) or len(result) != n:
            raise ValueError(f"{name} was declared with num_returns={n} but returned "
                             f"{type(result).__name__} "
                             f"{'of length ' + str(len(result)) if hasattr(result, '__len__') else ''}")
        return [serialize(v, self.new_path, what=f"return value {i} of {name}", alloc=self._alloc)
                for i, v in enumerate(result)]

    def _store_yielded(self, gen, returns, name) -> list:
        """A generator's items as a task's fixed returns, as Ray: an error mid-way, or a
        ValueError when it yields too few, fills the returns it did not reach."""
        n = len(returns)
        descs = []
        try:
            for item in gen:
                if len(descs) == n:   # Ray keeps the first n and reports the rest
                    sys.stderr.write(f"{name} yielded more than its num_returns={n} values; "
                                     "the rest are dropped\n")
                    gen.close()
                    break
                descs.append(serialize(item, self.new_path, alloc=self._alloc,
                                       what=f"return value {len(descs)} of {name}"))
        except Exception as e:  # noqa: BLE001 - the returns not reached raise it
            err, _ = self._error(e, name, (None,), False)
            return descs + err * (n - len(descs))
        if len(descs) < n:   # as Ray: the values it gave count, the missing ones raise
            err, _ = self._error(ValueError(f"{name} was declared with num_returns={n} but "
                                            f"its generator yielded {len(descs)} values"),
                                 name, (None,), False)
            return descs + err * (n - len(descs))
        return descs

    def _error(self, e, name, returns, retry_exc):
        if isinstance(e, KeyboardInterrupt):
            e = TaskCancelledError(f"task {name} was interrupted")
        if isinstance(e, (TaskError, TaskCancelledError)):
            err = e
        else:
            tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
            err = TaskError(name, tb, e, repr(e)).as_instanceof_cause()
        try:
            desc = serialize(err, self.new_path, is_error=True)
        except SerializationError:
            err = TaskError(name, getattr(err, "remote_traceback", ""), None, repr(e))
            desc = serialize(err, self.new_path, is_error=True)
        return [desc] * len(returns), _retryable(e, retry_exc)

    # ------------------------------------------------------------ actors
    def _init_actor(self, m) -> None:
        _, spec, cls_bytes, dep_descs, self.actor_restarts = m
        self.actor_spec = spec
        self.current_name = spec["cls_name"]
        err = None
        try:
            cls = cloudpickle.loads(cls_bytes)
            args, kwargs = value_of(spec["args"])
            if dep_descs:
                args, kwargs = fill_deps(args, kwargs, [value_of(d) for d in dep_descs])
            conc = spec["max_concurrency"]
            if spec["is_async"]:
                self.loop = asyncio.new_event_loop()
                threading.Thread(target=self.loop.run_forever, daemon=True,
                                 name="shoal-actor-loop").start()
                self._sem = None
                fut = asyncio.run_coroutine_threadsafe(self._construct_async(cls, args, kwargs, conc),
                                                       self.loop)
                self.actor = fut.result()
            else:
                if conc > 1:
                    from concurrent.futures import ThreadPoolExecutor
                    self.pool = ThreadPoolExecutor(conc, thread_name_prefix="shoal-actor")
                self.actor = cls(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - reported to the driver
            tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
            err = serialize(TaskError(f"{spec['cls_name']}.__init__", tb, None, repr(e)),
                            self.new_path, is_error=True)
        self.send(("actor_ready", err))

    async def _construct_async(self, cls, args, kwargs, conc):
        self._sem = asyncio.Semaphore(conc)
        return cls(*args, **kwargs)

    def _start_async(self, m) -> None:
        self.loop.create_task(self._run_async(m))

    async def _run_async(self, m) -> None:
        seq, name, returns, retry_exc = m[1], m[4], m[7], m[9]
        t0 = time.perf_counter()
        retryable = False
        async with self._sem:
            try:
                self.local.task = seq
                self.local.name = name
                fn, args, kwargs = self._resolve(m)
                result = fn(*args, **kwargs)
                if inspect.isawaitable(result):
                    result = await result
                if m[10]:
                    result = await self._stream_async(result, seq, name, m[10])
                    retryable = _retryable(getattr(result, "_error", None), retry_exc)
                descs = self._store(result, returns, name)
            except BaseException as e:  # noqa: BLE001
                descs, retryable = self._error(e, name, returns, retry_exc)
        with self.qcond:
            self.out.append(encode(("done", seq, descs, time.perf_counter() - t0, retryable)))
            first = len(self.out) == 1
        if first:  # batch the results of calls finishing in the same loop turn
            self.loop.call_soon(self.send, None)


def _retryable(e, retry_exc) -> bool:
    """Whether error ``e`` may rerun its task under ``retry_exceptions``."""
    if e is None or isinstance(e, TaskCancelledError):
        return False
    return retry_exc is True or (isinstance(retry_exc, tuple) and isinstance(e, retry_exc))


def _sync_iter(agen):
    """Iterate an async generator from synchronous code (a task, not an async actor)."""
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                yield loop.run_until_complete(agen.__anext__())
            except StopAsyncIteration:
                return
    finally:
        loop.close()


def _split_ref_events(events: list) -> tuple[list, list]:
    """Order ref changes around a message: refs taken go before it, refs
    dropped after it, so an object returned inside a result is pinned by the
    result before the worker's own ref to it is let go. Per object only the
    last change counts (a ref dropped and taken again is still held)."""
    if not events:
        return [], []
    last: dict = {}
    maps_on, maps_off = [], []
    for delta, key in events:
        if delta == 1 or delta == -1:
            last[key] = delta
        elif delta > 0:
            maps_on.append((delta, key))
        else:
            maps_off.append((delta, key))
    held = [(1, k) for k, d in last.items() if d == 1] + maps_on
    released = [(-1, k) for k, d in last.items() if d == -1] + maps_off
    return held, released


class _PrefixedStream:
    """Prefixes each line a task prints with its name and pid, like Ray."""

    def __init__(self, raw, rt: WorkerRuntime):
        self._raw = raw
        self._rt = rt
        self._buf = ""
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def write(self, s: str) -> int:
        with self._lock:
            self._buf += s
            if "\n" in self._buf:
                *lines, self._buf = self._buf.split("\n")
                name = self._rt.current_name or "worker"
                self._raw.write("".join(f"({name} pid={self._pid}) {ln}\n" for ln in lines))
                self._raw.flush()
        return len(s)

    def flush(self) -> None:
        with self._lock:
            if self._buf:
                name = self._rt.current_name or "worker"
                self._raw.write(f"({name} pid={self._pid}) {self._buf}\n")
                self._buf = ""
            self._raw.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._raw.fileno()

    def __getattr__(self, item):
        return getattr(self._raw, item)


def _flush_std() -> None:
    for s in (sys.stdout, sys.stderr):
        try:
            s.flush()
        except Exception:  # noqa: BLE001
            pass


def _driver_gone(shm_prefix: str) -> None:
    """The driver died without shutting down: remove the session's shared memory."""
    from shoal.core._local import _remove_session_files
    _remove_session_files(shm_prefix)
    _flush_std()
    os._exit(0)


def _preimport(names: list) -> None:
    # SHOAL_WORKER_PREIMPORT: before the worker takes tasks; a failure costs the
    # module (reported in the worker's log), not the worker
    import importlib
    for name in names:
        try:
            importlib.import_module(name)
        except BaseException as e:  # noqa: BLE001 - any import error, SystemExit too
            sys.stderr.write(f"shoal: SHOAL_WORKER_PREIMPORT: cannot import {name!r}: {e!r}\n")


def main() -> None:
    boot = json.loads(sys.stdin.readline())
    _preimport(boot.get("preimport") or [])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: _driver_gone(boot["shm_prefix"]))
    if os.getppid() != boot["driver_pid"]:
        _driver_gone(boot["shm_prefix"])
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(boot["sock"])
    client_handshake(sock, bytes.fromhex(boot["secret"]))
    sock.sendall(int(boot["wid"]).to_bytes(8, "little"))
    conn = BlockingConn(sock)
    rt = WorkerRuntime(boot, conn)
    from shoal.core import api
    api._set_worker_runtime(rt)
    sys.stdout = _PrefixedStream(sys.stdout, rt)
    sys.stderr = _PrefixedStream(sys.stderr, rt)
    threading.Thread(target=rt.watch_loop, daemon=True, name="shoal-watch").start()
    rt.main_loop()


if __name__ == "__main__":
    main()
