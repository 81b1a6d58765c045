"""What the cluster is doing: tasks, actors, objects, nodes, workers, runs.

    import shoal
    shoal.state.list_tasks(filters=[("state", "=", "FAILED")])
    shoal.state.summary()

Backend-neutral: on the local backend the driver's scheduler answers (it
records each task's end in a bounded ring, see ``SHOAL_TASK_EVENTS``); on
the Ray backend the calls go to ``ray.util.state``. Rows are plain dicts
with Ray's field names (``task_id``, ``state``, ``start_time_ms``...).
Libraries (shoal.train, shoal.tune, shoal.serve) publish their runs with
``report_run`` so that ``summary``, the dashboard and the metrics show them.
"""
from __future__ import annotations

import json
import math
import os
import threading
import time
from collections import deque

from shoal.core import api

_OPS = {"=": lambda a, b: a == b, "!=": lambda a, b: a != b}
_RUN_HISTORY = 2000     # reports kept per run
_MAX_RUNS = 1000        # runs kept (a big tuning sweep forgets its oldest ended trials)


def _backend():
    b = api._backend
    if b is None:
        raise RuntimeError("shoal.state needs a running cluster in this process; call "
                           "shoal.init() first (from another process use `shoal status`)")
    return b


def _select(rows: list, filters, limit: int | None) -> list:
    for f in filters or ():
        if len(f) != 3 or f[1] not in _OPS:
            raise ValueError(f"a filter is (key, op, value) with op '=' or '!=', got {f!r}")
        key, op, value = f
        test = _OPS[op]
        rows = [r for r in rows if test(_str(r.get(key)), _str(value))]
    return rows if limit is None else (rows[-limit:] if limit > 0 else [])


def _str(v):
    return v if isinstance(v, str) or v is None else str(v)


def _ray_list(kind: str, filters, limit):
    from ray.util import state as rs
    fn = getattr(rs, f"list_{kind}")
    try:
        rows = fn(filters=list(filters) if filters else None, limit=limit or 10_000,
                  detail=True, raise_on_missing_output=False)
    except ConnectionError as e:
        raise RuntimeError(f"shoal.state.list_{kind} on Ray asks Ray's state API, which its "
                           "dashboard serves and this cluster runs without; start it with "
                           "shoal.init(backend='ray', include_dashboard=True) (or ray start "
                           f"--include-dashboard=true): {e}") from e
    out = []
    for r in rows:
        d = r if isinstance(r, dict) else dict(r.__dict__)
        if kind == "objects":
            d.setdefault("size_bytes", d.get("object_size"))
        if kind == "actors":
            d.setdefault("namespace", d.get("ray_namespace"))
        if kind == "tasks" and d.get("error_message"):
            d.setdefault("traceback", d.get("error_message"))
        out.append(d)
    return out


def _list(kind: str, filters, limit):
    b = _backend()
    if b.name == "ray":
        return _select(_ray_list(kind, filters, limit), None, limit)
    if kind == "tasks" and not filters:   # build rows only for the tasks asked for
        return _select(b.state_tasks(limit), None, limit)
    return _select(getattr(b, f"state_{kind}")(), filters, limit)


def list_tasks(filters: list | None = None, limit: int | None = 1000) -> list[dict]:
    """Tasks and actor calls: the recently finished, then the live ones, oldest first.

    Args:
        filters: ``[(key, "=" | "!=", value), ...]`` on the row's fields, e.g.
            ``[("state", "=", "FAILED")]``. States: ``PENDING_ARGS_AVAIL``,
            ``PENDING_NODE_ASSIGNMENT``, ``RUNNING``, ``FINISHED``, ``FAILED``.
        limit: at most this many rows (the newest); None for all.
    Returns dicts with ``task_id, name, state, type, actor_id, worker_id,
    node_id, required_resources, creation_time_ms, start_time_ms,
    end_time_ms, duration_s, error_type, error_message, traceback``.
    """
    return _list("tasks", filters, limit)


def list_actors(filters: list | None = None, limit: int | None = 1000) -> list[dict]:
    """Actors, alive and dead: ``actor_id, class_name, name, namespace, state,
    pid, worker_id, num_restarts, death_cause, traceback`` (the constructor's,
    when it raised), ``start_time_ms, end_time_ms``. Filters as ``list_tasks``."""
    return _list("actors", filters, limit)


def list_objects(filters: list | None = None, limit: int | None = 1000) -> list[dict]:
    """Objects in the store: ``object_id, state, size_bytes, reference_count``..."""
    return _list("objects", filters, limit)


def list_nodes(filters: list | None = None, limit: int | None = 1000) -> list[dict]:
    """Nodes: ``node_id, state, resources_total, resources_available``, and on the
    local backend CPU, memory and object store use."""
    return _list("nodes", filters, limit)


def list_workers(filters: list | None = None, limit: int | None = 1000) -> list[dict]:
    """Worker processes, live and recently dead: ``worker_id, pid, state,
    worker_type, actor_class, actor_name``, and the files their stdout and
    stderr are kept in (``stdout_file``, ``stderr_file``)."""
    return _list("workers", filters, limit)


def summary() -> dict:
    """The cluster at a glance: nodes, resources total and available, the object
    store, tasks and actors by state, and the libraries' runs."""
    b = _backend()
    if b.name == "ray":
        import ray
        tasks: dict = {}
        for t in _ray_list("tasks", None, 10_000):
            tasks[t["state"]] = tasks.get(t["state"], 0) + 1
        actors: dict = {}
        for a in _ray_list("actors", None, 10_000):
            actors[a["state"]] = actors.get(a["state"], 0) + 1
        return {"backend": "ray", "nodes": len(ray.nodes()),
                "resources_total": ray.cluster_resources(),
                "resources_available": ray.available_resources(),
                "tasks": tasks, "actors": actors, "runs": list_runs(with_history=False)}
    node = b.state_nodes()[0]
    counts = b.state_counts()
    return {"backend": "local", "session": b.session, "session_dir": b.dir,
            "uptime_s": time.time() - b.started, "nodes": 1,
            "resources_total": node["resources_total"],
            "resources_available": node["resources_available"],
            "cpu_percent": node["cpu_percent"], "load_avg": node["load_avg"],
            "memory_total_bytes": node["memory_total_bytes"],
            "memory_used_bytes": node["memory_used_bytes"],
            "object_store": node["object_store"], "tasks": counts["tasks"],
            "actors": counts["actors"], "workers": counts["workers"],
            "runs": list_runs(with_history=False)}


# ------------------------------------------------------------------ timelines
_TASKS_PID, _QUEUE_PID = 1_000_000, 1_000_001   # apart from collective ranks' pids (0..n)


def timeline(path: str | None = None, since: float | None = None,
             collective: str | None = None) -> list[dict]:
    """The finished tasks and actor calls as a Chrome trace (Perfetto opens it).

    Args:
        path: write the JSON here (open it in https://ui.perfetto.dev or
            chrome://tracing); None only returns the events.
        since: only tasks that ended after this ``time.time()``.
        collective: the ``SHOAL_TIMELINE`` prefix a job's collectives wrote
            their per-rank timelines under; their events join the tasks' (same
            clock), one process row per rank.
    Returns the trace events: one complete event (``"ph": "X"``) per task on
    the row of the worker that ran it, and its wait in the queue.
    """
    rows = list_tasks(limit=None)
    events = [{"name": "process_name", "ph": "M", "pid": _TASKS_PID,
               "args": {"name": "shoal tasks"}},
              {"name": "process_name", "ph": "M", "pid": _QUEUE_PID,
               "args": {"name": "shoal scheduler queue"}}]
    named = set()
    for r in rows:
        if r.get("end_time_ms") is None or r.get("start_time_ms") is None:
            continue
        if since is not None and r["end_time_ms"] < int(since * 1000):
            continue
        wid = r.get("worker_id")
        tid = int(wid) if wid is not None and str(wid).isdigit() else 0
        if tid not in named:
            named.add(tid)
            events.append({"name": "thread_name", "ph": "M", "pid": _TASKS_PID, "tid": tid,
                           "args": {"name": f"worker {wid}" if wid else "not run"}})
        start, end = r["start_time_ms"], r["end_time_ms"]
        args = {"task_id": r["task_id"], "state": r["state"]}
        if r.get("error_type"):
            args["error"] = f"{r['error_type']}: {r.get('error_message')}"
        events.append({"name": r["name"], "cat": r.get("type", "task").lower(), "ph": "X",
                       "ts": start * 1000, "dur": max(1, (end - start) * 1000),
                       "pid": _TASKS_PID, "tid": tid, "args": args})
        created = r.get("creation_time_ms")
        if created and created < start:
            events.append({"name": r["name"], "cat": "queue", "ph": "X",
                           "ts": created * 1000, "dur": (start - created) * 1000,
                           "pid": _QUEUE_PID, "tid": tid, "args": args})
    if collective:
        import glob
        for f in sorted(glob.glob(f"{collective}.*.rank*.json")):
            with open(f) as fh:
                events.extend(json.load(fh))
    if path is not None:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump({"traceEvents": events, "displayTimeUnit": "ms"}, f)
        os.replace(tmp, path)
    return events


# ------------------------------------------------------------------ libraries' runs
_runs: dict = {}
_ended: dict = {}      # keys of the ended runs, least recently updated first (an ordered set)
_runs_lock = threading.Lock()


class _Run:
    __slots__ = ("kind", "name", "info", "history", "status", "started", "updated")

    def __init__(self, kind, name):
        self.kind, self.name = kind, name
        self.info: dict = {}
        self.history: deque = deque(maxlen=_RUN_HISTORY)
        self.status = "RUNNING"
        self.started = self.updated = time.time()


def report_run(kind: str, name: str, metrics: dict | None = None, *, status: str | None = None,
               **info) -> None:
    """Publish a library's run (a training run, a tuning trial, a deployment).

    Called in the driver by shoal.train, shoal.tune and shoal.serve; user code
    may call it too. ``metrics`` (numbers) are appended to the run's history
    with the time; ``info`` (checkpoint path, config...) replaces what was
    there; ``status`` (``RUNNING``, ``FINISHED``, ``FAILED``...) is the run's.
    """
    if not isinstance(kind, str) or not isinstance(name, str):
        raise TypeError(f"report_run(kind, name) takes two strings, got {kind!r}, {name!r}")
    now = time.time()
    with _runs_lock:
        key = (kind, name)
        run = _runs.get(key)
        if run is None:
            if len(_runs) >= _MAX_RUNS:   # bounded: the oldest ended run makes room
                if _ended:      # O(1): a sweep of thousands of trials stays linear
                    old = next(iter(_ended))
                    del _ended[old]
                else:
                    old = min(_runs, key=lambda k: _runs[k].updated)
                del _runs[old]
            run = _runs[key] = _Run(kind, name)
        if metrics:
            # numbers only, NaN and infinities as gaps: the history is served as JSON
            nums = {str(k): (float(v) if math.isfinite(v) else None) for k, v in metrics.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)}
            run.history.append({"time": now, **nums})
        run.info.update({k: _plain(v) for k, v in info.items()})
        if status is not None:
            run.status = status
        run.updated = now
        _ended.pop(key, None)
        if run.status != "RUNNING":
            _ended[key] = None


def _plain(v):
    """``v`` as JSON can hold it: containers of plain values kept, the rest as text."""
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return repr(v)


def _clear_runs() -> None:
    with _runs_lock:
        _runs.clear()
        _ended.clear()


def list_runs(kind: str | None = None, with_history: bool = True) -> list[dict]:
    """The runs published with ``report_run`` in this process (``kind``: only those)."""
    with _runs_lock:
        runs = [r for r in _runs.values() if kind is None or r.kind == kind]
        return [{"kind": r.kind, "name": r.name, "status": r.status, "info": dict(r.info),
                 "started": r.started, "updated": r.updated, "reports": len(r.history),
                 "last": dict(r.history[-1]) if r.history else {},
                 **({"history": list(r.history)} if with_history else {})} for r in runs]


# ------------------------------------------------------------------ the session's snapshot
class _Snapshots:
    """Rewrites the session directory's ``state.json`` (mode 0600) every ``period`` s, so
    that ``shoal status`` shows a driver's state without its dashboard; a daemon thread
    of the driver. Failed tasks are listed again only when their count changed."""

    def __init__(self, backend, period: float):
        self.backend, self.period = backend, period
        self.stop_event = threading.Event()
        self.failed_seen, self.failed = -1, []
        self.thread = threading.Thread(target=self._loop, daemon=True, name="shoal-state")
        self.thread.start()

    def snapshot(self) -> dict:
        s = summary()
        if s["tasks"].get("FAILED", 0) != self.failed_seen:
            self.failed_seen = s["tasks"].get("FAILED", 0)
            self.failed = list_tasks(filters=[("state", "=", "FAILED")], limit=5)
        return {"time": time.time(), "summary": s, "actors": list_actors(limit=50),
                "failed_tasks": self.failed}

    def write(self) -> None:
        from shoal.core.sessions import STATE_FILE, write_private_json
        write_private_json(os.path.join(self.backend.dir, STATE_FILE), self.snapshot())

    def _loop(self) -> None:
        while not self.stop_event.wait(self.period):
            if api._backend is not self.backend:
                return
            try:
                self.write()
            except Exception:  # noqa: BLE001, S112 - a snapshot missed; the next one comes
                continue

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(5)


def _start_snapshots(backend):
    """The snapshot writer of a local-backend driver, or None (``SHOAL_STATE_SNAPSHOT_S=0``
    or the Ray backend, whose own tools show its state)."""
    raw = os.environ.get("SHOAL_STATE_SNAPSHOT_S", "")
    try:
        period = float(raw) if raw.strip() else 2.0
    except ValueError:
        raise ValueError(f"SHOAL_STATE_SNAPSHOT_S must be seconds between the snapshots "
                         f"`shoal status` reads (0 turns them off), got {raw!r}") from None
    if period <= 0 or backend.name != "local":
        return None
    snaps = _Snapshots(backend, period)
    try:
        snaps.write()   # `shoal status` has something from the start
    except Exception:  # noqa: BLE001 - the loop tries again
        pass
    return snaps


__all__ = ["list_actors", "list_nodes", "list_objects", "list_runs", "list_tasks",
           "list_workers", "report_run", "summary", "timeline"]
