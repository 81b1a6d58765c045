"""shoal's runtime API: the verbs a Ray user already knows.

    shoal.init()                       # optional: first use starts a local cluster
    @shoal.remote
    def f(x): return x + 1
    shoal.get([f.remote(i) for i in range(4)])
"""
from __future__ import annotations

import atexit
import functools
import inspect
import os
import sys
import threading
import time
from dataclasses import dataclass, field

from shoal.core.generator import ObjectRefGenerator
from shoal.core.object_ref import ObjectRef
from shoal.exceptions import MissingDependencyError

_backend = None           # the driver's backend (LocalBackend or RayBackend)
_worker_rt = None         # set inside worker processes of the local backend
_snapshots = None         # the driver's writer of state.json for `shoal status`
_init_lock = threading.RLock()

_TASK_OPTIONS = {"num_cpus", "num_gpus", "resources", "memory", "max_retries", "retry_exceptions",
                 "num_returns", "name", "placement_group", "placement_group_bundle_index",
                 "scheduling_strategy", "runtime_env"}
_ACTOR_OPTIONS = {"num_cpus", "num_gpus", "resources", "memory", "max_restarts",
                  "max_task_retries", "max_concurrency", "name", "namespace", "get_if_exists",
                  "lifetime", "placement_group", "placement_group_bundle_index",
                  "scheduling_strategy", "runtime_env"}
_METHOD_OPTIONS = {"num_returns", "name", "retry_exceptions"}
GENERATOR_MODES = ("streaming", "dynamic")


def _set_worker_runtime(rt) -> None:
    global _worker_rt
    _worker_rt = rt


def _runtime():
    if _worker_rt is not None:
        return _worker_rt
    if _backend is None:
        init()
    return _backend


# ------------------------------------------------------------------ lifecycle
def init(num_cpus: int | None = None, num_gpus: int | None = None, resources: dict | None = None,
         object_store_memory: int | None = None, backend: str | None = None,
         address: str | None = None, namespace: str | None = None,
         ignore_reinit_error: bool = False, log_to_driver: bool = True,
         dashboard: bool | None = None, dashboard_port: int = 0, **ray_kwargs):
    """Start shoal: a local cluster of worker processes, or a connection to Ray.

    Args:
        num_cpus, num_gpus, resources: what this node offers (default: the machine's CPUs).
        object_store_memory: bytes of shared memory for objects before spilling to disk.
        backend: "local" (default) or "ray".
        address: "auto" or "ray://host:port" connects to a Ray cluster (implies backend="ray").
        namespace: namespace for named actors.
        dashboard: serve the web dashboard and Prometheus metrics (``shoal[dashboard]``)
            on 127.0.0.1 with a per-session token; its URL is printed and in
            ``shoal.dashboard.url()``. Default: the ``SHOAL_DASHBOARD`` variable
            (``1`` turns it on). ``dashboard_port``: 0 picks a free port.
    Returns the backend. Raises RuntimeError if already initialized (unless
    ``ignore_reinit_error``).
    """
    global _backend
    if _worker_rt is not None:
        return _worker_rt
    with _init_lock:
        if _backend is not None:
            if ignore_reinit_error:
                return _backend
            raise RuntimeError("shoal is already initialized; call shoal.shutdown() first "
                               "or pass ignore_reinit_error=True")
        backend = (backend or os.environ.get("SHOAL_BACKEND")
                   or ("ray" if address or _in_ray_worker() else "local"))
        if backend == "local":
            if address:
                raise ValueError("address= is for the Ray backend; drop it or use backend='ray'")
            from shoal.core._local import LocalBackend
            _backend = LocalBackend(num_cpus, num_gpus, resources, object_store_memory,
                                    namespace, log_to_driver)
        elif backend == "ray":
            MissingDependencyError.require("shoal's Ray backend", "ray", "ray")
            from shoal.core._ray import RayBackend
            _backend = RayBackend(num_cpus=num_cpus, num_gpus=num_gpus, resources=resources,
                                  object_store_memory=object_store_memory, address=address,
                                  namespace=namespace, log_to_driver=log_to_driver, **ray_kwargs)
        else:
            raise ValueError(f"unknown backend {backend!r}; use 'local' or 'ray'")
        global _snapshots
        from shoal.core import state
        try:
            _snapshots = state._start_snapshots(_backend)
        except BaseException:
            b, _backend = _backend, None
            b.shutdown()
            raise
        if dashboard is None:
            dashboard = os.environ.get("SHOAL_DASHBOARD", "") not in ("", "0")
        if dashboard:
            from shoal.dashboard import start  # lazily: its web stack is an extra
            try:
                start(port=dashboard_port)
            except BaseException:
                b, _backend = _backend, None
                b.shutdown()
                raise
        return _backend


def _in_ray_worker() -> bool:
    """Whether this process is a Ray worker (code run by Ray uses Ray, not a new cluster)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return False
    try:
        return ray.get_runtime_context().worker.mode == ray.WORKER_MODE
    except Exception:  # noqa: BLE001 - a Ray client or an older Ray: not a worker we know
        return False


def shutdown() -> None:
    """Stop every worker and free every object; safe to call twice."""
    global _backend
    with _init_lock:
        b, _backend = _backend, None
    global _snapshots
    snaps, _snapshots = _snapshots, None
    if snaps is not None:
        snaps.stop()
    dash = sys.modules.get("shoal.dashboard")
    if dash is not None:
        dash.stop()
    state = sys.modules.get("shoal.core.state")
    if state is not None and b is not None:
        state._clear_runs()     # a new cluster starts with no runs
    if b is not None:
        b.shutdown()


def is_initialized() -> bool:
    """True in a driver after ``init()`` (until ``shutdown()``) and in any task or actor."""
    return _backend is not None or _worker_rt is not None


atexit.register(shutdown)


# ------------------------------------------------------------------ objects
def put(value) -> ObjectRef:
    """Store ``value`` in the object store; returns its ObjectRef."""
    if isinstance(value, ObjectRef):
        raise TypeError("shoal.put() of an ObjectRef is not allowed; pass the ref itself")
    return _runtime().put_value(value)


def get(refs, *, timeout: float | None = None):
    """The value(s) of an ObjectRef or a list of them, waiting up to ``timeout`` seconds.

    Raises the task's error (a TaskError that is also an instance of the
    original exception), WorkerCrashedError, ActorDiedError, or GetTimeoutError.
    """
    rt = _runtime()
    if isinstance(refs, ObjectRef):
        return rt.get([refs], timeout)[0]
    if isinstance(refs, (list, tuple)):
        if not all(isinstance(r, ObjectRef) for r in refs):
            refs = [r if isinstance(r, ObjectRef) else _foreign_ref(rt, r, "in the list")
                    for r in refs]
        return rt.get(list(refs), timeout)
    return rt.get([_foreign_ref(rt, refs, "")], timeout)[0]


def _foreign_ref(rt, ref, where: str) -> ObjectRef:
    """A Ray ObjectRef met on the Ray backend (e.g. from a dynamic generator a task was
    given) taken as shoal's; anything else is a TypeError."""
    if rt.name == "ray" and type(ref).__name__ == "ObjectRef" and \
            type(ref).__module__.startswith("ray"):
        return ObjectRef(ref, counted=False)
    raise TypeError(f"shoal.get() takes an ObjectRef or a list of them, got "
                    f"{type(ref).__name__} {where}".rstrip())


def wait(refs: list, *, num_returns: int = 1, timeout: float | None = None,
         fetch_local: bool = True):
    """Wait until ``num_returns`` of ``refs`` are ready; returns (ready, not_ready).

    ``refs`` may hold ObjectRefGenerators of streaming tasks, as in Ray: one is
    ready when its next item exists or its task has ended.
    """
    refs = list(refs)
    keys = [id(r) if isinstance(r, ObjectRefGenerator) else r.id for r in refs]
    if len(set(keys)) != len(refs):
        raise ValueError("shoal.wait() got the same ObjectRef twice")
    if not 0 <= num_returns <= len(refs):
        raise ValueError(f"num_returns={num_returns} must be between 0 and len(refs)={len(refs)}")
    if any(isinstance(r, ObjectRefGenerator) for r in refs):
        return _wait_with_generators(refs, num_returns, timeout)
    return _runtime().wait(refs, num_returns, timeout)


def _wait_with_generators(refs: list, num_returns: int, timeout: float | None):
    # A generator has no single ref to block on: poll, backing off to 20 ms.
    deadline = None if timeout is None else time.monotonic() + timeout
    plain = [r for r in refs if not isinstance(r, ObjectRefGenerator)]
    pause = 0.0005
    while True:
        done = {r.id for r in _runtime().wait(plain, len(plain), 0)[0]} if plain else set()
        ready = [r for r in refs
                 if (r.next_ready() if isinstance(r, ObjectRefGenerator) else r.id in done)]
        left = None if deadline is None else deadline - time.monotonic()
        if len(ready) >= num_returns or (left is not None and left <= 0):
            ready = ready[:num_returns]
            chosen = {id(r) for r in ready}
            return ready, [r for r in refs if id(r) not in chosen]
        time.sleep(pause if left is None else max(0.0, min(pause, left)))
        pause = min(pause * 2, 0.02)


def cancel(ref, *, force: bool = False, recursive: bool = True) -> None:
    """Cancel the task producing ``ref``: queued tasks never run; a running one
    gets TaskCancelledError raised inside it (``force=True`` kills its worker).

    ``ref`` may be an ObjectRefGenerator: its streaming task stops, and the
    next item's ref raises TaskCancelledError.
    """
    if isinstance(ref, ObjectRefGenerator):
        if _is_ray():
            _runtime().cancel_generator(ref, force)
            return
        ref = ref._task_ref
    elif not isinstance(ref, ObjectRef):
        raise TypeError(f"shoal.cancel() takes an ObjectRef or an ObjectRefGenerator, "
                        f"got {type(ref).__name__}")
    _runtime().cancel(ref.id if not _is_ray() else ref, force)


def _is_ray() -> bool:
    return getattr(_runtime(), "name", "") == "ray"


# ------------------------------------------------------------------ tasks
class RemoteFunction:
    """A function that runs as a task: ``f.remote(*args)`` returns ObjectRef(s)."""

    def __init__(self, function, options: dict):
        _check_options(options, _TASK_OPTIONS, function.__qualname__)
        _check_generator(function, options)
        self._function = function
        self._name = function.__name__
        self._options = options
        self._fn_ids: dict = {}
        self._prepared: dict = {}
        functools.update_wrapper(self, function)

    def __call__(self, *args, **kwargs):
        raise TypeError(f"remote function {self._name} cannot be called directly; "
                        f"use {self._name}.remote(...)")

    def remote(self, *args, **kwargs):
        refs = _runtime().submit_task(self, args, kwargs, self._options)
        n = self._options.get("num_returns", 1)
        return refs[0] if n == 1 or n.__class__ is str else refs

    def bind(self, *args, **kwargs):
        """A DAG node calling this function with these arguments (see ``shoal.dag``)."""
        from shoal.core.dag import FunctionNode
        return FunctionNode(self, args, kwargs)

    def options(self, **opts) -> "RemoteFunction":
        merged = dict(self._options, **opts)
        rf = RemoteFunction.__new__(RemoteFunction)
        _check_options(merged, _TASK_OPTIONS, self._name)
        _check_generator(self._function, merged)
        rf.__dict__.update(self.__dict__)
        rf._options = merged
        rf._prepared = {}
        return rf

    def __getstate__(self):
        return {"_function": self._function, "_name": self._name, "_options": self._options,
                "_fn_ids": dict(self._fn_ids)}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._prepared = {}


class ActorMethod:
    def __init__(self, handle: "ActorHandle", name: str, options: dict):
        self._handle = handle
        self._name = name
        self._options = options

    def remote(self, *args, **kwargs):
        h = self._handle
        refs = _runtime().submit_actor_call(h._actor_id, h._cls_name, self._name, args, kwargs,
                                            self._options)
        n = self._options.get("num_returns", 1)
        return refs[0] if n == 1 or n.__class__ is str else refs

    def bind(self, *args, **kwargs):
        """A DAG node calling this method of this live actor (see ``shoal.dag``)."""
        from shoal.core.dag import ClassMethodNode
        return ClassMethodNode(self._handle, self._name, args, kwargs, self._options)

    def options(self, **opts) -> "ActorMethod":
        _check_options(opts, _METHOD_OPTIONS, self._name)
        return ActorMethod(self._handle, self._name, dict(self._options, **opts))

    def __call__(self, *a, **k):
        raise TypeError(f"actor method {self._name} cannot be called directly; "
                        f"use .{self._name}.remote(...)")


class ActorHandle:
    """A handle to an actor; method calls from one handle run in order."""

    def __init__(self, actor_id, handle_ref, cls_name: str, methods: dict, is_async: bool = False):
        self._actor_id = actor_id
        self._handle_ref = handle_ref     # keeps the actor alive while handles exist
        self._cls_name = cls_name
        self._methods = methods
        self._is_async = is_async

    def __getattr__(self, item):
        if item.startswith("__"):
            raise AttributeError(item)
        methods = self.__dict__.get("_methods", {})
        if item not in methods:
            raise AttributeError(f"actor {self.__dict__.get('_cls_name')} has no method {item!r}")
        return ActorMethod(self, item, methods[item])

    def __reduce__(self):
        return (ActorHandle, (self._actor_id, self._handle_ref, self._cls_name, self._methods,
                              self._is_async))

    def __repr__(self):
        return f"ActorHandle({self._cls_name})"

    def __eq__(self, other):
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __hash__(self):
        return hash(self._actor_id)


class ActorClass:
    """A class whose instances live in their own worker process."""

    def __init__(self, cls, options: dict):
        _check_options(options, _ACTOR_OPTIONS, cls.__qualname__)
        self._cls = cls
        self._name = cls.__name__
        self._options = options
        self._fn_ids: dict = {}
        self._methods = {}
        self._is_async = False
        for name, member in inspect.getmembers(cls, predicate=callable):
            if name.startswith("__") and name != "__call__":
                continue
            self._methods[name] = dict(getattr(member, "_shoal_method_options", {}))
            if inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member):
                self._is_async = True

    def __call__(self, *a, **k):
        raise TypeError(f"actor class {self._name} cannot be instantiated directly; "
                        f"use {self._name}.remote(...)")

    def remote(self, *args, **kwargs) -> ActorHandle:
        rt = _runtime()
        actor_id, handle_ref, methods, is_async = rt.create_actor(self, args, kwargs, self._options)
        return ActorHandle(actor_id, handle_ref, self._name, methods, is_async)

    def bind(self, *args, **kwargs):
        """A DAG node creating this actor (see ``shoal.dag``); ``node.method.bind(...)`` calls it."""
        from shoal.core.dag import ClassNode
        return ClassNode(self, args, kwargs)

    def options(self, **opts) -> "ActorClass":
        ac = ActorClass.__new__(ActorClass)
        ac.__dict__.update(self.__dict__)
        ac._options = dict(self._options, **opts)
        _check_options(ac._options, _ACTOR_OPTIONS, self._name)
        return ac


def method(**options):
    """Per-method defaults for an actor method, e.g. ``@shoal.method(num_returns=2)``."""
    _check_options(options, _METHOD_OPTIONS, "actor method")

    def deco(fn):
        fn._shoal_method_options = options
        return fn
    return deco


def remote(*args, **options):
    """Make a function a task or a class an actor.

    ``@shoal.remote`` or ``@shoal.remote(num_cpus=..., num_gpus=..., resources=...,
    max_retries=3, retry_exceptions=False, num_returns=1)`` on functions;
    ``max_restarts``, ``max_task_retries``, ``max_concurrency``, ``name``,
    ``namespace``, ``get_if_exists`` on classes.
    """
    if len(args) == 1 and not options and callable(args[0]):
        return _make_remote(args[0], {})
    if args:
        raise TypeError("use @shoal.remote or @shoal.remote(option=value, ...)")
    return lambda obj: _make_remote(obj, options)


def _make_remote(obj, options):
    if inspect.isclass(obj):
        return ActorClass(obj, options)
    if callable(obj):
        return RemoteFunction(obj, options)
    raise TypeError(f"@shoal.remote applies to functions and classes, not {type(obj).__name__}")


def _check_generator(function, options: dict) -> None:
    if options.get("num_returns") in GENERATOR_MODES and not (
            inspect.isgeneratorfunction(function) or inspect.isasyncgenfunction(function)):
        raise ValueError(f"num_returns={options['num_returns']!r} needs a generator function "
                         f"(one that yields); {function.__qualname__} does not yield")


def _check_options(options: dict, allowed: set, what: str) -> None:
    bad = set(options) - allowed
    if bad:
        raise ValueError(f"unknown option(s) {sorted(bad)} for {what}; allowed: {sorted(allowed)}")
    n = options.get("num_returns", 1)
    if n not in GENERATOR_MODES and (not isinstance(n, int) or n < 0):
        raise ValueError(f"num_returns must be an int >= 0, \"streaming\" or \"dynamic\" for "
                         f"{what}, got {n!r}")
    for k in ("num_cpus", "num_gpus"):
        v = options.get(k)
        if v is not None and (not isinstance(v, (int, float)) or v < 0):
            raise ValueError(f"{k} must be a number >= 0 for {what}, got {v!r}")


# ------------------------------------------------------------------ actors
def get_actor(name: str, namespace: str | None = None) -> ActorHandle:
    """The handle of the live actor called ``name``; ValueError if there is none."""
    rt = _runtime()
    actor_id, handle_oid, methods, is_async = rt.get_actor(name, namespace)
    handle_ref = handle_oid if _is_ray() else ObjectRef(handle_oid)
    cls_name = name
    return ActorHandle(actor_id, handle_ref, cls_name, methods, is_async)


def kill(actor: ActorHandle, *, no_restart: bool = True) -> None:
    """Kill the actor's process now; its pending calls fail with ActorDiedError."""
    if not isinstance(actor, ActorHandle):
        raise TypeError(f"shoal.kill() takes an ActorHandle, got {type(actor).__name__}")
    _runtime().kill(actor._actor_id, no_restart)


# ------------------------------------------------------------------ placement groups
class PlacementGroup:
    """Resources reserved all together (a gang): every bundle or none."""

    def __init__(self, pg_id, bundles, strategy, ready_ref):
        self.id = pg_id
        self.bundle_specs = bundles
        self.strategy = strategy
        self._ready = ready_ref

    @property
    def bundle_count(self) -> int:
        return len(self.bundle_specs)

    def ready(self) -> ObjectRef:
        """An ObjectRef that becomes ready once every bundle is reserved."""
        return self._ready

    def wait(self, timeout_seconds: float = 30) -> bool:
        ready, _ = wait([self._ready], timeout=timeout_seconds)
        return bool(ready)

    def __reduce__(self):
        return (PlacementGroup, (self.id, self.bundle_specs, self.strategy, self._ready))


def placement_group(bundles: list[dict], strategy: str = "PACK", name: str = "") -> PlacementGroup:
    """Reserve ``bundles`` (e.g. ``[{"CPU": 1}] * 4``) all at once.

    Raises InfeasibleResourceError at once if the cluster can never hold them.
    """
    bundles = [dict(b) for b in bundles]
    rt = _runtime()
    pg_id, ready = rt.placement_group(bundles, strategy, name)
    return PlacementGroup(pg_id, bundles, strategy, ready)


def remove_placement_group(pg: PlacementGroup) -> None:
    """Release the reservation; actors placed in it are killed."""
    _runtime().remove_placement_group(pg)


@dataclass
class PlacementGroupSchedulingStrategy:
    """Run a task or actor inside a placement group: ``.options(scheduling_strategy=...)``.

    ``placement_group_bundle_index`` picks a bundle (-1: any bundle with room);
    ``placement_group_capture_child_tasks`` places the tasks it starts in the
    group too, as in Ray.
    """

    placement_group: PlacementGroup
    placement_group_bundle_index: int = -1
    placement_group_capture_child_tasks: bool = False


# ------------------------------------------------------------------ cluster
def cluster_resources() -> dict:
    """Every resource of the cluster and its total, e.g. ``{"CPU": 8.0, "GPU": 1.0}``."""
    return _runtime().resources("total")


def available_resources() -> dict:
    """The resources not reserved now; one all taken is absent, as in Ray."""
    return _runtime().resources("available")


def nodes() -> list:
    """The cluster's nodes as Ray lists them: dicts with ``NodeID``, ``Alive``,
    ``NodeManagerAddress`` and ``Resources``."""
    return _runtime().nodes()


def get_gpu_ids() -> list[str]:
    """The GPU ids given to this actor or task (CUDA_VISIBLE_DEVICES' naming).

    An actor that asked for ``num_gpus`` runs with ``CUDA_VISIBLE_DEVICES``
    set to these, so ``torch.device("cuda")`` is its own GPU. Empty in the
    driver and in workers that asked for none.
    """
    rt = _runtime()
    if rt.name == "ray":
        import ray
        return [str(i) for i in ray.get_gpu_ids()]
    from shoal.core._gpus import assigned_gpu_ids
    return assigned_gpu_ids()


def get_kv_store():
    """The cluster's key-value store (a ``KVStore``), reachable from every process."""
    return _runtime().kv


def _hex(v):
    if v is None or isinstance(v, str):
        return v
    return f"{v:016x}" if isinstance(v, int) else v.hex()


@dataclass
class RuntimeContext:
    """Where the calling code runs: job, node, worker, task, actor (``ray.get_runtime_context()``).

    The ``get_*_id`` methods return hex strings (None where there is none,
    e.g. the task id in the driver); the attributes keep the backend's raw ids.
    """

    node_id: str
    worker_id: object
    task_id: object
    actor_id: object
    namespace: str
    backend: str
    job_id: str = ""
    task_name: str | None = None
    actor_name: str | None = None
    assigned_resources: dict = field(default_factory=dict)
    accelerator_ids: dict = field(default_factory=lambda: {"GPU": []})
    actor_restarts: int = 0

    def get_job_id(self) -> str:
        """The id of this job (one ``shoal.init`` of a driver), a hex string."""
        return self.job_id

    def get_node_id(self) -> str:
        """The id of the node this process runs on, a hex string."""
        return _hex(self.node_id)

    def get_worker_id(self) -> str | None:
        """The id of this worker process (the driver's on Ray; None in the local driver)."""
        return _hex(self.worker_id)

    def get_task_id(self) -> str | None:
        """The id of the task or actor call running now; None outside one."""
        return _hex(self.task_id)

    def get_actor_id(self) -> str | None:
        """The id of the actor this code runs in; None outside an actor."""
        return _hex(self.actor_id)

    def get_actor_name(self) -> str | None:
        """The name the current actor was given (``name=``); None if unnamed or not an actor."""
        return self.actor_name

    def get_task_name(self) -> str | None:
        """The name of the task or actor call running now (``name=`` or the function's)."""
        return self.task_name

    def get_assigned_resources(self) -> dict:
        """The resources reserved for the running task or actor, e.g. ``{"CPU": 1.0}``."""
        return dict(self.assigned_resources)

    def get_accelerator_ids(self) -> dict:
        """The accelerator ids given to this worker, e.g. ``{"GPU": ["0"]}``."""
        return {k: list(v) for k, v in self.accelerator_ids.items()}

    @property
    def was_current_actor_reconstructed(self) -> bool:
        """Whether the current actor was restarted after its process died."""
        return self.actor_restarts > 0

    @property
    def current_actor(self) -> "ActorHandle":
        """A handle to the actor this code runs in; RuntimeError outside an actor."""
        if self.actor_id is None:
            raise RuntimeError("current_actor is only available inside an actor")
        return _runtime().current_actor()

    def get(self) -> dict:
        """The context as a dict (job, node, task and actor ids, namespace)."""
        return {"job_id": self.get_job_id(), "node_id": self.get_node_id(),
                "worker_id": self.get_worker_id(), "task_id": self.get_task_id(),
                "actor_id": self.get_actor_id(), "namespace": self.namespace}


def get_runtime_context() -> RuntimeContext:
    """The RuntimeContext of the calling code (driver, task or actor)."""
    return _runtime().runtime_context()
