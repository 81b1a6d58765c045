"""Per-rank Chrome-trace timeline of collectives, like Horovod's timeline.

Each op is a complete event ("X") on the rank's row, and its phases
(negotiation, copy_in, reduce, wait, copy_out) are events nested inside it,
so chrome://tracing or Perfetto shows where each op's time went. The file is
a JSON array written on ``flush()`` and at ``destroy()``.
"""
from __future__ import annotations

import json
import os
import threading
import time
from contextlib import contextmanager


class Timeline:
    """Records op and phase events; a disabled timeline (``path=None``) costs nothing."""

    def __init__(self, path: str | None, rank: int):
        self.path, self.rank = path, rank
        self._events: list[dict] = []
        self._lock = threading.Lock()
        self._t0 = time.perf_counter()
        self._epoch_us = time.time() * 1e6

    @classmethod
    def for_rank(cls, prefix: str | None, name: str, rank: int) -> "Timeline":
        if not prefix:
            return _NULL
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
        return cls(f"{prefix}.{safe}.rank{rank}.json", rank)

    def _us(self, t: float) -> float:
        return self._epoch_us + (t - self._t0) * 1e6

    def phase(self, name: str, t0: float, tid: str = "phases") -> None:
        t1 = time.perf_counter()
        with self._lock:
            self._events.append({"name": name, "ph": "X", "ts": self._us(t0), "dur": (t1 - t0) * 1e6,
                                 "pid": self.rank, "tid": tid})

    def span(self, name: str, t0: float, t1: float, tid: str = "ops", args: dict | None = None) -> None:
        """Record an event from ``t0`` to ``t1`` (``time.perf_counter()`` values) on row ``tid``."""
        ev = {"name": name, "ph": "X", "ts": self._us(t0), "dur": (t1 - t0) * 1e6,
              "pid": self.rank, "tid": tid}
        if args:
            ev["args"] = args
        with self._lock:
            self._events.append(ev)

    @contextmanager
    def op(self, name: str, nbytes: int):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            t1 = time.perf_counter()
            with self._lock:
                self._events.append({"name": name, "ph": "X", "ts": self._us(t0),
                                     "dur": (t1 - t0) * 1e6, "pid": self.rank, "tid": "ops",
                                     "args": {"bytes": nbytes}})

    @property
    def enabled(self) -> bool:
        return True

    def flush(self) -> None:
        with self._lock:
            events = list(self._events)
        meta = [{"name": "process_name", "ph": "M", "pid": self.rank, "args": {"name": f"rank {self.rank}"}}]
        tmp = f"{self.path}.tmp"
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(tmp, "w") as f:
            json.dump(meta + events, f)
        os.replace(tmp, self.path)

    def close(self) -> None:
        self.flush()


class _NullTimeline(Timeline):
    def __init__(self):
        super().__init__(None, -1)

    @contextmanager
    def op(self, name, nbytes):
        yield

    @property
    def enabled(self) -> bool:
        return False

    def phase(self, name, t0, tid="phases") -> None:
        pass

    def span(self, name, t0, t1, tid="ops", args=None) -> None:
        pass

    def flush(self) -> None:
        pass


_NULL = _NullTimeline()


# ------------------------------------------------------------------ metrics for the dashboard
# While a dashboard serves metrics it sets STATS_FLAG in the cluster's key-value
# store; groups formed then count each op (calls, bytes, seconds) and publish the
# counts under STATS_PREFIX/<group>/<rank> every few seconds and at destroy.
STATS_FLAG = "shoal/dashboard/collective-metrics"
STATS_PREFIX = "shoal/metrics/collective/"
_PUBLISH_S = 5.0


class OpStats:
    """A timeline that also counts each op of one rank and publishes the counts."""

    def __init__(self, inner: Timeline, store, key: str):
        self.inner, self.store, self.key = inner, store, key
        self.stats: dict = {}          # op -> [calls, bytes, seconds]
        self._lock = threading.Lock()
        self._last = time.monotonic()

    @property
    def enabled(self) -> bool:
        return self.inner.enabled

    def phase(self, name, t0, tid="phases") -> None:
        self.inner.phase(name, t0, tid)

    def span(self, name, t0, t1, tid="ops", args=None) -> None:
        self.inner.span(name, t0, t1, tid, args)

    @contextmanager
    def op(self, name: str, nbytes: int):
        t0 = time.perf_counter()
        try:
            with self.inner.op(name, nbytes):
                yield
        finally:
            dt = time.perf_counter() - t0
            with self._lock:
                s = self.stats.get(name)
                if s is None:
                    s = self.stats[name] = [0, 0, 0.0]
                s[0] += 1
                s[1] += nbytes
                s[2] += dt
                due = time.monotonic() - self._last > _PUBLISH_S
            if due:
                self.publish()

    def publish(self) -> None:
        with self._lock:
            self._last = time.monotonic()
            data = json.dumps(self.stats)
        try:
            self.store.set(self.key, data)
        except Exception:  # noqa: BLE001, S110 - metrics are best effort; the op succeeded
            pass

    def flush(self) -> None:
        self.inner.flush()

    def close(self) -> None:
        self.publish()
        self.inner.close()


def with_op_stats(timeline: Timeline, store, name: str, rank: int):
    """``timeline``, counting ops for the dashboard's metrics if a dashboard asked."""
    try:
        if not store.check([STATS_FLAG]):
            return timeline
    except Exception:  # noqa: BLE001 - a store without the flag (or a foreign one): no metrics
        return timeline
    return OpStats(timeline, store, f"{STATS_PREFIX}{name}/{rank}")
