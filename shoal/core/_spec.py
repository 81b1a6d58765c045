"""What a submitted task or actor call carries, on the wire and in the scheduler."""
from __future__ import annotations

# Fields sent over the wire, in order.
_WIRE = ("seq", "fn_id", "name", "args", "deps", "returns", "demand", "pg_id", "bundle",
         "max_retries", "retry_exc", "actor_id", "method", "gen")


class TaskSpec:
    __slots__ = _WIRE + ("unresolved", "retries_left", "cancelled", "worker",
                         "task_retries_left", "done", "t_submit")

    def __init__(self, seq, fn_id, name, args, deps, returns, demand, pg_id=None, bundle=-1,
                 max_retries=0, retry_exc=False, actor_id=None, method=None, gen=0):
        self.seq = seq
        self.fn_id = fn_id
        self.name = name
        self.args = args          # serialized (args, kwargs), top-level refs replaced by markers
        self.deps = deps          # ids of the top-level ObjectRef arguments
        self.returns = returns    # ids of the return objects
        self.demand = demand
        self.pg_id = pg_id
        self.bundle = bundle
        self.max_retries = max_retries
        self.retry_exc = retry_exc
        self.actor_id = actor_id
        self.method = method
        self.gen = gen            # 0: plain returns, 1: streaming generator, 2: dynamic
        self.unresolved = 0
        self.retries_left = max_retries
        self.task_retries_left = 0
        self.cancelled = False
        self.worker = None
        self.done = False
        self.t_submit = 0.0       # wall-clock time the scheduler took it (for shoal.state)

    def wire(self) -> tuple:
        return tuple(getattr(self, f) for f in _WIRE)

    @classmethod
    def from_wire(cls, t: tuple) -> "TaskSpec":
        return cls(*t)


class ActorSpec:
    """How to create (and re-create) an actor."""

    __slots__ = ("actor_id", "cls_id", "cls_name", "args", "deps", "demand", "pg_id", "bundle",
                 "max_restarts", "max_task_retries", "max_concurrency", "is_async", "name",
                 "namespace", "methods", "handle_oid", "get_if_exists", "runtime_env")

    def __init__(self, **kw):
        for k in self.__slots__:
            setattr(self, k, kw.get(k))

    def wire(self) -> dict:
        return {k: getattr(self, k) for k in self.__slots__}
