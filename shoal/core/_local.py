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
from shoal.core._cluster import ClusterState
from shoal.core._events import StateListing, task_events_from_env
from shoal.core._gpus import ENV_IDS as ENV_GPU_IDS
from shoal.core._gpus import GpuIds, visible_gpu_ids
from shoal.core._object_table import ObjectTable
from shoal.core._protocol import NonBlockingConn, encode
from shoal.core._resources import Pool
from shoal.core._runtime import ProcessRuntime
from shoal.core._runtime_env import process_env
from shoal.core._scheduler import DEFERRED, Scheduler
from shoal.core._serialization import _unlink
from shoal.core._spec import TaskSpec
from shoal.core.kv import TCPStore
from shoal.core.sessions import write_session_info
from shoal.core.object_ref import RefCounter
from shoal.exceptions import ShoalError, TaskCancelledError, WorkerCrashedError

_IDLE_REAP_S = 30.0
PREIMPORT_ENV = "SHOAL_WORKER_PREIMPORT"


def preimport_from_env() -> list:
    """The modules pooled workers import as they boot: ``SHOAL_WORKER_PREIMPORT``.

    A comma-separated list of module names (e.g. ``torch,gymnasium``), read
    when the driver starts. Pooled workers import them before they take
    tasks, and while it is set an actor starts in an idle pooled worker
    when there is one (and it needs no runtime_env and no GPU), so its
    imports are already done: worth it for a job whose actors all import
    the same heavy libraries (shoal.rl's env runners import torch and
    Gymnasium). A module that fails to import is reported in the worker's
    log and skipped.

    Raises:
        ValueError: a name that is not a dotted module name.
    """
    raw = os.environ.get(PREIMPORT_ENV, "")
    names = [n.strip() for n in raw.split(",") if n.strip()]
    for n in names:
        if not all(part.isidentifier() for part in n.split(".")):
            raise ValueError(f"{PREIMPORT_ENV}={raw!r}: {n!r} is not a module name; give "
                             f"comma-separated module names such as 'torch,gymnasium'")
    return names


class WorkerProc:
    __slots__ = ("wid", "proc", "conn", "state", "inflight", "lease", "blocked", "fns_sent",
                 "actor", "shape", "started", "idle_since", "pipes", "gets", "gpus", "logs")

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
        self.gpus = ([], 0.0)     # (device ids, amount) an actor's process holds
        self.logs: dict = {}      # "stdout"/"stderr" -> the file its output is kept in


class LocalBackend(ProcessRuntime, Scheduler, ClusterState, StateListing):
    name = "local"

    def __init__(self, num_cpus=None, num_gpus=None, resources=None, object_store_memory=None,
                 namespace=None, log_to_driver=True):
        import psutil
        self.preimport = preimport_from_env()   # first: a bad value leaves nothing behind
        ncpu = (os.cpu_count() or 1) if num_cpus is None else num_cpus
        found = visible_gpu_ids()
        ngpu = len(found) if num_gpus is None else num_gpus
        self.gpus = GpuIds(found, ngpu)
        total = {"CPU": float(ncpu), "GPU": float(ngpu or 0)}
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
        os.makedirs(os.path.join(self.dir, "logs"))
        self.task_events = task_events_from_env()   # None: SHOAL_TASK_EVENTS=0
        self.dead_workers: deque = deque(maxlen=1000)
        self.started = time.time()
        self.dashboard = None              # shoal.dashboard's server, when one runs here
        self.write_session_info()
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
        self.streams: dict = {}            # streaming task's first return id -> _Stream
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
        self._last_reap = time.monotonic()
        self._reap: list = []              # killed processes not yet waited for
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
        env.pop(ENV_GPU_IDS, None)
        renv = actor.spec.runtime_env if actor is not None else None
        if renv:
            process_env(env, renv)
        gpu_amount = actor.spec.demand.get("GPU", 0.0) if actor is not None else 0.0
        gpu_ids = self.gpus.take(gpu_amount)
        if gpu_ids:
            env["CUDA_VISIBLE_DEVICES"] = env[ENV_GPU_IDS] = ",".join(gpu_ids)
        proc = subprocess.Popen(
            [sys.executable, "-m", "shoal.core._worker"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True,
            close_fds=True, cwd=(renv or {}).get("cwd"))
        boot = {"sock": self.sock_path, "secret": self.secret.hex(), "wid": wid,
                "session": self.session, "shm_prefix": self.shm_prefix, "node_id": self.node_id,
                "kv": [self.kv.host, self.kv.port], "namespace": self.namespace,
                "actor": actor.spec.actor_id if actor else None, "driver_pid": os.getpid(),
                "preimport": self.preimport if actor is None else []}
        proc.stdin.write(json.dumps(boot).encode() + b"\n")
        proc.stdin.close()
        w = WorkerProc(wid, proc, actor)
        w.gpus = (gpu_ids, gpu_amount)
        self.workers[wid] = w
        self._open_logs(w)
        for pipe, out in ((proc.stdout, "stdout"), (proc.stderr, "stderr")):
            os.set_blocking(pipe.fileno(), False)
            self.sel.register(pipe, selectors.EVENT_READ, ("pipe", (w, out)))
        return w

    def adopt_idle_worker(self, actor: ActorState) -> WorkerProc | None:
        """Start ``actor`` in an idle pooled worker instead of a new process, or None.

        As Ray leases a started worker for an actor: the process has booted
        and imported ``SHOAL_WORKER_PREIMPORT``'s modules. Only when that
        variable is set, and for an actor that needs no runtime_env and no
        GPU (those are set when a process starts) and whose arguments are
        ready; the worker then is the actor's for good.
        """
        if not self.preimport or actor.spec.runtime_env or actor.spec.demand.get("GPU", 0.0):
            return None     # without SHOAL_WORKER_PREIMPORT every actor gets a new process
        objs = self.objects.objs
        if any(d not in objs or objs[d].desc is None for d in actor.spec.deps):
            return None     # an argument still being computed: leave the pooled workers
                            # to the tasks that may compute it
        for w in self.workers.values():
            if (w.actor is None and w.state == "idle" and w.conn is not None and not w.inflight
                    and not w.blocked and w.lease is None and w.proc.poll() is None):
                w.actor = actor
                w.state = "starting"
                self._open_logs(w)          # its log note now names the actor
                self._init_actor_worker(w)
                return w
        return None

    def write_session_info(self, **extra) -> None:
        """``session.json``: how ``shoal status`` / ``shoal logs`` find this session."""
        write_session_info(self.dir, {"session": self.session, "pid": os.getpid(),
                                      "start_time": self.started, "node_id": self.node_id,
                                      "argv": sys.argv[:4], **extra})

    def _open_logs(self, w: WorkerProc) -> None:
        """Files keeping the worker's output, and a note of who it is for ``shoal logs``."""
        a = w.actor
        meta = {"worker_id": str(w.wid), "pid": w.proc.pid, "start_time": time.time(),
                "actor_id": f"{a.spec.actor_id:016x}" if a is not None else None,
                "actor_class": a.spec.cls_name if a is not None else None,
                "actor_name": (a.spec.name or "") if a is not None else None}
        try:
            for out, ext in (("stdout", "out"), ("stderr", "err")):
                if out not in w.logs:        # an adopted worker keeps its files
                    w.logs[out] = open(self.log_path(w.wid, ext), "ab", buffering=0)  # noqa: SIM115
            with open(self.log_path(w.wid, "json"), "w") as f:
                json.dump(meta, f)
        except OSError as e:  # a full disk costs the logs, not the worker
            sys.stderr.write(f"shoal: cannot keep the logs of worker {w.wid}: {e}\n")

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
        while not self.closed:
            self._turn(0.05)

    def _turn(self, timeout: float) -> None:
        """One turn of the event loop: wait up to ``timeout``, handle what came."""
        try:
            events = self.sel.select(timeout)
        except (OSError, ValueError):
            return
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
        now = time.monotonic()
        if not (self._dirty or self.counter.events or now - self._last_reap > 1.0):
            return
        with self.lock:
            if self.closed:
                return
            self._drain_refs()
            for conn in list(self._dirty):
                self._flush(conn)
            if now - self._last_reap > 1.0:
                self._last_reap = now
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
        with self.lock:
            self._read_pipe_locked(pipe, w, out)

    def _read_pipe_locked(self, pipe, w: WorkerProc, out) -> None:
        if pipe.closed:
            return
        try:
            data = pipe.read()
        except (BlockingIOError, OSError, ValueError):
            data = b""
        if data:
            f = w.logs.get(out)
            if f is not None:
                try:
                    f.write(data)
                except OSError:
                    pass
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
        try:
            self.sel.unregister(pipe)
        except (KeyError, ValueError):
            return
        pipe.close()
        f = w.logs.pop(out, None)
        if f is not None:
            f.close()
        w.pipes -= 1
        if w.pipes == 0 and w.state != "dead":
            self._on_worker_death(w)

    def _read_worker(self, w: WorkerProc) -> None:
        with self.lock:  # threads turning the loop together must not split a stream
            if w.conn is None or w.conn.closed:
                return
            try:
                msgs = w.conn.read()
            except OSError:
                msgs = None
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
        self._reap = [p for p in self._reap if p.poll() is None]
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
                self._note_worker_death(w)

    # ---------------------------------------------------------------- messages
    def _handle(self, w: WorkerProc, m) -> None:
        op = m[0]
        if op == "done":
            self._on_done(w, m[1], m[2], m[3], m[4])
        elif op == "ref":
            self._apply_refs(m[1], w.wid)
        elif op == "yield":
            self._on_yield(w, m[1], m[2], m[3])
        elif op == "submit":
            self._submit(TaskSpec.from_wire(m[1]))
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

    # ---------------------------------------------------------------- failures
    def _on_worker_death(self, w: WorkerProc) -> None:
        if w.state == "dead" and w.wid not in self.workers:
            return
        w.state = "dead"
        self.workers.pop(w.wid, None)
        self._note_worker_death(w)
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
            self._reap.append(w.proc)  # waited for later: no zombie left behind
        if w.lease is not None and not w.blocked:
            w.lease[0].release(w.lease[1])
        w.lease = None
        self.gpus.give_back(*w.gpus)
        w.gpus = ([], 0.0)
        for oid in list(self.objects.objs):  # refs held by the dead process are gone
            o = self.objects.objs.get(oid)
            if o is not None and w.wid in o.holders:
                self.objects.remove_holder(oid, w.wid)
        self.objects.forget_process(w.wid)
        inflight = list(w.inflight.values())
        w.inflight.clear()
        if w.actor is not None:
            w.actor.on_death(self, w, inflight)
            if not self.closed:
                self._schedule()    # its resources may let a pending actor or task start
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
        for p in self._reap:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if self.dashboard is not None:
            self.dashboard.stop()
        for w in workers:
            for f in [w.proc.stdout, w.proc.stderr, *w.logs.values()]:
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
        _remove_session_dir(self.dir)
        if _oref._counter is self.counter:
            _oref.set_counter(None)


def _remove_session_dir(path: str) -> None:
    """Remove the session directory; with ``SHOAL_KEEP_LOGS=1`` its ``logs/`` (and the
    last state snapshot) stay, and stderr says where."""
    import shutil
    if os.environ.get("SHOAL_KEEP_LOGS", "") in ("", "0"):
        shutil.rmtree(path, ignore_errors=True)
        return
    keep = {"logs", "state.json"}
    for name in os.listdir(path):
        if name not in keep:
            p = os.path.join(path, name)
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p, ignore_errors=True)
            else:
                try:
                    os.unlink(p)
                except OSError:
                    pass
    sys.stderr.write(f"shoal: the workers' logs are kept in {path}/logs (SHOAL_KEEP_LOGS)\n")


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

