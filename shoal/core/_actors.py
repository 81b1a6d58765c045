"""The driver's view of one actor: its process, call queue, restarts and death."""
from __future__ import annotations

import time
from collections import deque

from shoal.core._serialization import deserialize
from shoal.exceptions import ActorDiedError


class ActorState:
    """pending -> alive -> (restarting -> alive)* -> dead."""

    def __init__(self, spec):
        self.spec = spec
        self.state = "pending"
        self.worker = None
        self.queue: deque = deque()      # calls not yet sent, in submission order
        self.inflight: dict = {}         # seq -> spec sent to the process
        self.restarts = 0
        self.lease = None
        self.cause = ""
        self.handles_dropped = False
        self.killed = False
        self.created = time.time()    # for shoal.state
        self.ended = None
        self.error_tb = ""            # the constructor's traceback, when it raised
        self.pid = None               # of its last process
        self.last_wid = None

    # ---------------------------------------------------------------- placement
    def try_place(self, b) -> None:
        """Reserve the actor's resources and start its process."""
        if self.state not in ("pending", "restarting") or self.worker is not None:
            if self in b.pending_actors:
                b.pending_actors.remove(self)
            return
        pool = b._pool_for(self.spec.demand, self.spec.pg_id, self.spec.bundle)
        if pool is None:
            if self not in b.pending_actors:
                b.pending_actors.append(self)
            return
        if self in b.pending_actors:
            b.pending_actors.remove(self)
        pool.acquire(self.spec.demand)
        self.lease = (pool, self.spec.demand)
        adopt = getattr(b, "adopt_idle_worker", None)
        self.worker = (adopt(self) if adopt is not None else None) or b._spawn_worker(actor=self)
        self.pid, self.last_wid = self.worker.proc.pid, str(self.worker.wid)

    def on_ready(self, b, w, err_desc) -> None:
        if w is not self.worker:
            return
        if err_desc is not None:
            err = deserialize(err_desc)
            self.error_tb = getattr(err, "remote_traceback", "") or ""
            self._die(b, f"its constructor raised: {err}")
            return
        self.state = "alive"
        w.state = "busy"
        self.pump(b)

    # ---------------------------------------------------------------- calls
    def submit(self, b, spec) -> None:
        if self.state == "dead":
            b._fail(spec, self._died_error(spec))
            return
        spec.task_retries_left = self.spec.max_task_retries or 0
        self.queue.append(spec)
        self.pump(b)

    def pump(self, b) -> None:
        """Send queued calls in order; a call waiting for its arguments holds back the rest."""
        if self.state != "alive" or self.worker is None or self.worker.conn is None:
            return
        while self.queue:
            spec = self.queue[0]
            if spec.done:
                self.queue.popleft()
                continue
            if spec.unresolved:
                break
            self.queue.popleft()
            self.inflight[spec.seq] = spec
            b._dispatch(self.worker, spec)

    def retry(self, b, spec) -> None:
        self.inflight.pop(spec.seq, None)
        self.queue.appendleft(spec)
        self.pump(b)

    def remove(self, spec) -> None:
        if spec in self.queue:
            self.queue.remove(spec)

    def after_call(self, b) -> None:
        if self.handles_dropped and not self.queue and not self.worker.inflight:
            self.kill(b, no_restart=True, graceful=True)

    def handles_gone(self, b) -> None:
        """Every handle is gone: finish what was submitted, then exit."""
        self.handles_dropped = True
        if self.worker is None or (not self.queue and not self.worker.inflight):
            self.kill(b, no_restart=True, graceful=True)

    # ---------------------------------------------------------------- death
    def kill(self, b, no_restart: bool = True, graceful: bool = False) -> None:
        if self.state == "dead":
            return
        if no_restart:
            self.killed = True
            self.cause = "it was killed with shoal.kill()" if not graceful else \
                "every handle to it went out of scope"
        w = self.worker
        if w is not None and w.state != "dead":
            if graceful:
                b._send(w, ("exit",))
            else:
                try:
                    w.proc.kill()
                except OSError:
                    pass
        # A kill that allows restarts leaves the death to on_death (which restarts).
        if no_restart:
            self._die(b, self.cause)

    def on_death(self, b, w, inflight) -> None:
        if w is not self.worker:
            return
        self.worker = None
        code = w.proc.poll()
        if self.state == "dead":
            for spec in inflight:
                b._fail(spec, self._died_error(spec))
            return
        self._release(b)
        limit = self.spec.max_restarts or 0
        if not self.killed and (limit < 0 or self.restarts < limit):
            self.restarts += 1
            self.state = "restarting"
            requeue = []
            for spec in inflight:
                self.inflight.pop(spec.seq, None)
                if spec.task_retries_left != 0:
                    spec.task_retries_left -= 1
                    requeue.append(spec)
                else:
                    b._fail(spec, ActorDiedError(
                        f"actor {self.spec.cls_name} died (exit code {code}) while running "
                        f"{spec.name}; it is restarting. Set max_task_retries to retry calls "
                        "across restarts."))
            self.queue.extendleft(reversed(requeue))
            self.try_place(b)
            return
        self._die(b, f"its process died (exit code {code})"
                  + (f" and the {limit} restarts are spent" if limit else ""),
                  inflight=inflight)

    def _release(self, b) -> None:
        if self.lease is not None:
            self.lease[0].release(self.lease[1])
            self.lease = None

    def _die(self, b, cause: str, inflight=()) -> None:
        self.state = "dead"
        self.cause = cause
        self.ended = time.time()
        self._release(b)
        pending = list(inflight) + list(self.inflight.values()) + list(self.queue)
        self.inflight.clear()
        self.queue.clear()
        for spec in pending:
            if not spec.done:
                b._fail(spec, self._died_error(spec))
        if self.spec.name:
            key = (self.spec.namespace or b.namespace, self.spec.name)
            if b.named.get(key) == self.spec.actor_id:
                del b.named[key]
                b.objects.unpin(self.spec.handle_oid)
        for d in self.spec.deps:
            b.objects.unpin(d)
        self.spec.deps = ()
        if self in b.pending_actors:
            b.pending_actors.remove(self)

    def _died_error(self, spec) -> ActorDiedError:
        return ActorDiedError(f"actor {self.spec.cls_name} is dead ({self.cause}); "
                              f"call {spec.name} was not run")
