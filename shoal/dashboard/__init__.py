"""shoal's web dashboard and Prometheus metrics (``pip install 'shoal[dashboard]'``).

    shoal.init(dashboard=True)         # prints the URL, token included
    shoal.dashboard.url()

Pages: the cluster (nodes, CPU, memory, object store over time), tasks and
actors (live, with failures' tracebacks), workers' logs, training runs
(metric curves), tuning experiments and serving. ``/metrics`` is the
Prometheus endpoint (scrape it with ``authorization: Bearer <token>``).
The server binds 127.0.0.1 and refuses every request without the
session's token (401) or with a wrong one (403).
"""
from __future__ import annotations

import sys

from shoal.exceptions import MissingDependencyError

_dashboard = None
_froze = False      # whether start() froze the heap (stop() then unfreezes it)


def start(port: int = 0, host: str = "127.0.0.1", token: str | None = None, quiet: bool = False):
    """Serve the dashboard of this process's cluster (started if need be).

    Args:
        port: the port, 0 for a free one.
        host: the address to bind; 127.0.0.1 unless you must reach it from
            elsewhere (then put it behind TLS: the token travels in the URL).
        token: the secret every request needs; default a new random one.
        quiet: do not print the URL.
    Returns the running ``Dashboard`` (its ``url`` has the token). A second
    call returns the one already running.
    """
    global _dashboard
    MissingDependencyError.require("shoal's dashboard", "dashboard", "starlette", "uvicorn",
                                   "prometheus_client")
    from shoal.core import api
    from shoal.dashboard._server import Dashboard
    b = api._runtime()
    if _dashboard is not None and getattr(b, "dashboard", None) is _dashboard:
        return _dashboard
    d = Dashboard(host=host, port=port, token=token).start()
    _freeze_heap()
    from shoal.collective.timeline import STATS_FLAG
    b.kv.set(STATS_FLAG, b"1")   # collective groups formed from now on count their ops
    _dashboard = d
    b.dashboard = d
    if hasattr(b, "write_session_info"):   # how `shoal status` and `shoal logs` reach it
        b.write_session_info(dashboard={"url": f"http://{host}:{d.port}", "token": d.token})
    if not quiet:
        print(f"shoal dashboard: {d.url}", file=sys.stderr, flush=True)
    return d


def _freeze_heap() -> None:
    """Move the objects alive now (the web stack's ~20,000 modules, classes and functions
    among them) to the collector's permanent generation, so that the driver's full
    collections, which batches of calls trigger, stop walking them: with them walked,
    the dashboard cost a batched actor call 1-2 % more driver CPU. Objects alive now that
    later become cyclic garbage are then not freed (refcounting still frees the rest);
    ``SHOAL_DASHBOARD_GC_FREEZE=0`` leaves the collector alone."""
    global _froze
    import gc
    import os
    if os.environ.get("SHOAL_DASHBOARD_GC_FREEZE", "1") == "0" or gc.get_freeze_count():
        return      # turned off, or the program froze its heap itself
    import prometheus_client  # noqa: F401 - the scrapes' library: frozen with the rest
    gc.collect()      # garbage is freed, not frozen
    gc.freeze()
    _froze = True


def url() -> str | None:
    """The running dashboard's URL (token included), or None."""
    return _dashboard.url if _dashboard is not None and _dashboard._server is not None \
        and not _dashboard._server.should_exit else None


def stop() -> None:
    """Stop the dashboard (``shoal.shutdown()`` does too)."""
    global _dashboard, _froze
    d, _dashboard = _dashboard, None
    if d is not None:
        d.stop()
    if _froze:
        import gc
        gc.unfreeze()     # back to the oldest generation, collected as before
        _froze = False


__all__ = ["start", "stop", "url"]
