"""What the local backend remembers for ``shoal.state``: finished tasks, dead workers.

Live tasks, actors, workers and objects are read from the scheduler's own
tables when asked; only what those tables forget is recorded here, as the
driver's scheduler sees it (no message from any worker): a task's end, in a
ring of the last ``SHOAL_TASK_EVENTS`` (default 10,000; 0 turns recording
off), and a worker's death. The listing methods are a mixin of
``LocalBackend`` and take its lock.
"""
from __future__ import annotations

import os
import time
from array import array
from time import time as _now

from shoal.core._serialization import IS_ERROR, NBYTES, PATH, deserialize

DEFAULT_TASK_EVENTS = 10_000
_NAN = float("nan")


def task_events_from_env():
    """The ring ``LocalBackend`` records into, or None when ``SHOAL_TASK_EVENTS=0``."""
    raw = os.environ.get("SHOAL_TASK_EVENTS", "")
    try:
        n = int(raw) if raw.strip() else DEFAULT_TASK_EVENTS
    except ValueError:
        raise ValueError(f"SHOAL_TASK_EVENTS must be a number of tasks to remember "
                         f"(0 turns recording off), got {raw!r}") from None
    return TaskEvents(n) if n > 0 else None


class TaskEvents:
    """The last ``maxlen`` finished tasks and counts of every task ever finished.

    A ring written in place: numbers into preallocated arrays, and references to
    objects the task's spec already shares (its function's name, its actor's and
    worker's ids, one tuple per distinct demand) into preallocated lists. A tuple
    per task left 20,000-30,000 objects with a full ring that the garbage collector
    kept tracking and walked in every full collection; this leaves none."""

    __slots__ = ("size", "count", "seq", "t0", "t1", "elapsed", "name", "actor", "wid",
                 "err", "demand", "finished", "failed", "_demands")

    def __init__(self, maxlen: int):
        self.size = maxlen
        self.count = 0                      # records ever written
        self.seq = array("q", bytes(8 * maxlen))
        self.t0 = array("d", bytes(8 * maxlen))      # submitted
        self.t1 = array("d", bytes(8 * maxlen))      # ended
        self.elapsed = array("d", bytes(8 * maxlen))
        self.name: list = [None] * maxlen
        self.actor: list = [None] * maxlen
        self.wid: list = [None] * maxlen
        self.err: list = [None] * maxlen
        self.demand: list = [None] * maxlen
        self.finished = 0
        self.failed = 0
        self._demands: dict = {}

    def record(self, spec, descs, wid, elapsed) -> None:
        err = None
        if descs and descs[0][IS_ERROR]:
            self.failed += 1
            err = _error_info(descs[0])
        else:
            self.finished += 1
        d = spec.demand
        demand = None
        if d:
            key = tuple(d.items())          # freed at once; the kept one is shared
            demand = self._demands.get(key)
            if demand is None:
                if len(self._demands) > 256:
                    self._demands.clear()
                demand = self._demands[key] = key
        i = self.count % self.size
        self.count += 1
        self.seq[i] = spec.seq
        self.t0[i] = spec.t_submit
        self.t1[i] = _now()
        self.elapsed[i] = _NAN if elapsed is None else elapsed
        self.name[i] = spec.name
        self.actor[i] = spec.actor_id
        self.wid[i] = wid
        self.err[i] = err
        self.demand[i] = demand

    def __len__(self) -> int:
        return min(self.count, self.size)

    def last(self, k: int | None = None) -> list:
        """The newest ``k`` (all: None) records, oldest first, as tuples (seq, name,
        actor_id, worker id, submitted, ended, elapsed, error, demand)."""
        n = len(self)
        k = n if k is None else min(k, n)
        rows = []
        for j in range(self.count - k, self.count):
            i = j % self.size
            el = self.elapsed[i]
            rows.append((self.seq[i], self.name[i], self.actor[i], self.wid[i], self.t0[i],
                         self.t1[i], None if el != el else el, self.err[i], self.demand[i]))
        return rows


def _error_info(desc) -> tuple:
    """(type name, message, traceback) of a failed task's error; read now, as its
    object may be freed before anyone lists it."""
    try:
        e = deserialize(desc)
    except Exception as x:  # noqa: BLE001 - an error we cannot rebuild here still counts
        return ("Error", f"(the error could not be read in the driver: {x!r})", "")
    cause = getattr(e, "cause", None)
    kind = type(cause).__name__ if cause is not None else type(e).__name__
    tb = getattr(e, "remote_traceback", "") or ""
    msg = getattr(e, "cause_repr", None) or str(e)
    return kind, msg, tb


def _ms(t):
    return None if not t else int(t * 1000)


def _hex(v):
    return None if v is None else f"{v:016x}"


class StateListing:
    """``shoal.state``'s listings of the local backend (a mixin of LocalBackend)."""

    def state_tasks(self, newest: int | None = None) -> list[dict]:
        """Rows of the finished tasks, then the live ones (oldest first): the
        ``newest`` last of them, or all (None). Rows are built only for those."""
        with self.lock:
            live = []
            seen = set()
            for spec in reversed(self.producing.values()):   # newest first
                if spec.seq in seen or spec.done:
                    continue
                seen.add(spec.seq)
                if spec.worker is not None:
                    state, wid = "RUNNING", spec.worker.wid
                elif spec.unresolved:
                    state, wid = "PENDING_ARGS_AVAIL", None
                else:
                    state, wid = "PENDING_NODE_ASSIGNMENT", None
                live.append((spec.seq, spec.name, spec.actor_id, wid, state, spec.t_submit,
                             spec.demand))
                if newest is not None and len(live) >= newest:
                    break
            live.reverse()
            ev = self.task_events
            k = None if newest is None else newest - len(live)
            done = [] if ev is None or k == 0 else ev.last(k)
        out = [self._task_row(seq, name, actor_id, wid, "FAILED" if err else "FINISHED", t0, t1,
                              elapsed, err, demand)
               for seq, name, actor_id, wid, t0, t1, elapsed, err, demand in done]
        out += [self._task_row(seq, name, actor_id, wid, state, t0, None, None, None, demand)
                for seq, name, actor_id, wid, state, t0, demand in live]
        return out

    def _task_row(self, seq, name, actor_id, wid, state, t0, t1, elapsed, err, demand) -> dict:
        return {
            "task_id": _hex(seq), "name": name, "state": state,
            "type": "ACTOR_TASK" if actor_id is not None else "NORMAL_TASK",
            "actor_id": _hex(actor_id), "worker_id": None if wid is None else str(wid),
            "node_id": self.node_id, "required_resources": dict(demand or ()),
            "creation_time_ms": _ms(t0),
            "start_time_ms": None if t1 is None else _ms(t1 - (elapsed or 0.0)),
            "end_time_ms": _ms(t1), "duration_s": elapsed,
            "error_type": err[0] if err else None, "error_message": err[1] if err else None,
            "traceback": err[2] if err else None,
        }

    def state_actors(self) -> list[dict]:
        with self.lock:
            rows = []
            for a in self.actors.values():
                w = a.worker
                rows.append({
                    "actor_id": _hex(a.spec.actor_id), "class_name": a.spec.cls_name,
                    "name": a.spec.name or "", "namespace": a.spec.namespace,
                    "state": {"pending": "PENDING_CREATION", "alive": "ALIVE",
                              "restarting": "RESTARTING", "dead": "DEAD"}[a.state],
                    "pid": w.proc.pid if w is not None else a.pid,
                    "worker_id": str(w.wid) if w is not None else a.last_wid,
                    "node_id": self.node_id, "num_restarts": a.restarts,
                    "required_resources": dict(a.spec.demand),
                    "pending_calls": len(a.queue), "running_calls": len(a.inflight),
                    "start_time_ms": _ms(a.created), "end_time_ms": _ms(a.ended),
                    "death_cause": a.cause if a.state == "dead" else None,
                    "traceback": a.error_tb or None,
                })
            return rows

    def state_workers(self) -> list[dict]:
        with self.lock:
            rows = [self._worker_row(w, w.state.upper()) for w in self.workers.values()]
            rows += [dict(r) for r in self.dead_workers]
            return rows

    def _worker_row(self, w, state) -> dict:
        a = w.actor
        return {"worker_id": str(w.wid), "pid": w.proc.pid, "state": state,
                "node_id": self.node_id,
                "worker_type": "ACTOR" if a is not None else "TASK",
                "actor_id": _hex(a.spec.actor_id) if a is not None else None,
                "actor_class": a.spec.cls_name if a is not None else None,
                "actor_name": (a.spec.name or "") if a is not None else None,
                "running_tasks": len(w.inflight),
                "start_time_ms": _ms(time.time() - (time.monotonic() - w.started)),
                "exit_code": w.proc.poll() if state == "DEAD" else None,
                "stdout_file": self.log_path(w.wid, "out"),
                "stderr_file": self.log_path(w.wid, "err")}

    def state_objects(self) -> list[dict]:
        with self.lock:
            t = self.objects
            rows = []
            for oid, o in t.objs.items():
                d = o.desc
                path = d[PATH] if d is not None else None
                rows.append({
                    "object_id": _hex(oid),
                    "state": "PENDING" if d is None else
                             ("SPILLED" if path and path.startswith(t.spill_dir) else
                              ("IN_SHARED_MEMORY" if path else "INLINE")),
                    "size_bytes": (d[NBYTES] if path else len(d[0] or b"")) if d else None,
                    "reference_count": len(o.holders), "pinned": o.pins,
                    "driver_holds": 0 in o.holders,
                })
            return rows

    def state_nodes(self) -> list[dict]:
        import psutil
        vm = psutil.virtual_memory()
        with self.lock:
            total = {k: max(0.0, v) for k, v in self.node.total.items()}
            avail = {k: max(0.0, v) for k, v in self.node.avail.items()}
            t = self.objects
            store = {"used_bytes": t.used, "capacity_bytes": t.capacity,
                     "spilled_bytes": t.spilled_bytes, "spill_count": t.spill_count,
                     "objects": len(t.objs)}
        return [{"node_id": self.node_id, "state": "ALIVE", "node_ip": "127.0.0.1",
                 "is_head_node": True, "resources_total": total, "resources_available": avail,
                 "cpu_percent": psutil.cpu_percent(interval=None),
                 "load_avg": list(os.getloadavg()),
                 "memory_total_bytes": vm.total, "memory_used_bytes": vm.total - vm.available,
                 "object_store": store}]

    def state_counts(self) -> dict:
        """Tasks and actors by state, without building rows or visiting each live task in
        Python: summaries, metrics and the snapshot run every second or two, under the
        scheduler's lock, while tens of thousands of calls may be in flight (a Python
        pass over 25,000 of them held the lock and the GIL 5.4 ms each time). A
        dispatched task is in its worker's ``inflight`` table until it ends; the live
        ones are the distinct specs still producing a return."""
        with self.lock:
            running = sum(len(w.inflight) for w in self.workers.values())
            live = len(set(map(id, self.producing.values())))
            tasks = {"PENDING": max(0, live - running), "RUNNING": running}
            ev = self.task_events
            tasks["FINISHED"] = ev.finished if ev is not None else 0
            tasks["FAILED"] = ev.failed if ev is not None else 0
            actors: dict = {}
            for a in self.actors.values():
                actors[a.state.upper()] = actors.get(a.state.upper(), 0) + 1
            return {"tasks": tasks, "actors": actors, "workers": len(self.workers)}

    # ------------------------------------------------------------ logs
    def log_path(self, wid, out: str) -> str:
        return os.path.join(self.dir, "logs", f"worker-{wid}.{out}")

    def _note_worker_death(self, w) -> None:
        row = self._worker_row(w, "DEAD")
        self.dead_workers.append(row)
