"""What every shoal process of the local backend does the same way.

The driver (``LocalBackend``) and each worker (``WorkerRuntime``) turn API
calls into task specs, serialize arguments and resolve results here; they
differ only in the primitives below (the driver acts, a worker asks the
driver).
"""
from __future__ import annotations

import os
import time

from shoal.core import _runtime_env
from shoal.core._resources import demand_of
from shoal.core._serialization import IS_ERROR, deserialize, dumps_code, serialize
from shoal.core._spec import ActorSpec, TaskSpec
from shoal.core.generator import ObjectRefGenerator, _deadline_left
from shoal.core.object_ref import ObjectRef
from shoal.exceptions import GetTimeoutError

_GEN_MODE = {"streaming": 1, "dynamic": 2}


class DepMarker:
    """Stands in an argument list for a top-level ObjectRef argument."""

    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = index

    def __reduce__(self):
        return (DepMarker, (self.index,))


def split_deps(args: tuple, kwargs: dict):
    """Replace top-level ObjectRefs by markers; returns (args, kwargs, dep ids)."""
    deps: list = []
    if any(type(a) is ObjectRef for a in args):
        new = []
        for a in args:
            if type(a) is ObjectRef:
                new.append(DepMarker(len(deps)))
                deps.append(a.id)
            else:
                new.append(a)
        args = tuple(new)
    if kwargs and any(type(v) is ObjectRef for v in kwargs.values()):
        kw = {}
        for k, v in kwargs.items():
            if type(v) is ObjectRef:
                kw[k] = DepMarker(len(deps))
                deps.append(v.id)
            else:
                kw[k] = v
        kwargs = kw
    return args, kwargs, tuple(deps)


def fill_deps(args: tuple, kwargs: dict, values: list):
    """Put resolved values back where the markers stand."""
    if any(type(a) is DepMarker for a in args):
        args = tuple(values[a.index] if type(a) is DepMarker else a for a in args)
    if kwargs and any(type(v) is DepMarker for v in kwargs.values()):
        kwargs = {k: values[v.index] if type(v) is DepMarker else v for k, v in kwargs.items()}
    return args, kwargs


def value_of(desc):
    """Deserialize a result; an error result raises."""
    value = deserialize(desc)
    if desc[IS_ERROR]:
        raise value
    return value


_NO_ARGS = serialize(((), {}), None)


class ProcessRuntime:
    """High-level operations shared by the driver and the workers."""

    namespace = "default"

    # primitives: new_id, new_path, register_function, submit_local, get_descs, wait_ids,
    # put, _alloc, cancel, create_actor_spec, get_actor, kill, check_feasible, create_pg, remove_pg,
    # resources, nodes, store_stats, kv

    def _fn_id(self, holder, make_bytes) -> int:
        fid = holder._fn_ids.get(self.session)
        if fid is None:
            fid = self.new_id()
            self.register_function(fid, make_bytes())
            holder._fn_ids[self.session] = fid
        return fid

    def _prepare(self, rf, opts) -> tuple:
        """What every call of ``rf`` with these options shares (checked once per cluster)."""
        prep = rf._prepared.get(self.session)
        if prep is None:
            renv = opts.get("runtime_env")
            if renv:   # its own function id: the same function runs in another environment
                env = _runtime_env.prepare(renv, self.resource_dir(), f"task {rf._name}")
                fn_id = self.new_id()
                self.register_function(fn_id, dumps_code(_runtime_env.EnvFunction(rf._function,
                                                                                  env)))
            else:
                fn_id = self._fn_id(rf, lambda: dumps_code(rf._function))
            demand = demand_of(opts.get("num_cpus"), opts.get("num_gpus"), opts.get("resources"),
                               opts.get("memory"))
            pg_id, bundle = _pg_of(opts)
            self.check_feasible(demand, pg_id, bundle, f"task {rf._name}")
            n = opts.get("num_returns", 1)
            prep = (fn_id, demand, pg_id, bundle, opts.get("name") or rf._name,
                    1 if n.__class__ is str else n, opts.get("max_retries", 3),
                    _retry_flag(opts.get("retry_exceptions")), _GEN_MODE.get(n, 0))
            if pg_id is None:  # a placement group can go away: check those every time
                rf._prepared[self.session] = prep
        return prep

    def submit_task(self, rf, args, kwargs, opts) -> list:
        fn_id, demand, pg_id, bundle, name, n, max_retries, retry, gen = self._prepare(rf, opts)
        if args or kwargs:
            a, kw, deps = split_deps(args, kwargs)
            args_desc = serialize((a, kw), self.new_path, what=f"arguments of {name}",
                                  alloc=self._alloc)
        else:
            deps, args_desc = (), _NO_ARGS
        seq = self.new_id()
        returns = (self.new_id(),) if n == 1 else tuple(self.new_id() for _ in range(max(n, 1)))
        spec = TaskSpec(seq, fn_id, name, args_desc, deps, returns, demand, pg_id, bundle,
                        max_retries, retry, None, None, gen)
        refs = self.submit_local(spec)
        if gen == 1:
            return [ObjectRefGenerator(refs[0], "local")]
        return refs if n != 1 else refs[:1]

    def create_actor(self, ac, args, kwargs, opts) -> tuple:
        cls_id = self._fn_id(ac, lambda: dumps_code(ac._cls))
        num_cpus = opts.get("num_cpus")
        demand = demand_of(num_cpus, opts.get("num_gpus"), opts.get("resources"),
                           opts.get("memory"), default_cpus=0)
        pg_id, bundle = _pg_of(opts)
        a, kw, deps = split_deps(args, kwargs)
        args_desc = serialize((a, kw), self.new_path, what=f"arguments of {ac._name}()",
                              alloc=self._alloc)
        is_async = ac._is_async
        conc = opts.get("max_concurrency") or (1000 if is_async else 1)
        renv = opts.get("runtime_env")
        env = _runtime_env.prepare(renv, self.resource_dir(), f"actor {ac._name}") \
            if renv else None
        spec = ActorSpec(actor_id=self.new_id(), cls_id=cls_id, cls_name=ac._name,
                         args=args_desc, deps=deps, demand=demand, pg_id=pg_id, bundle=bundle,
                         max_restarts=opts.get("max_restarts", 0),
                         max_task_retries=opts.get("max_task_retries", 0),
                         max_concurrency=conc, is_async=is_async, name=opts.get("name"),
                         namespace=opts.get("namespace") or self.namespace,
                         methods=ac._methods, handle_oid=self.new_id(),
                         get_if_exists=opts.get("get_if_exists", False), runtime_env=env)
        actor_id, handle_oid, methods = self.create_actor_spec(spec, None)
        return actor_id, ObjectRef(handle_oid), methods, is_async

    def submit_actor_call(self, actor_id, cls_name, method, args, kwargs, opts) -> list:
        a, kw, deps = split_deps(args, kwargs)
        name = f"{cls_name}.{method}"
        args_desc = serialize((a, kw), self.new_path, what=f"arguments of {name}", alloc=self._alloc)
        n = opts.get("num_returns", 1)
        gen = _GEN_MODE.get(n, 0) if n.__class__ is str else 0
        if gen:
            n = 1
        seq = self.new_id()
        returns = tuple(self.new_id() for _ in range(max(n, 1)))
        spec = TaskSpec(seq, None, name, args_desc, deps, returns, {}, None, -1,
                        0, _retry_flag(opts.get("retry_exceptions")), actor_id, method, gen)
        refs = self.submit_local(spec)
        if gen == 1:
            return [ObjectRefGenerator(refs[0], "local")]
        return refs if n != 1 else refs[:1]

    def get(self, refs: list, timeout=None) -> list:
        descs = self.get_descs([r.id for r in refs], timeout)
        out = []
        for r, d in zip(refs, descs):
            try:
                out.append(value_of(d))
            except FileNotFoundError:  # spilled between lookup and map: look again
                out.append(value_of(self.get_descs([r.id], timeout)[0]))
        return out

    def resource_dir(self) -> str:
        """Where shipped working_dir / py_modules copies live (inside the session's dir)."""
        d = os.path.join(self.dir, "runtime_resources")
        os.makedirs(d, exist_ok=True)
        return d

    def stream_next(self, gen, timeout):
        """The ref of a streaming task's next item, or None after the last."""
        deadline = None if timeout is None else time.monotonic() + timeout
        gid = gen._task_ref.id
        while True:
            oid, state = self.stream_slot(gid, gen._index)
            if state == "item":
                return ObjectRef(oid)
            if state == "end":
                return None
            # The slot becomes ready when the item (or the end) arrives.
            if not self.wait_ids([oid], 1, _deadline_left(deadline)):
                raise GetTimeoutError(f"no item of the generator came within {timeout}s")

    def put_value(self, value) -> ObjectRef:
        return self.put(value)

    def wait(self, refs: list, num_returns: int, timeout):
        ready_ids = set(self.wait_ids([r.id for r in refs], num_returns, timeout))
        ready, not_ready = [], []
        for r in refs:
            (ready if r.id in ready_ids and len(ready) < num_returns else not_ready).append(r)
        return ready, not_ready

    def placement_group(self, bundles, strategy, name):
        pg_id = self.new_id()
        ready_oid = self.create_pg(pg_id, bundles, strategy, name)
        return pg_id, ObjectRef(ready_oid)

    def remove_placement_group(self, pg) -> None:
        self.remove_pg(pg.id)

    def runtime_context(self):
        from shoal.core._gpus import assigned_gpu_ids
        from shoal.core.api import RuntimeContext
        local = getattr(self, "local", None)
        task = getattr(local, "task", None) if local is not None else None
        spec = getattr(self, "actor_spec", None)
        if spec is not None:
            demand = spec["demand"] or {}
        else:
            demand = self.task_demand(task) if task is not None else None
        return RuntimeContext(
            node_id=self.node_id, worker_id=getattr(self, "wid", None), task_id=task,
            actor_id=getattr(self, "actor_id", None), namespace=self.namespace,
            backend="local", job_id=self.session,
            task_name=getattr(local, "name", None) if task is not None else None,
            actor_name=spec.get("name") if spec is not None else None,
            assigned_resources={k: v for k, v in (demand or {}).items() if v},
            accelerator_ids={"GPU": assigned_gpu_ids()},
            actor_restarts=getattr(self, "actor_restarts", 0))


def _retry_flag(retry_exceptions):
    if retry_exceptions is None or retry_exceptions is False:
        return False
    if retry_exceptions is True:
        return True
    return ExceptionTypes(retry_exceptions)


class ExceptionTypes(tuple):
    """``retry_exceptions``' classes; they travel by value (a test's local class too)."""

    def __reduce__(self):
        import cloudpickle
        return (_exception_types, (cloudpickle.dumps(tuple(self)),))


def _exception_types(data: bytes) -> ExceptionTypes:
    import cloudpickle
    return ExceptionTypes(cloudpickle.loads(data))


def _pg_of(opts):
    pg = opts.get("placement_group")
    strategy = opts.get("scheduling_strategy")
    if pg is None and strategy is not None and hasattr(strategy, "placement_group"):
        pg = strategy.placement_group
        bundle = getattr(strategy, "placement_group_bundle_index", -1)
    else:
        bundle = opts.get("placement_group_bundle_index", -1)
    if pg is None or pg == "default":
        return None, -1
    return pg.id, (-1 if bundle is None else bundle)

