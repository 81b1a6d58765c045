"""Requests per second and latency per deployment, for shoal.state (the dashboard).

Every process that answers HTTP (the proxy, the replicas of ingress
deployments) counts its requests in a latency histogram (``_front.Metrics``);
the controller asks them for their counts about once a second and turns the
growth since the last ask into a rate. Counts are kept per process, so a
replica that restarts (its counts start from zero) or goes away neither
subtracts nor counts twice.
"""
from __future__ import annotations

import asyncio
import time

from shoal.serve import _front

BOUNDS = _front._BUCKETS


class Traffic:
    """The HTTP traffic of each application, summed over the processes answering it."""

    def __init__(self):
        self.seen: dict = {}     # peer path -> {app: its last histogram}
        self.total: dict = {}    # app -> histogram summed over every process ever
        self.last: dict = {}     # app -> (time, count) of the previous figures
        self.started = time.monotonic()   # an app's first rate counts from here

    def add(self, snaps: dict) -> None:
        """Take the histograms of {peer path: snapshot}; peers missing from ``snaps`` that
        answered before are forgotten (gone: their counts stay in the total)."""
        for path, snap in snaps.items():
            if snap is None:     # did not answer this time: keep what it said last
                continue
            old = self.seen.get(path, {})
            for app, h in snap["latency"].items():
                prev = old.get(app)
                if prev is None or prev[-1] > h[-1]:   # new process, or one that restarted
                    prev = [0] * len(h)
                acc = self.total.setdefault(app, [0] * len(h))
                for i, (now_, then) in enumerate(zip(h, prev)):
                    acc[i] += now_ - then
            self.seen[path] = {app: list(h) for app, h in snap["latency"].items()}
        for path in [p for p in self.seen if p not in snaps]:
            del self.seen[path]

    def figures(self, app: str, now: float) -> tuple[dict, dict]:
        """(metrics, histogram) of ``app``: requests/s since the previous call, the mean
        and quantiles of latency, and the cumulative histogram for Prometheus."""
        h = self.total.get(app) or [0] * (len(BOUNDS) + 3)
        count, total_s = h[-1], h[-2]
        t0, c0 = self.last.get(app, (self.started, 0))
        rate = (count - c0) / (now - t0) if now > t0 else 0.0
        self.last[app] = (now, count)
        metrics = {"requests_per_s": rate, "requests_total": count,
                   "latency_mean_ms": total_s / count * 1e3 if count else None,
                   "latency_p50_ms": quantile(h, 0.5), "latency_p99_ms": quantile(h, 0.99)}
        hist = {"bounds": list(BOUNDS), "counts": list(h[:len(BOUNDS) + 1]),
                "sum": total_s, "count": count}
        return metrics, hist


def quantile(h: list, q: float) -> float | None:
    """The ``q`` quantile of a histogram in ms, interpolated within its bucket (the last
    finite bound for the overflow bucket); None without requests."""
    count = h[-1]
    if not count:
        return None
    want, cum, lo = q * count, 0, 0.0
    for bound, n in zip(BOUNDS, h):
        if n and cum + n >= want:
            return (lo + (bound - lo) * (want - cum) / n) * 1e3
        cum += n
        lo = bound
    return BOUNDS[-1] * 1e3


def gather(loop, paths: list, secret: bytes, timeout: float = 3.0) -> dict:
    """{path: snapshot or None} of the peers at ``paths``, asked on serve's loop."""
    async def all_():
        got = await asyncio.gather(*[_front._gather_peers([p], secret) for p in paths],
                                   return_exceptions=True)
        return {p: (g[0] if isinstance(g, list) and g else None) for p, g in zip(paths, got)}
    if not paths:
        return {}
    return asyncio.run_coroutine_threadsafe(all_(), loop).result(timeout)
