"""The HTTP proxy: uvicorn serving an ASGI app that routes requests to replicas.

It runs as its own actor, so parsing HTTP never competes with the driver
(where the local backend's scheduler runs) for one interpreter lock. It
knows applications by route prefix (longest match wins), checks the body
size, and turns routing errors into HTTP answers: 404 for an unknown route,
413 past the body limit, 503 with Retry-After when a deployment's queue is
full or no replica can take the request.
"""
from __future__ import annotations

import asyncio
import json
import time

from shoal.exceptions import BackPressureError, DeploymentUnavailableError, RequestError
from shoal.serve import _wire
from shoal.serve._router import next_item, registry

_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
_JSON = [(b"content-type", b"application/json")]


class Proxy:
    """The actor serving HTTP for every application of this serve instance."""

    def __init__(self, host: str, port: int, body_limit: int, table: dict, routes: dict):
        registry.set_loop(asyncio.get_running_loop())
        registry.update(table)
        self.host, self.port, self.body_limit = host, port, body_limit
        self.routes = routes            # prefix -> (app, ingress deployment)
        self.server = None
        self.metrics = _Metrics()

    async def start(self) -> int:
        """Start uvicorn; returns the port it listens on."""
        import uvicorn
        config = uvicorn.Config(self._asgi, host=self.host, port=self.port, lifespan="off",
                                access_log=False, log_level="warning", interface="asgi3",
                                proxy_headers=False, server_header=False,
                                http="httptools" if _has("httptools") else "h11",
                                timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        task = asyncio.ensure_future(self.server.serve())
        while not self.server.started:
            if task.done():
                exc = task.exception()
                raise OSError(f"the HTTP proxy could not listen on {self.host}:{self.port}"
                              f" ({exc or 'port in use?'}); pick another port")
            await asyncio.sleep(0.01)
        self.task = task
        sock = self.server.servers[0].sockets[0]
        self.port = sock.getsockname()[1]
        return self.port

    async def update_routes(self, table: dict, routes: dict) -> None:
        registry.update(table)
        self.routes = routes

    async def stats(self) -> dict:
        return {"queued": registry.queued(), "metrics": self.metrics.snapshot()}

    async def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
            try:
                await asyncio.wait_for(self.task, 10)
            except Exception:  # noqa: BLE001 - stopping anyway
                pass
        registry.close()

    # ------------------------------------------------------------ ASGI
    async def _asgi(self, scope, receive, send) -> None:
        await self._answer(scope, receive, send)

    async def _answer(self, scope, receive, send):
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path.startswith("/-/"):     # the proxy's own paths, never an application's
            if path == "/-/healthz":
                return await _reply(send, 200, [(b"content-type", b"text/plain")], b"success")
            if path == "/-/routes":
                body = json.dumps({p: a for p, (a, _) in self.routes.items()}).encode()
                return await _reply(send, 200, _JSON, body)
            if path == "/-/metrics":
                return await self.metrics.reply(send)
        match = self._match(path)
        if match is None:
            if path == "/metrics":     # also here while no application claims it
                return await self.metrics.reply(send)
            return await _error(send, 404, f"no application is served at {path}; routes: "
                                           f"{sorted(self.routes)}")
        prefix, (app, dep) = match
        t0 = time.perf_counter()
        status = await self._route(scope, receive, send, prefix, app, dep)
        self.metrics.observe(app, status, time.perf_counter() - t0)

    def _match(self, path: str):
        best = None
        for prefix, target in self.routes.items():
            if prefix == "/" or path == prefix or path.startswith(prefix + "/"):
                if best is None or len(prefix) > len(best[0]):
                    best = (prefix, target)
        return best

    async def _route(self, scope, receive, send, prefix, app, dep) -> int:
        limit = self.body_limit
        for k, v in scope["headers"]:
            if k == b"content-length":
                try:
                    if int(v) > limit:
                        return await _error(send, 413, f"the request body is {int(v)} bytes; "
                                                       f"the limit is {limit} bytes")
                except ValueError:
                    return await _error(send, 400, "bad content-length header")
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return 499
            body = msg.get("body", b"")
            size += len(body)
            if size > limit:
                return await _error(send, 413, f"the request body is over the limit of "
                                               f"{limit} bytes")
            chunks.append(body)
            if not msg.get("more_body", False):
                break
        method = scope["method"]
        req = (method, scope["path"], "" if prefix == "/" else prefix,
               scope["query_string"], scope["headers"],
               chunks[0] if len(chunks) == 1 else b"".join(chunks), scope.get("client"))
        router = registry.router(app, dep)
        try:
            queue = await router.request(_wire.HTTP, req, True,
                                         method in _IDEMPOTENT_METHODS
                                         or "__call__" in router.idempotent)
            first = await next_item(queue)
        except BackPressureError as e:
            return await _error(send, 503, str(e), [(b"retry-after", b"1")])
        except DeploymentUnavailableError as e:
            return await _error(send, 503, str(e), [(b"retry-after", b"1")])
        except RequestError as e:
            return await _error(send, 500, str(e))
        if len(first) == 3:       # the whole response at once
            status, headers, body = first
            await _reply(send, status, headers, body)
            return status
        status, headers = first
        await send({"type": "http.response.start", "status": status, "headers": headers})
        try:
            while True:
                try:
                    chunk = await next_item(queue)
                except StopAsyncIteration:
                    break
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except Exception:  # noqa: BLE001 - the replica died mid-stream: end the body
            pass
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return status


async def _reply(send, status, headers, body) -> int:
    await send({"type": "http.response.start", "status": status,
                "headers": headers + [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
    return status


async def _error(send, status: int, message: str, extra=()) -> int:
    body = json.dumps({"error": message}).encode()
    return await _reply(send, status, _JSON + list(extra), body)


def _has(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None


class _Metrics:
    """Request counts and latencies, served as Prometheus text at /metrics."""

    def __init__(self):
        self.registry = None
        try:
            import prometheus_client as pc
        except ImportError:
            return
        self.registry = pc.CollectorRegistry()
        self.requests = pc.Counter("shoal_serve_http_requests", "HTTP requests answered",
                                   ["application", "status"], registry=self.registry)
        self.latency = pc.Histogram("shoal_serve_http_request_latency_seconds",
                                    "time from request to answer", ["application"],
                                    registry=self.registry,
                                    buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1,
                                             2.5, 5, 10))
        self.queued = pc.Gauge("shoal_serve_queued_requests", "requests waiting for a replica",
                               ["deployment"], registry=self.registry)
        self.replicas = pc.Gauge("shoal_serve_replicas", "replicas known to the proxy",
                                 ["deployment"], registry=self.registry)
        self.counts: dict = {}

    def observe(self, app: str, status: int, seconds: float) -> None:
        key = (app, status)
        self.counts[key] = self.counts.get(key, 0) + 1
        if self.registry is not None:
            self.requests.labels(app, str(status)).inc()
            self.latency.labels(app).observe(seconds)

    def snapshot(self) -> dict:
        return {f"{a} {s}": n for (a, s), n in self.counts.items()}

    async def reply(self, send) -> int:
        if self.registry is None:
            return await _error(send, 404, "/metrics needs prometheus_client: "
                                           "pip install 'shoal[serve]'")
        import prometheus_client as pc
        for (app, dep), r in registry.routers.items():
            self.queued.labels(f"{app}/{dep}").set(len(r.waiters))
            self.replicas.labels(f"{app}/{dep}").set(len(r.replicas))
        return await _reply(send, 200, [(b"content-type", pc.CONTENT_TYPE_LATEST.encode())],
                            pc.generate_latest(self.registry))
