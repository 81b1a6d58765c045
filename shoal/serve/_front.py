"""The HTTP front: the ASGI app of every process answering HTTP, and the socket they share.

One TCP socket is bound (by the proxy actor) and handed to each replica of
an application's ingress deployment over an owner-only Unix socket
(SCM_RIGHTS, after an HMAC handshake on the application's secret). Each of
those processes runs uvicorn on its copy and accepts from the one shared
queue, so a request for a replica's own deployment is answered where it
arrives: one hop, no pickling. A request for another application goes
through the process's router, as handle calls do. While no replica serves
HTTP the proxy accepts instead; connections wait in the shared backlog,
not refused, while that changes hands (a rolling update, a crash).
"""
from __future__ import annotations

import asyncio
import bisect
import hmac
import json
import os
import socket
import threading
import time

from shoal.exceptions import (AuthenticationError, BackPressureError, DeploymentUnavailableError,
                              RequestError)
from shoal.serve import _wire
from shoal.serve._router import next_item, registry

_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
_JSON = [(b"content-type", b"application/json")]
_CLOSE = (b"connection", b"close")
_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10)
_NONCE = 32
_TRANSPORT = "shoal.transport"      # scope key: the connection's _CorkedTransport


class HttpFront:
    """ASGI app: the proxy's paths, route prefixes, the body limit, and HTTP answers for
    routing errors (404, 413, 503 with Retry-After).

    ``local`` (a replica) may answer a request itself: ``await local.take(app, dep, req)``
    returns a queue of response items, or None to route it.
    """

    def __init__(self, body_limit: int, routes: dict, local=None):
        self.body_limit = body_limit
        self.routes = routes            # prefix -> (app, ingress deployment)
        self.local = local
        self.metrics = Metrics()
        self.peers: list = []           # wire paths of the other HTTP-serving processes
        self.secret = b""
        self.closing = False            # answers carry "connection: close" (draining)

    def update(self, routes: dict, peers: list, secret: bytes) -> None:
        self.routes, self.peers, self.secret = routes, peers, secret

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        if self.closing:
            send = _closing(send)
        path = scope["path"]
        if path.startswith("/-/"):     # serve's own paths, never an application's
            if path == "/-/healthz":
                await _reply(send, 200, [(b"content-type", b"text/plain")], b"success")
                return
            if path == "/-/routes":
                body = json.dumps({p: a for p, (a, _) in self.routes.items()}).encode()
                await _reply(send, 200, _JSON, body)
                return
            if path == "/-/metrics":
                await self.reply_metrics(send)
                return
        match = self._match(path)
        if match is None:
            if path == "/metrics":     # also here while no application claims it
                await self.reply_metrics(send)
                return
            await _error(send, 404, f"no application is served at {path}; routes: "
                                    f"{sorted(self.routes)}")
            return
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
        try:
            queue = None
            if self.local is not None:
                queue = await self.local.take(app, dep, req)
                if type(queue) is tuple:     # answered here, whole
                    status, headers, body = queue
                    await _reply(send, status, headers, body, scope.get(_TRANSPORT))
                    return status
            if queue is None:
                router = registry.router(app, dep)
                queue = await router.request(_wire.HTTP, req, True,
                                             method in _IDEMPOTENT_METHODS
                                             or "__call__" in router.idempotent,
                                             None if self.local is None else self.local.id)
            first = await next_item(queue)
        except (BackPressureError, DeploymentUnavailableError) as e:
            return await _error(send, 503, str(e), [(b"retry-after", b"1")])
        except RequestError as e:
            return await _error(send, 500, str(e))
        if len(first) == 3:       # the whole response at once
            status, headers, body = first
            await _reply(send, status, headers, body, scope.get(_TRANSPORT))
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

    # ------------------------------------------------------------ metrics
    def snapshot(self) -> dict:
        """This process's figures, for the process answering /-/metrics."""
        return {"requests": dict(self.metrics.requests),
                "latency": {a: list(h) for a, h in self.metrics.latency.items()},
                "queued": registry.queued() if self.local is None else
                {**registry.queued(), **self.local.queued()}}

    async def reply_metrics(self, send) -> int:
        try:
            import prometheus_client as pc
        except ImportError:
            return await _error(send, 404, "/-/metrics needs prometheus_client: "
                                           "pip install 'shoal[serve]'")
        snaps = [self.snapshot()] + await _gather_peers(self.peers, self.secret)
        collector = _Collector(snaps, {f"{a}/{d}": len(r.replicas)
                                       for (a, d), r in registry.routers.items()})
        reg = pc.CollectorRegistry(auto_describe=False)
        reg.register(collector)
        return await _reply(send, 200, [(b"content-type", pc.CONTENT_TYPE_LATEST.encode())],
                            pc.generate_latest(reg))


def _closing(send):
    """``send`` adding "connection: close" to the response: the client reconnects, to
    a process that stays."""
    async def closing_send(message):
        if message["type"] == "http.response.start":
            message = dict(message, headers=list(message.get("headers", [])) + [_CLOSE])
        await send(message)
    return closing_send


async def _reply(send, status, headers, body, transport=None) -> int:
    """Send a whole response; with ``transport`` (a _CorkedTransport) as one write."""
    if transport is not None:
        transport.cork()
    try:
        await send({"type": "http.response.start", "status": status,
                    "headers": headers + [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
    finally:
        if transport is not None:
            transport.uncork()
    return status


async def _error(send, status: int, message: str, extra=()) -> int:
    body = json.dumps({"error": message}).encode()
    return await _reply(send, status, _JSON + list(extra), body)


class Metrics:
    """Request counts and latency histograms of one process (plain counters: cheap on
    every request; turned into Prometheus families when scraped)."""

    def __init__(self):
        self.requests: dict = {}        # (app, status) -> count
        self.latency: dict = {}         # app -> bucket counts + [sum, count]

    def observe(self, app: str, status: int, seconds: float) -> None:
        key = (app, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        h = self.latency.get(app)
        if h is None:
            h = self.latency[app] = [0] * (len(_BUCKETS) + 3)
        h[bisect.bisect_left(_BUCKETS, seconds)] += 1
        h[-2] += seconds
        h[-1] += 1


class _Collector:
    def __init__(self, snaps: list, replicas: dict):
        self.snaps, self.replicas = snaps, replicas

    def collect(self):
        from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                            HistogramMetricFamily)
        reqs: dict = {}
        lat: dict = {}
        queued: dict = {}
        for s in self.snaps:
            for (app, status), n in s["requests"].items():
                reqs[(app, status)] = reqs.get((app, status), 0) + n
            for app, h in s["latency"].items():
                acc = lat.setdefault(app, [0] * len(h))
                for i, v in enumerate(h):
                    acc[i] += v
            for k, n in s["queued"].items():
                queued[k] = queued.get(k, 0) + n
        c = CounterMetricFamily("shoal_serve_http_requests", "HTTP requests answered",
                                labels=["application", "status"])
        for (app, status), n in sorted(reqs.items()):
            c.add_metric([app, str(status)], n)
        yield c
        hist = HistogramMetricFamily("shoal_serve_http_request_latency_seconds",
                                     "time from request to answer", labels=["application"])
        for app, h in sorted(lat.items()):
            cum, buckets = 0, []
            for bound, n in zip(list(_BUCKETS) + [float("inf")], h[:len(_BUCKETS) + 1]):
                cum += n
                buckets.append((str(bound) if bound != float("inf") else "+Inf", cum))
            hist.add_metric([app], buckets, h[-2])
        yield hist
        g = GaugeMetricFamily("shoal_serve_queued_requests", "requests waiting for a replica",
                              labels=["deployment"])
        for k, n in sorted(queued.items()):
            g.add_metric([k], n)
        yield g
        g = GaugeMetricFamily("shoal_serve_replicas", "replicas known to the answering process",
                              labels=["deployment"])
        for k, n in sorted(self.replicas.items()):
            g.add_metric([k], n)
        yield g


async def _gather_peers(paths: list, secret: bytes) -> list:
    async def one(path):
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def on_message(conn, msg):
            if not fut.done():
                fut.set_result(msg[2] if msg[1] == _wire.OK else None)
        conn = await _wire.connect_unix(path, secret, on_message, timeout=2.0)
        try:
            conn.send((0, _wire.METRICS, None))
            return await asyncio.wait_for(fut, 2.0)
        finally:
            conn.close()
    out = await asyncio.gather(*[one(p) for p in paths], return_exceptions=True)
    return [s for s in out if isinstance(s, dict)]   # a peer that just went: its figures go


# ---------------------------------------------------------------- the shared socket
def bind(host: str, port: int) -> socket.socket:
    """The listening TCP socket every HTTP-serving process accepts on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto given: asyncio sets TCP_NODELAY on accepted connections only when the
    # listening socket says IPPROTO_TCP (else Nagle holds a response's second write ~40 ms)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _mac(secret: bytes, nonce: bytes) -> bytes:
    return hmac.new(secret, b"F" + nonce, "sha256").digest()


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("the peer closed the connection")
        buf += chunk
    return buf


class SocketLender:
    """Hands copies of the listening socket to processes proving the secret (a thread on
    an owner-only Unix socket; SCM_RIGHTS cannot ride asyncio's transports)."""

    def __init__(self, path: str, secret: bytes, sock: socket.socket):
        self.path, self.secret, self.sock = path, secret, sock
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(path)
        os.chmod(path, 0o600)
        self.server.listen(64)
        self.server.settimeout(0.2)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True,
                                       name="shoal-serve-socket-lender")
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                c, _ = self.server.accept()
            except (socket.timeout, OSError):
                continue
            with c:
                try:
                    c.settimeout(5)
                    nonce = os.urandom(_NONCE)
                    c.sendall(nonce)
                    if hmac.compare_digest(_recv_exact(c, 32), _mac(self.secret, nonce)):
                        socket.send_fds(c, [b"L"], [self.sock.fileno()])
                except OSError:
                    pass

    def close(self) -> None:
        self.stop_event.set()
        self.thread.join(2)
        self.server.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


def borrow_socket(path: str, secret: bytes, timeout: float = 5.0) -> socket.socket:
    """A copy of the listening socket from the SocketLender at ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.settimeout(timeout)
        c.connect(path)
        nonce = _recv_exact(c, _NONCE)
        c.sendall(_mac(secret, nonce))
        _, fds, _, _ = socket.recv_fds(c, 1, 1)
    if not fds:
        raise AuthenticationError("the socket lender sent no socket; the secret did not match")
    sock = socket.socket(fileno=fds[0])
    if sock.proto != socket.IPPROTO_TCP:
        sock.detach()
        sock = socket.socket(sock.family, socket.SOCK_STREAM, socket.IPPROTO_TCP, fileno=fds[0])
    return sock


class _CorkedTransport:
    """A connection's transport whose writes can be held and sent as one.

    uvicorn writes a response's head and its body separately: on a TCP_NODELAY
    socket that is two send() calls and two segments, and the client wakes
    twice. HttpFront corks the transport around a whole response, so it
    leaves in one write (about a fifth less CPU per small request here).
    """

    __slots__ = ("transport", "held")

    def __init__(self, transport):
        self.transport = transport
        self.held = None

    def cork(self) -> None:
        self.held = []

    def uncork(self) -> None:
        held, self.held = self.held, None
        if held:
            self.transport.write(held[0] if len(held) == 1 else b"".join(held))

    def write(self, data) -> None:
        if self.held is None:
            self.transport.write(data)
        else:
            self.held.append(bytes(data))

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def close(self) -> None:
        self.uncork()         # uvicorn closes right after the body of a "connection: close"
        self.transport.close()

    def __getattr__(self, name):
        return getattr(self.transport, name)


def http_protocol():
    """uvicorn's httptools protocol over _CorkedTransport; "h11" without httptools
    (each write then goes out as uvicorn makes it)."""
    global _PROTOCOL
    if _PROTOCOL is None:
        try:
            from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
        except ImportError:
            _PROTOCOL = "h11"
            return _PROTOCOL

        class CorkingHttpToolsProtocol(HttpToolsProtocol):
            def connection_made(self, transport):
                super().connection_made(_CorkedTransport(transport))

            def on_message_begin(self):
                super().on_message_begin()
                self.scope[_TRANSPORT] = self.transport
        _PROTOCOL = CorkingHttpToolsProtocol
    return _PROTOCOL


_PROTOCOL = None


class UvicornOn:
    """uvicorn serving ``app`` on a copy of ``sock``, started and stopped gracefully."""

    def __init__(self, app: HttpFront):
        self.app = app
        self.server = None
        self.task = None

    async def start(self, sock: socket.socket) -> None:
        import uvicorn
        config = uvicorn.Config(self.app, lifespan="off", access_log=False,
                                log_level="warning", interface="asgi3", proxy_headers=False,
                                server_header=False, timeout_graceful_shutdown=5,
                                http=http_protocol())
        self.app.closing = False
        self.server = uvicorn.Server(config)
        self.task = asyncio.ensure_future(self.server.serve(sockets=[sock.dup()]))
        while not self.server.started:
            if self.task.done():
                raise OSError(f"uvicorn did not start: {self.task.exception()}")
            await asyncio.sleep(0.005)

    @property
    def running(self) -> bool:
        return self.server is not None

    async def stop(self, grace_s: float) -> None:
        """Stop accepting; answers from now on say "connection: close" so clients move to
        a process that stays; connections still open after ``grace_s`` are closed."""
        server, task = self.server, self.task
        if server is None:
            return
        self.server = self.task = None
        self.app.closing = True
        for s in getattr(server, "servers", []):
            s.close()          # stop accepting (our copy of the socket only)
        deadline = time.monotonic() + grace_s
        while server.server_state.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        server.should_exit = True
        try:
            await asyncio.wait_for(task, 10)
        except Exception:  # noqa: BLE001 - stopping anyway
            pass
