"""The Ray backend: shoal's API mapped onto a Ray cluster.

Ray schedules, moves objects, counts references and restarts; this module
only translates. A shoal ``ObjectRef`` wraps a Ray ``ObjectRef`` (not
counted by shoal), an actor's id is its Ray actor handle, a placement
group's id is the Ray placement group, and Ray's errors become shoal's.

Code running in Ray workers reaches the same backend: every task and actor
gets ``SHOAL_BACKEND=ray`` in its environment, so ``shoal.get`` / ``.remote``
there attach to the Ray the worker already belongs to.

Requests no node could ever hold raise InfeasibleResourceError at
submission (Ray would queue them forever with a warning); on an autoscaling
cluster set ``SHOAL_RAY_AUTOSCALING=1`` to leave that to Ray's autoscaler.
The key-value store is a detached named actor per namespace, ended by the
driver's ``shoal.shutdown()``.
"""
from __future__ import annotations

import os
import threading
import time
import weakref

import ray
import ray.exceptions as rex
from ray.util.placement_group import PlacementGroup as RayPlacementGroup
from ray.util.scheduling_strategies import (
    PlacementGroupSchedulingStrategy as RayPGStrategy,
)

from shoal.core._ray_errors import to_shoal_error
from shoal.core._ray_kv import KV_ACTOR, RayKVStore
from shoal.core.generator import DynamicObjectRefGenerator, ObjectRefGenerator
from shoal.core.object_ref import ObjectRef
from shoal.exceptions import (GetTimeoutError, InfeasibleResourceError, RuntimeEnvSetupError,
                              SerializationError)

try:
    from ray._raylet import DynamicObjectRefGenerator as _RayDynamicGenerator
except ImportError:   # a Ray without dynamic generators: nothing to convert
    class _RayDynamicGenerator:  # noqa: D101 - never instantiated
        pass

_ENV = {"SHOAL_BACKEND": "ray"}
_EPS = 1e-9
_NODES_TTL = 5.0
_CANCEL_SETTLE = 0.05
_KILL_WAIT = 30.0


def _use_token_auth_if_configured() -> None:
    """Let a Ray Client connection send this user's Ray token, as ``ray start`` would.

    A cluster started where a token exists (``~/.ray/auth_token``) requires it, but
    Ray's client only sends it under RAY_AUTH_MODE=token and otherwise times out
    with no hint why. An explicit RAY_AUTH_MODE is left as the user set it.
    """
    if "RAY_AUTH_MODE" in os.environ:
        return
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    if os.environ.get("RAY_AUTH_TOKEN") or os.path.isfile(path):
        os.environ["RAY_AUTH_MODE"] = "token"
        try:   # Ray read its config when imported: have it read the mode again
            from ray._raylet import Config
            Config.initialize("")
        except (ImportError, AttributeError):   # an older Ray without token auth
            pass


class RayBackend:
    """Runs shoal's API on Ray: a local Ray it starts, or a cluster it connects to."""

    name = "ray"

    def __init__(self, num_cpus=None, num_gpus=None, resources=None, object_store_memory=None,
                 address=None, namespace=None, log_to_driver=True, **ray_kwargs):
        self._owns_ray = False
        if not ray.is_initialized():
            kwargs = dict(ray_kwargs)
            kwargs.setdefault("namespace", namespace or "default")
            kwargs.setdefault("log_to_driver", log_to_driver)
            if address is None or address == "local":
                # A fresh local Ray: no dashboard (slow to start, another open port).
                kwargs.setdefault("include_dashboard", False)
                kwargs.update(num_cpus=num_cpus, num_gpus=num_gpus, resources=resources,
                              object_store_memory=object_store_memory)
            elif any(v is not None for v in (num_cpus, num_gpus, resources,
                                              object_store_memory)):
                raise ValueError("num_cpus/num_gpus/resources/object_store_memory describe a "
                                 f"new local cluster; drop them when connecting to {address!r}")
            # The job's runtime_env carries SHOAL_BACKEND to every worker, so tasks need
            # no runtime_env of their own and run on Ray's prestarted workers.
            kwargs["runtime_env"] = _with_shoal_env(kwargs.get("runtime_env"))
            if isinstance(address, str) and address.startswith("ray://"):
                _use_token_auth_if_configured()
            try:
                ray.init(address=address, **kwargs)
            except BaseException:
                # A failed connect leaves Ray half set up (a ray:// connect leaves its
                # client mode on, which breaks every later local ray.init in this
                # process): undo it so the caller can retry or start another backend.
                try:
                    ray.shutdown()
                except Exception:  # noqa: BLE001 - best effort: the connect error matters
                    pass
                raise
            self._owns_ray = True
        ctx = ray.get_runtime_context()
        # Named actors and the kv store live here (the job's namespace unless told).
        self.namespace = namespace or ctx.namespace
        try:
            self._is_driver = ctx.worker.mode == ray.SCRIPT_MODE
        except AttributeError:   # Ray client (ray://): only drivers connect that way
            self._is_driver = True
        try:
            job_env = (ctx.runtime_env or {}).get("env_vars") or {}
        except Exception:  # noqa: BLE001 - not every Ray mode exposes it: set it per task
            job_env = {}
        self._job_has_env = all(job_env.get(k) == v for k, v in _ENV.items())
        self._fns = weakref.WeakKeyDictionary()     # user function/class -> ray remote
        self._prepared = weakref.WeakKeyDictionary()  # RemoteFunction -> (its options, ray fn)
        self._lock = threading.Lock()
        self._nodes_cache = (0.0, [])
        self._kv = None
        self._last_dep_submit = 0.0
        # With an autoscaler, nodes that do not exist yet may hold what is asked for:
        # leave infeasible requests to Ray (it asks the autoscaler, or warns).
        self._autoscaling = os.environ.get("SHOAL_RAY_AUTOSCALING", "0") not in ("", "0")

    # ---------------------------------------------------------------- objects
    def put_value(self, value) -> ObjectRef:
        try:
            return ObjectRef(ray.put(value), counted=False)
        except (TypeError, ValueError) as e:
            if _is_serialization_error(e):
                raise _serialization_error(e, "the value given to shoal.put()") from e
            raise

    def get(self, refs: list, timeout=None) -> list:
        try:
            out = ray.get([r.id for r in refs], timeout=timeout)
        except rex.RayError as e:
            raise to_shoal_error(e) from None
        for i, v in enumerate(out):
            if type(v) is _RayDynamicGenerator:   # a num_returns="dynamic" task's value
                out[i] = DynamicObjectRefGenerator([ObjectRef(r, counted=False) for r in v])
        return out

    def stream_next(self, gen, timeout):
        """The shoal ref of the next item of Ray's streaming generator, None at its end."""
        rg = gen._ray
        if timeout is not None:
            ready, _ = ray.wait([rg], timeout=timeout)
            if not ready:
                raise GetTimeoutError(f"no item of the generator came within {timeout}s")
        try:
            ref = next(rg)
        except StopIteration:
            return None
        return ObjectRef(ref, counted=False)

    def cancel_generator(self, gen, force: bool = False) -> None:
        ray.cancel(gen._ray, force=force, recursive=True)

    def wait(self, refs: list, num_returns: int, timeout):
        if num_returns == 0 or not refs:
            return [], list(refs)
        ready, _ = ray.wait([r.id for r in refs], num_returns=num_returns, timeout=timeout)
        ready_ids = set(ready)
        done, pending = [], []
        for r in refs:
            (done if r.id in ready_ids else pending).append(r)
        return done, pending

    def cancel(self, ref: ObjectRef, force: bool = False) -> None:
        # Ray crashes the driver (RAY_CHECK submitted_task_ref_count > 0, cf.
        # ray-project/ray#56123) when a task is cancelled while its dependency
        # resolution is still being started; a few ms after submission it is safe.
        wait = _CANCEL_SETTLE - (time.monotonic() - self._last_dep_submit)
        if wait > 0:
            time.sleep(wait)
        ray.cancel(ref.id, force=force, recursive=True)

    # ---------------------------------------------------------------- tasks
    def submit_task(self, rf, args, kwargs, opts) -> list:
        fn = self._prepared_task(rf, opts)
        try:
            out = fn.remote(*_unwrap(args), **_unwrap_kw(kwargs))
        except TypeError as e:
            if _is_serialization_error(e):
                raise _serialization_error(e, f"an argument of {opts.get('name') or rf._name}") \
                    from e
            raise
        if _has_refs(args, kwargs):
            self._last_dep_submit = time.monotonic()
        return _wrap_returns(out, opts.get("num_returns", 1))

    def _prepared_task(self, rf, opts):
        """The Ray remote function with ``rf``'s options applied (checked and built once)."""
        hit = self._prepared.get(rf)
        if hit is not None and hit[0] is opts:
            return hit[1]
        name = opts.get("name") or rf._name
        ray_opts = self._common_options(opts, f"task {name}", default_cpus=1.0)
        for k in ("max_retries", "retry_exceptions", "name"):
            if opts.get(k) is not None:
                ray_opts[k] = opts[k]
        if isinstance(ray_opts.get("retry_exceptions"), tuple):
            ray_opts["retry_exceptions"] = list(ray_opts["retry_exceptions"])
        ray_opts["num_returns"] = opts.get("num_returns", 1)
        fn = self._remote_of(rf._function).options(**ray_opts)
        self._prepared[rf] = (opts, fn)
        return fn

    # ---------------------------------------------------------------- actors
    def create_actor(self, ac, args, kwargs, opts) -> tuple:
        ray_opts = self._common_options(opts, f"actor {ac._name}", default_cpus=0.0)
        for k in ("max_restarts", "max_task_retries", "max_concurrency", "name", "lifetime"):
            if opts.get(k) is not None:
                ray_opts[k] = opts[k]
        namespace = opts.get("namespace") or self.namespace
        if opts.get("name"):
            ray_opts["namespace"] = namespace
        if opts.get("get_if_exists"):
            ray_opts["get_if_exists"] = True
        if opts.get("name") and not opts.get("get_if_exists"):
            # Ray's own message on a taken name is vague; shoal names the fix.
            try:
                ray.get_actor(opts["name"], namespace=namespace)
            except ValueError:
                pass
            else:
                raise ValueError(f"an actor named {opts['name']!r} already exists in namespace "
                                 f"{namespace!r}; pick another name, or pass get_if_exists=True")
        cls = self._remote_of(ac._cls, ac._methods)
        try:
            handle = cls.options(**ray_opts).remote(*_unwrap(args), **_unwrap_kw(kwargs))
        except TypeError as e:
            if _is_serialization_error(e):
                raise _serialization_error(e, f"an argument of {ac._name}()") from e
            raise
        return handle, None, ac._methods, ac._is_async

    def submit_actor_call(self, actor_id, cls_name, method, args, kwargs, opts) -> list:
        n = opts.get("num_returns", 1)
        m = getattr(actor_id, method)
        # Ray's default for the method (a generator method streams unless told otherwise).
        if n != getattr(m, "_num_returns", 1) or \
                opts.get("name") or opts.get("retry_exceptions") is not None:
            ray_opts = {"num_returns": n}
            if opts.get("name"):
                ray_opts["name"] = opts["name"]
            if opts.get("retry_exceptions") is not None:
                retry = opts["retry_exceptions"]
                ray_opts["retry_exceptions"] = list(retry) if isinstance(retry, tuple) else retry
            m = m.options(**ray_opts)
        try:
            out = m.remote(*_unwrap(args), **_unwrap_kw(kwargs))
        except TypeError as e:
            if _is_serialization_error(e):
                raise _serialization_error(e, f"an argument of {cls_name}.{method}") from e
            raise
        except rex.RayError as e:
            raise to_shoal_error(e) from None
        if _has_refs(args, kwargs):
            self._last_dep_submit = time.monotonic()
        return _wrap_returns(out, n)

    def get_actor(self, name, namespace=None):
        # ValueError when there is none, as on the local backend.
        handle = ray.get_actor(name, namespace=namespace or self.namespace)
        return handle, None, _methods_of(handle), False

    def kill(self, actor_id, no_restart: bool = True) -> None:
        ray.kill(actor_id, no_restart=no_restart)
        if no_restart:
            # ray.kill returns before the actor is gone, and a call made right after
            # could still run; shoal's kill is synchronous, so wait for the death.
            deadline = time.monotonic() + _KILL_WAIT
            while time.monotonic() < deadline:
                try:
                    ray.get(actor_id.__ray_ready__.remote(), timeout=1.0)
                except rex.RayActorError:
                    return
                except rex.GetTimeoutError:
                    continue
                time.sleep(0.01)

    # ---------------------------------------------------------------- placement groups
    def placement_group(self, bundles, strategy, name):
        self._check_pg_feasible(bundles, strategy)
        pg = ray.util.placement_group(bundles, strategy=strategy, name=name or "")
        return pg, ObjectRef(pg.ready(), counted=False)

    def remove_placement_group(self, pg) -> None:
        ray.util.remove_placement_group(pg.id)

    # ---------------------------------------------------------------- cluster
    def resources(self, which: str) -> dict:
        return dict(ray.cluster_resources() if which == "total" else ray.available_resources())

    def nodes(self) -> list:
        return ray.nodes()

    @property
    def kv(self) -> "RayKVStore":
        if self._kv is None:
            with self._lock:
                if self._kv is None:
                    self._kv = RayKVStore(self.namespace)
        return self._kv

    def runtime_context(self):
        from shoal.core.api import RuntimeContext
        ctx = ray.get_runtime_context()
        actor_id = ctx.get_actor_id()
        task_id = ctx.get_task_id()
        try:
            restarts = int(ctx.was_current_actor_reconstructed) if actor_id else 0
        except Exception:  # noqa: BLE001 - asked outside an actor on some Ray versions
            restarts = 0
        in_work = actor_id is not None or not self._is_driver
        return RuntimeContext(
            node_id=ctx.get_node_id(), worker_id=ctx.get_worker_id(), task_id=task_id,
            actor_id=actor_id, namespace=self.namespace, backend="ray",
            job_id=ctx.get_job_id(), task_name=ctx.get_task_name() if in_work else None,
            actor_name=(ctx.get_actor_name() or None) if actor_id else None,
            assigned_resources=dict(ctx.get_assigned_resources()) if in_work else {},
            accelerator_ids={"GPU": [str(i) for i in ray.get_gpu_ids()]} if in_work
            else {"GPU": []},
            actor_restarts=restarts)

    def current_actor(self):
        from shoal.core.api import ActorHandle
        handle = ray.get_runtime_context().current_actor
        return ActorHandle(handle, None, handle._ray_actor_creation_function_descriptor.class_name
                           if hasattr(handle, "_ray_actor_creation_function_descriptor")
                           else "actor", _methods_of(handle), False)

    def store_stats(self) -> dict:
        total = ray.cluster_resources().get("object_store_memory", 0.0)
        avail = ray.available_resources().get("object_store_memory", total)
        stats = {"capacity": int(total), "shm_bytes": int(total - avail)}
        try:  # per-object counts come from the raylets (Ray's internal API)
            from ray._private.internal_api import get_memory_info_reply
            from ray._private.state import state
            s = get_memory_info_reply(state, timeout_seconds=5).store_stats
            stats.update(objects=int(s.num_local_objects), shm_bytes=int(s.object_store_bytes_used),
                         spilled_bytes=int(s.spilled_bytes_total),
                         spill_count=int(s.spilled_objects_total))
        except Exception:  # noqa: BLE001 - the counts are best effort across Ray versions
            pass
        return stats

    def shutdown(self) -> None:
        self._kv = None
        if not ray.is_initialized():
            return
        if self._is_driver:
            # The store is a detached actor (it must outlive whichever worker made it);
            # the driver ends it so the next job starts with an empty store.
            try:
                store = ray.get_actor(KV_ACTOR, namespace=self.namespace)
            except ValueError:
                store = None
            if store is not None and self._owns_ray:
                ray.kill(store)         # ray.shutdown() below ends everything anyway
            elif store is not None:
                # Ray stays up: wait for the death, or a store call made right after
                # shutdown could land on the dying store and its key be lost with it
                self.kill(store)
        if self._owns_ray:
            ray.shutdown()

    # ---------------------------------------------------------------- helpers
    def _remote_of(self, obj, methods=None):
        """The Ray remote function or actor class of a user function/class (made once)."""
        r = self._fns.get(obj)
        if r is None:
            if methods:
                for m, mopts in methods.items():
                    n = mopts.get("num_returns")
                    fn = obj.__dict__.get(m)
                    if n is not None and callable(fn):
                        fn.__ray_num_returns__ = n   # what @ray.method records
            r = ray.remote(obj)
            self._fns[obj] = r
        return r

    def _common_options(self, opts, what: str, default_cpus: float) -> dict:
        out = {}
        num_cpus = opts.get("num_cpus")
        out["num_cpus"] = default_cpus if num_cpus is None else num_cpus
        for k in ("num_gpus", "memory"):
            if opts.get(k):
                out[k] = opts[k]
        res = opts.get("resources")
        if res:
            for k in ("CPU", "GPU"):
                if k in res:
                    raise ValueError(f"{what}: use num_cpus/num_gpus for {k!r}, "
                                     f"not resources={{{k!r}: ...}}")
            out["resources"] = dict(res)
        demand = {"CPU": float(out["num_cpus"]), "GPU": float(out.get("num_gpus", 0)),
                  "memory": float(out.get("memory", 0)), **{k: float(v) for k, v in
                                                            (res or {}).items()}}
        demand = {k: v for k, v in demand.items() if v > 0}
        strategy, pg, bundle = _strategy_of(opts)
        if strategy is not None:
            out["scheduling_strategy"] = strategy
        if pg is not None:
            self._check_bundle_feasible(demand, pg, bundle, what)
        else:
            self._check_feasible(demand, what)
        if opts.get("runtime_env") or not self._job_has_env:
            out["runtime_env"] = _with_shoal_env(_upload_local_dirs(opts.get("runtime_env"),
                                                                    what))
        return out

    def _alive_nodes(self, refresh: bool = False) -> list:
        at, nodes = self._nodes_cache
        if refresh or time.monotonic() - at > _NODES_TTL:
            nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
            self._nodes_cache = (time.monotonic(), nodes)
        return nodes

    def _check_feasible(self, demand: dict, what: str) -> None:
        if not demand or self._autoscaling:
            return
        for refresh in (False, True):   # a node may have joined since the last look
            if any(_fits(demand, n) for n in self._alive_nodes(refresh)):
                return
        raise InfeasibleResourceError(
            f"{what} asks for {demand!r} but no node of the Ray cluster has that much "
            f"(nodes: {[_plain(n) for n in self._alive_nodes()]!r}); it could never run. "
            "Ask for less, or add nodes that offer it.")

    def _check_bundle_feasible(self, demand: dict, pg, bundle: int, what: str) -> None:
        bundles = pg.bundle_specs
        candidates = bundles if bundle is None or bundle < 0 else bundles[bundle:bundle + 1]
        if bundle is not None and bundle >= len(bundles):
            raise ValueError(f"{what}: placement_group_bundle_index={bundle} but the placement "
                             f"group has {len(bundles)} bundles")
        if not any(_fits(demand, b) for b in candidates):
            raise InfeasibleResourceError(
                f"{what} asks for {demand!r}, more than its placement group bundle {bundle} "
                f"holds ({bundles!r}); ask for less or make bigger bundles")

    def _check_pg_feasible(self, bundles: list, strategy: str) -> None:
        if self._autoscaling:
            return
        for refresh in (False, True):
            nodes = self._alive_nodes(refresh)
            if _pg_fits(bundles, strategy, nodes):
                return
        raise InfeasibleResourceError(
            f"placement group {bundles!r} with strategy {strategy} can never be reserved on "
            f"this Ray cluster (nodes: {[_plain(n) for n in nodes]!r}); ask for smaller or "
            "fewer bundles, or add nodes.")


def _upload_local_dirs(runtime_env, what: str):
    """A runtime_env whose local working_dir / py_modules are uploaded to the cluster.

    Ray takes local directories only in ``ray.init``'s job-level runtime_env;
    per task or actor it wants URIs. Uploading them here, as ``ray.init``
    does, lets a task ship its own directory on Ray as on the local backend.
    """
    if not runtime_env or not isinstance(runtime_env, dict):
        return runtime_env
    wd = runtime_env.get("working_dir")
    mods = runtime_env.get("py_modules") or []
    local = (isinstance(wd, (str, os.PathLike)) and "://" not in os.fspath(wd)) or any(
        not (isinstance(m, str) and "://" in m) for m in mods)
    if not local:
        return runtime_env
    try:
        from ray._private.runtime_env.py_modules import upload_py_modules_if_needed
        from ray._private.runtime_env.working_dir import upload_working_dir_if_needed
    except ImportError as e:   # a Ray that moved its private helpers
        raise RuntimeEnvSetupError(
            f"{what}: this Ray cannot upload local runtime_env directories per task ({e}); "
            "pass them to shoal.init(runtime_env=...) or use gcs:// / s3:// URIs") from e
    env = dict(runtime_env)
    if env.get("working_dir") is not None:
        env["working_dir"] = os.fspath(env["working_dir"])
    env = upload_py_modules_if_needed(env, include_gitignore=True)
    env = upload_working_dir_if_needed(env, include_gitignore=True)
    env.pop("excludes", None)
    return env


def _methods_of(handle) -> dict:
    """The method table of a Ray actor handle, in shoal's form (name -> default options)."""
    sigs = getattr(handle, "_ray_method_signatures", {})
    nret = getattr(handle, "_ray_method_num_returns", {}) or {}
    methods = {}
    for m in sigs:
        if m.startswith("__ray"):
            continue
        n = nret.get(m)
        methods[m] = {"num_returns": n} if n is not None and n != 1 else {}
    return methods


def _with_shoal_env(runtime_env) -> dict:
    """``runtime_env`` plus SHOAL_BACKEND=ray (the user's variables win)."""
    env = dict(runtime_env or {})
    env["env_vars"] = {**_ENV, **(env.get("env_vars") or {})}
    return env


# ------------------------------------------------------------------ scheduling
def _strategy_of(opts):
    """(Ray scheduling strategy, shoal placement group, bundle index) from shoal options."""
    strategy = opts.get("scheduling_strategy")
    pg = opts.get("placement_group")
    bundle = opts.get("placement_group_bundle_index", -1)
    capture = False
    if pg is None and strategy is not None and hasattr(strategy, "placement_group"):
        pg = strategy.placement_group
        bundle = getattr(strategy, "placement_group_bundle_index", -1)
        capture = getattr(strategy, "placement_group_capture_child_tasks", False) or False
    if pg is None or pg == "default":
        # "DEFAULT", "SPREAD" or one of Ray's strategy objects (node affinity, labels).
        return strategy, None, -1
    ray_pg = pg.id if not isinstance(pg, RayPlacementGroup) else pg
    bundle = -1 if bundle is None else bundle
    shoal_pg = pg if not isinstance(pg, RayPlacementGroup) else _PGView(pg)
    return (RayPGStrategy(placement_group=ray_pg, placement_group_bundle_index=bundle,
                          placement_group_capture_child_tasks=capture), shoal_pg, bundle)


class _PGView:
    """A Ray placement group seen with the shoal attribute the checks read."""

    def __init__(self, pg: RayPlacementGroup):
        self.bundle_specs = pg.bundle_specs


def _fits(demand: dict, have: dict) -> bool:
    return all(have.get(k, 0.0) + _EPS >= v for k, v in demand.items())


def _plain(node: dict) -> dict:
    return {k: v for k, v in node.items() if not k.startswith("node:")}


def _pg_fits(bundles: list, strategy: str, nodes: list) -> bool:
    """Whether the cluster's nodes (totals) could ever hold the bundles."""
    if not nodes:
        return False
    if strategy == "STRICT_PACK":
        total: dict = {}
        for b in bundles:
            for k, v in b.items():
                total[k] = total.get(k, 0.0) + float(v)
        return any(_fits(total, n) for n in nodes)
    if strategy == "STRICT_SPREAD":
        # Greedy: each bundle on a distinct node that holds it (largest bundles first).
        free = list(nodes)
        for b in sorted(bundles, key=lambda b: -sum(float(v) for v in b.values())):
            i = next((i for i, n in enumerate(free) if _fits(b, n)), None)
            if i is None:
                return False
            free.pop(i)
        return True
    # PACK / SPREAD: bundles may share nodes; check the sum fits the cluster and each a node.
    total = {}
    for b in bundles:
        if not any(_fits(b, n) for n in nodes):
            return False
        for k, v in b.items():
            total[k] = total.get(k, 0.0) + float(v)
    cluster: dict = {}
    for n in nodes:
        for k, v in n.items():
            cluster[k] = cluster.get(k, 0.0) + v
    return _fits(total, cluster)


# ------------------------------------------------------------------ arguments and results
def _unwrap(args: tuple) -> tuple:
    """Top-level shoal refs become Ray refs, so Ray resolves them before the call."""
    if any(type(a) is ObjectRef for a in args):
        return tuple(a.id if type(a) is ObjectRef else a for a in args)
    return args


def _unwrap_kw(kwargs: dict) -> dict:
    if kwargs and any(type(v) is ObjectRef for v in kwargs.values()):
        return {k: v.id if type(v) is ObjectRef else v for k, v in kwargs.items()}
    return kwargs


def _has_refs(args: tuple, kwargs: dict) -> bool:
    return any(type(a) is ObjectRef for a in args) or \
        any(type(v) is ObjectRef for v in kwargs.values())


def _wrap_returns(out, n) -> list:
    if n == "streaming":
        return [ObjectRefGenerator(ObjectRef(out.completed(), counted=False), "ray", out)]
    if n == 0 or out is None:
        return []
    if n == 1 or n == "dynamic":
        return [ObjectRef(out, counted=False)]
    return [ObjectRef(r, counted=False) for r in out]


def _is_serialization_error(e: BaseException) -> bool:
    text = str(e).lower()
    return "serializ" in text or "pickle" in text


def _serialization_error(e: BaseException, what: str) -> SerializationError:
    return SerializationError(
        f"could not serialize {what}: {e}. Pass only picklable objects (open files, locks, "
        "sockets and generators are not), or create the object inside the task instead.")
