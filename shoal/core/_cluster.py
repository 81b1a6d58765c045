"""Actors, resources and placement groups, as the driver keeps them.

A mixin of ``LocalBackend``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from shoal.core._actors import ActorState
from shoal.core._resources import PlacementGroupState
from shoal.core._serialization import serialize
from shoal.core._spec import ActorSpec
from shoal.exceptions import InfeasibleResourceError

if TYPE_CHECKING:
    from shoal.core._local import WorkerProc


class ClusterState:
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
        waiting = {d for d in a.spec.deps if d in objs and objs[d].desc is None}
        if waiting:
            # A constructor argument is a task still running: construct once it is ready
            # (as Ray does; its error, if it fails, becomes the constructor's). The
            # arguments are pinned by the actor, so they stay until then.
            left = [len(waiting)]

            def ready(oid, w=w, a=a):
                left[0] -= 1
                if left[0] == 0 and a.worker is w and w.conn is not None \
                        and w.proc.poll() is None:
                    self._init_actor_worker(w)
            for d in waiting:
                objs[d].waiters.append(ready)
            return
        deps = [objs[d].desc if d in objs else None for d in a.spec.deps]
        self._send(w, ("actor_init", a.spec.wire(), self.functions[a.spec.cls_id],
                       deps, a.restarts))

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
            if which == "total":
                return {k: max(0.0, v) for k, v in self.node.total.items()}
            # As Ray: a resource all taken is absent from what is available.
            return {k: v for k, v in self.node.avail.items() if v > 1e-9}

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
