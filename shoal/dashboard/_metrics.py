"""Prometheus metrics of the cluster and the libraries' runs, read at scrape time.

Nothing is counted on a hot path for them: a scrape reads ``shoal.state``'s
summary (the scheduler's counts) and the runs the libraries published.
"""
from __future__ import annotations

import re

from shoal.core import state as st

_registry = None
_NAME = re.compile(r"[^a-zA-Z0-9_]")


class _ClusterCollector:
    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        s = st.summary()
        g = GaugeMetricFamily("shoal_tasks", "Tasks now pending or running", labels=["state"])
        for k in ("PENDING", "RUNNING"):
            g.add_metric([k], s["tasks"].get(k, 0))
        yield g
        c = CounterMetricFamily("shoal_tasks_ended", "Tasks ended since the cluster started",
                                labels=["state"])
        for k in ("FINISHED", "FAILED"):
            if k in s["tasks"]:
                c.add_metric([k], s["tasks"][k])
        yield c
        g = GaugeMetricFamily("shoal_actors", "Actors by state", labels=["state"])
        for k, v in sorted(s["actors"].items()):
            g.add_metric([k], v)
        yield g
        g = GaugeMetricFamily("shoal_resources_total", "Resources of the cluster",
                              labels=["resource"])
        for k, v in sorted(s["resources_total"].items()):
            g.add_metric([k], v)
        yield g
        g = GaugeMetricFamily("shoal_resources_available", "Resources not reserved",
                              labels=["resource"])
        for k, v in sorted(s["resources_available"].items()):
            g.add_metric([k], v)
        yield g
        store = s.get("object_store")
        if store:
            for key, help_ in (("used_bytes", "Bytes in the object store's shared memory"),
                               ("capacity_bytes", "The object store's capacity"),
                               ("spilled_bytes", "Bytes spilled to disk now"),
                               ("objects", "Objects in the store")):
                yield GaugeMetricFamily(f"shoal_object_store_{key}", help_, value=store[key])
        if "workers" in s:
            yield GaugeMetricFamily("shoal_workers", "Worker processes alive", value=s["workers"])
        if s.get("cpu_percent") is not None:
            yield GaugeMetricFamily("shoal_node_cpu_percent", "CPU use of the node",
                                    value=s["cpu_percent"])
            yield GaugeMetricFamily("shoal_node_memory_used_bytes", "Memory in use on the node",
                                    value=s["memory_used_bytes"])
        g = GaugeMetricFamily("shoal_run_metric",
                              "The last value of each number a library's run reported "
                              "(training loss, samples/s, serving latency...)",
                              labels=["kind", "run", "metric"])
        r = GaugeMetricFamily("shoal_run_reports", "Reports a library's run made",
                              labels=["kind", "run", "status"])
        runs = st.list_runs(with_history=False)
        for run in runs:
            r.add_metric([run["kind"], run["name"], run["status"]], run["reports"])
            for k, v in run["last"].items():
                if k != "time" and v is not None:
                    g.add_metric([run["kind"], run["name"], _NAME.sub("_", k)], v)
        yield g
        yield r
        yield from _serve_families(runs)
        yield from _collective_families()


def _serve_families(runs):
    """Requests and the latency histogram of each deployment answering HTTP, as
    shoal.serve's controller summed them over the processes that answer it."""
    from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
    reqs = CounterMetricFamily("shoal_serve_requests", "HTTP requests a deployment answered",
                               labels=["deployment"])
    hist = HistogramMetricFamily("shoal_serve_request_latency_seconds",
                                 "Time from an HTTP request to its answer, per deployment",
                                 labels=["deployment"])
    for run in runs:
        h = run["info"].get("latency_histogram") if run["kind"] == "serve" else None
        if not h:
            continue
        cum, buckets = 0, []
        for bound, n in zip(h["bounds"] + ["+Inf"], h["counts"]):
            cum += n
            buckets.append((str(bound), cum))
        reqs.add_metric([run["name"]], h["count"])
        hist.add_metric([run["name"]], buckets, h["sum"])
    yield reqs
    yield hist


def _collective_families():
    """Calls, bytes and seconds of each collective op, per group and rank, as the
    groups formed while the dashboard runs published them."""
    import json

    from prometheus_client.core import CounterMetricFamily

    from shoal.collective.timeline import STATS_PREFIX
    from shoal.core import api
    labels = ["group", "rank", "op"]
    calls = CounterMetricFamily("shoal_collective_ops", "Collective ops run", labels=labels)
    nbytes = CounterMetricFamily("shoal_collective_bytes", "Bytes of the collective ops' "
                                 "tensors", labels=labels)
    secs = CounterMetricFamily("shoal_collective_seconds", "Seconds spent in collective ops "
                               "(divide by shoal_collective_ops for the mean latency)",
                               labels=labels)
    try:
        kv = api._runtime().kv
        keys = kv.keys(STATS_PREFIX)
    except Exception:  # noqa: BLE001 - no store reachable: no collective metrics
        keys = []
    for key in keys:
        group, _, rank = key[len(STATS_PREFIX):].rpartition("/")
        try:
            stats = json.loads(kv.get(key, timeout=1.0))
        except Exception:  # noqa: BLE001, S112 - a group destroyed meanwhile
            continue
        for op, (n, b, s) in stats.items():
            calls.add_metric([group, rank, op], n)
            nbytes.add_metric([group, rank, op], b)
            secs.add_metric([group, rank, op], s)
    yield calls
    yield nbytes
    yield secs


def metrics_text() -> tuple[bytes, str]:
    """The exposition text and its content type."""
    global _registry
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    if _registry is None:
        _registry = CollectorRegistry(auto_describe=False)
        _registry.register(_ClusterCollector())
    return generate_latest(_registry), CONTENT_TYPE_LATEST
