"""The dashboard's web server: Starlette on uvicorn, in a thread of the driver.

It reads the cluster through ``shoal.state`` (the scheduler's own tables, so
the tasks and actors cost nothing more to show), samples the cluster once a
second for the charts, and serves pages, a JSON API and Prometheus metrics.
Every request needs the session's token (``?token=``, the cookie a page
load with it sets, or ``Authorization: Bearer``): none is 401, a wrong one
403.
"""
from __future__ import annotations

import asyncio
import hmac
import os
import secrets
import threading
import time
from collections import deque
from http.cookies import SimpleCookie
from urllib.parse import parse_qs

from shoal.core import sessions
from shoal.core import state as st

_STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
_COOKIE = "shoal_dashboard_token"
PAGES = {"/": "cluster", "/tasks": "tasks", "/logs": "logs", "/train": "train", "/tune": "tune",
         "/serve": "serve"}
_SAMPLE_S = 1.0
_HISTORY = 900            # samples kept for the cluster charts (15 minutes)


class TokenAuth:
    """ASGI middleware: refuse every request that does not carry the token."""

    def __init__(self, app, token: str):
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given, from_query = self._token_of(scope)
        if given is None or not hmac.compare_digest(given.encode(), self.token.encode()):
            status = 401 if given is None else 403
            body = (b"shoal dashboard: this URL needs the session's token; open the URL "
                    b"shoal printed (or `shoal dashboard` shows), with ?token=...\n")
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                    (b"www-authenticate", b"Bearer")]})
            await send({"type": "http.response.body", "body": body})
            return
        if not from_query:
            return await self.app(scope, receive, send)

        async def send_with_cookie(msg):  # a page opened with ?token= keeps it as a cookie
            if msg["type"] == "http.response.start":
                msg["headers"] = list(msg.get("headers", [])) + [
                    (b"set-cookie", f"{_COOKIE}={self.token}; HttpOnly; SameSite=Strict; "
                                    f"Path=/".encode())]
            await send(msg)
        await self.app(scope, receive, send_with_cookie)

    @staticmethod
    def _token_of(scope):
        q = parse_qs(scope.get("query_string", b"").decode())
        if "token" in q:
            return q["token"][0], True
        for k, v in scope.get("headers", ()):
            if k == b"authorization" and v.lower().startswith(b"bearer "):
                return v[7:].decode(errors="replace").strip(), False
            if k == b"cookie":
                c = SimpleCookie()
                try:
                    c.load(v.decode(errors="replace"))
                except Exception:  # noqa: BLE001 - a malformed cookie is no token
                    continue
                if _COOKIE in c:
                    return c[_COOKIE].value, False
        return None, False


class Dashboard:
    """The dashboard of this driver's cluster; ``start()`` serves it, ``stop()`` ends it."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, token: str | None = None):
        self.host, self.port = host, port
        self.token = token or secrets.token_urlsafe(24)
        self.history: deque = deque(maxlen=_HISTORY)
        self._server = None
        self._thread = None
        self._error = None

    @property
    def url(self) -> str:
        """The address to open, token included."""
        return f"http://{self.host}:{self.port}/?token={self.token}"

    # ------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 30.0) -> "Dashboard":
        import uvicorn
        app = TokenAuth(self._app(), self.token)
        config = uvicorn.Config(app, host=self.host, port=self.port, log_level="warning",
                                access_log=False, lifespan="off", loop="asyncio", http="h11",
                                ws="none")
        self._server = uvicorn.Server(config)
        self._server.install_signal_handlers = lambda: None   # a thread, not the main one
        self._thread = threading.Thread(target=self._serve, name="shoal-dashboard", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if self._error is not None or not self._thread.is_alive():
                raise RuntimeError(f"the shoal dashboard could not start on {self.host}:"
                                   f"{self.port}: {self._error or 'its server exited'}; pick "
                                   "another dashboard_port (0 picks a free one)")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"the shoal dashboard did not start within {timeout}s")
            time.sleep(0.02)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def _serve(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:  # noqa: BLE001 - reported by start()
            self._error = e

    async def _main(self) -> None:
        sampler = asyncio.get_running_loop().create_task(self._sample_loop())
        try:
            await self._server.serve()
        finally:
            sampler.cancel()
        if not self._server.started:
            self._error = self._error or OSError(f"cannot listen on {self.host}:{self.port}")

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    # ------------------------------------------------------------ sampling
    async def _sample_loop(self) -> None:
        from shoal.core import api
        # On Ray a sample asks Ray's state API for every task: less often there.
        every = 5.0 if getattr(api._backend, "name", "local") == "ray" else _SAMPLE_S
        while True:
            try:
                self.history.append(self._sample())
            except RuntimeError:   # the cluster is shutting down
                return
            except Exception:  # noqa: BLE001, S110 - a failed sample leaves a gap, not a dead page
                pass
            await asyncio.sleep(every)

    def _sample(self) -> dict:
        s = st.summary()
        store = s.get("object_store", {})
        return {"time": time.time(), "cpu_percent": s.get("cpu_percent"),
                "memory_used_bytes": s.get("memory_used_bytes"),
                "object_store_used_bytes": store.get("used_bytes"),
                "object_store_spilled_bytes": store.get("spilled_bytes"),
                "tasks_running": s["tasks"].get("RUNNING", 0),
                "tasks_pending": s["tasks"].get("PENDING", 0),
                "tasks_finished": s["tasks"].get("FINISHED", 0),
                "tasks_failed": s["tasks"].get("FAILED", 0)}

    # ------------------------------------------------------------ the app
    def _app(self):
        from starlette.applications import Starlette
        from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
        from starlette.routing import Mount, Route
        from starlette.staticfiles import StaticFiles

        from shoal.dashboard._metrics import metrics_text

        page_html = open(os.path.join(_STATIC, "page.html")).read()

        def page(request):
            name = PAGES[request.url.path]
            return Response(page_html.replace("{{page}}", name), media_type="text/html",
                            headers={"cache-control": "no-store"})

        def limit_of(request, default=200):
            try:
                return max(1, min(10_000, int(request.query_params.get("limit", default))))
            except ValueError:
                return default

        def filters_of(request):
            return [(k, "=", v) for k, v in request.query_params.items()
                    if k not in ("limit", "token") and v]

        def listing(kind):
            fn = getattr(st, f"list_{kind}")

            def handler(request):
                return JSONResponse(fn(filters=filters_of(request), limit=limit_of(request)))
            return handler

        def summary(request):
            return JSONResponse(st.summary())

        def history(request):
            return JSONResponse(list(self.history))

        def runs(request):
            return JSONResponse(st.list_runs(request.query_params.get("kind") or None))

        def logs(request):
            from shoal.core.api import _backend
            b = _backend
            if b is None or not hasattr(b, "dir"):
                return JSONResponse({"workers": [], "text": ""})
            workers = sessions.worker_logs(b.dir)
            wid = request.query_params.get("worker")
            if not wid:
                return JSONResponse({"workers": workers})
            rows = [r for r in workers if r["worker_id"] == wid]
            if not rows:
                return JSONResponse({"error": f"no worker {wid!r}"}, status_code=404)
            stream = "stderr_file" if request.query_params.get("stream") == "stderr" \
                else "stdout_file"
            try:
                offset = int(request.query_params.get("offset", -65536))
            except ValueError:
                offset = -65536
            text, nxt = sessions.read_log(rows[0][stream], offset, 1 << 20)
            return JSONResponse({"worker": rows[0], "text": text, "offset": nxt})

        def timeline(request):
            events = st.timeline(None)
            return JSONResponse({"traceEvents": events, "displayTimeUnit": "ms"},
                                headers={"content-disposition":
                                         'attachment; filename="shoal-timeline.json"'})

        def metrics(request):
            body, ctype = metrics_text()
            return Response(body, media_type=ctype)

        def favicon(request):
            return FileResponse(os.path.join(_STATIC, "favicon.svg"), media_type="image/svg+xml")

        def health(request):
            return PlainTextResponse("ok")

        routes = [Route(p, page) for p in PAGES]
        routes += [Route(f"/api/{k}", listing(k))
                   for k in ("tasks", "actors", "objects", "nodes", "workers")]
        routes += [Route("/api/summary", summary), Route("/api/history", history),
                   Route("/api/runs", runs), Route("/api/logs", logs),
                   Route("/api/timeline", timeline), Route("/metrics", metrics),
                   Route("/favicon.ico", favicon), Route("/healthz", health),
                   Mount("/static", StaticFiles(directory=_STATIC), name="static")]
        return Starlette(routes=routes)
