"""A replica: one instance of a deployment in its own actor, serving requests.

It is an async actor: the controller reaches it through shoal's actor calls
(ready, health, routes, drain), routers through its Unix socket (_wire).
A replica of an application's ingress deployment also answers HTTP itself
on the shared serve port (see _front): a request for its own deployment
runs here, within ``max_ongoing_requests``, queued beyond it up to
``max_queued_requests`` (then 503).
Sync user methods run on the actor's event loop, as in Ray Serve; an
exception in user code answers that request only (500 over HTTP, with an
error id written to the replica's log) and the replica stays up.
"""
from __future__ import annotations

import asyncio
import gc
import inspect
import os
import sys
import time
import traceback
import uuid
from collections import deque

from shoal.exceptions import BackPressureError, DeploymentUnavailableError, RequestError
from shoal.serve import _wire
from shoal.serve._router import deliver, registry

_WAIT_FOR_SLOT_S = 30.0


class Replica:
    """The actor around one instance of a deployment's class or function."""

    def __init__(self, app: str, deployment: str, replica_id: str, func_or_class, args, kwargs,
                 user_config, secret: bytes, sock_dir: str, table: dict):
        registry.set_loop(asyncio.get_running_loop())
        registry.update(table)
        self.app, self.deployment, self.id = app, deployment, replica_id
        self.secret = secret
        self.path = os.path.join(sock_dir, f"{replica_id}.sock")
        self.ongoing = 0
        self.served = 0
        self.server = None
        self.stopped = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()
        self.key = (app, deployment)
        self.front = None           # the HTTP front, while this replica serves HTTP
        self.http = None
        self.draining = False
        self.waiters: deque = deque()
        self.asgi = getattr(func_or_class, "_shoal_asgi_app", None)
        if inspect.isclass(func_or_class):
            self.instance = func_or_class(*args, **kwargs)
            if self.asgi is not None:
                from shoal.serve._ingress import set_instance
                set_instance(func_or_class, self.instance)
        else:
            self.instance = _FunctionDeployment(func_or_class)
        self.user_config = None
        self.pending_config = None    # an async reconfigure(), awaited by ready()
        if user_config is not None:
            r = self._reconfigure_call(user_config)
            if inspect.isawaitable(r):
                self.pending_config = r

    def _reconfigure_call(self, user_config):
        fn = getattr(self.instance, "reconfigure", None)
        if fn is None:
            raise ValueError(f"deployment {self.deployment} got user_config but has no "
                             "reconfigure(user_config) method; add one or drop user_config")
        self.user_config = user_config
        return fn(user_config)

    # ------------------------------------------------------------ control plane
    async def ready(self) -> str:
        """Start listening; returns the socket path."""
        if self.pending_config is not None:
            r, self.pending_config = self.pending_config, None
            await r
        if self.server is None:
            self.server = await _wire.serve_unix(self.path, self.secret, self._on_message)
            _freeze_heap()      # the user's model is built: out of every full collection
        return self.path

    async def check_health(self) -> bool:
        fn = getattr(self.instance, "check_health", None)
        if fn is not None:
            r = fn()
            if inspect.isawaitable(r):
                await r
        return True

    async def stats(self) -> dict:
        return {"ongoing": self.ongoing, "waiting": len(self.waiters), "served": self.served,
                "pid": os.getpid(),
                "queued": sum(registry.queued().values())}

    async def update_routes(self, table: dict, front: dict | None = None) -> bool:
        """Install the routing table; ``front`` (routes, peers, where to borrow the HTTP
        socket) makes this replica answer HTTP. Returns whether it does."""
        registry.update(table)
        self._grant()
        if front is None or self.draining:
            return False
        from shoal.serve import _front
        if self.front is None:
            self.front = _front.HttpFront(front["body_limit"], front["routes"], local=self)
            self.http = _front.UvicornOn(self.front)
        self.front.update(front["routes"], [p for p in front["peers"] if p != self.path],
                          self.secret)
        if not self.http.running:
            try:
                sock = await asyncio.to_thread(_front.borrow_socket, front["lend_path"],
                                               self.secret)
            except OSError as e:    # e.g. on another host than the proxy: it routes for us
                sys.stderr.write(f"[shoal.serve] replica {self.id} serves no HTTP: {e}\n")
                return False
            try:
                await self.http.start(sock)
            finally:
                sock.close()
            _freeze_heap()      # and the web stack, imported for the front
        return True

    async def reconfigure(self, user_config) -> None:
        """Apply a new user_config in place (Ray Serve's ``reconfigure``): the replica keeps
        its state and its requests in flight."""
        r = self._reconfigure_call(user_config)
        if inspect.isawaitable(r):
            await r

    async def drain(self, timeout_s: float) -> int:
        """Finish the requests in hand (up to ``timeout_s``); returns how many were left."""
        self.draining = True
        if self.http is not None:
            await self.http.stop(min(1.0, timeout_s))
        try:
            await asyncio.wait_for(self.idle.wait(), timeout_s)
        except asyncio.TimeoutError:
            pass
        left = self.ongoing
        if self.server is not None:
            self.server.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass
        registry.close()
        self.stopped.set()
        return left

    async def wait_stopped(self) -> bool:
        """Returns once the replica is drained; fails at once if its process dies."""
        await self.stopped.wait()
        return True

    # ------------------------------------------------------------ request path
    def _on_message(self, conn, msg) -> None:
        rid, kind, payload = msg
        if kind == _wire.METRICS:
            conn.send((rid, _wire.OK, self.front.snapshot() if self.front is not None
                       else {"requests": {}, "latency": {}, "queued": {}}))
            return
        if self.waiters or self.ongoing >= self._cap():
            # max_ongoing_requests holds here too: several routers (and this replica's
            # HTTP front) send to it, each counting only its own requests
            asyncio.ensure_future(self._serve_when_free(conn, rid, kind, payload))
            return
        self.ongoing += 1
        self.idle.clear()
        asyncio.ensure_future(self._serve(conn, rid, kind, payload))

    def _cap(self) -> int:
        entry = registry.table.get(self.key)
        return entry["max_ongoing_requests"] if entry else 5

    async def _serve_when_free(self, conn, rid, kind, payload) -> None:
        try:
            await self._wait_slot(self._cap(), -1)
        except DeploymentUnavailableError as e:
            if kind == _wire.HTTP:
                from shoal.serve import _http
                conn.send((rid, _wire.OK, _http.error_response(503, str(e))))
            else:
                conn.send((rid, _wire.ERR, e))
            return
        self.idle.clear()
        await self._serve(conn, rid, kind, payload)

    # ------------------------------------------------------------ HTTP answered here
    async def take(self, app: str, dep: str, req: tuple):
        """Run an HTTP request for this replica's own deployment here. Returns the whole
        response (status, headers, body), a queue of its items when it streams, or None
        for a request the router sends on."""
        if (app, dep) != self.key:
            return None
        entry = registry.table.get(self.key)
        cap = entry["max_ongoing_requests"] if entry else 5
        if self.waiters or self.ongoing >= cap:
            if registry.router(app, dep).has_room(exclude=self.id):
                return None     # full here: another replica of ours takes it
            await self._wait_slot(cap, entry["max_queued_requests"] if entry else -1)
        else:
            self.ongoing += 1
        self.idle.clear()
        if self.asgi is not None:
            queue = asyncio.Queue()
            asyncio.ensure_future(self._serve(_QueueConn(queue), 0, _wire.HTTP, req))
            return queue
        # Run here, in the caller's task, up to the response: no task, no queue, unless
        # the response streams.
        streaming = False
        try:
            head = await self._http_head(req)
            if len(head) == 3:
                return head
            queue = asyncio.Queue()
            queue.put_nowait(head[0])
            asyncio.ensure_future(self._serve_stream(_QueueConn(queue), 0, head[1]))
            streaming = True
            return queue
        finally:
            if not streaming:
                self._done()

    async def _wait_slot(self, cap: int, max_queued: int) -> None:
        """Wait for a slot under ``max_ongoing_requests``; returns holding it (counted in
        ``ongoing``). First come, first served: a finished request hands its slot to the
        longest waiting one, so none starves behind newcomers."""
        if not self.waiters and self.ongoing < cap:
            self.ongoing += 1
            return
        if 0 <= max_queued <= len(self.waiters):
            raise BackPressureError(
                f"deployment {self.deployment!r} of application {self.app!r} has "
                f"{len(self.waiters)} requests queued at replica {self.id} "
                f"(max_queued_requests={max_queued}); retry later or add replicas")
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self.waiters.append(fut)
        timer = loop.call_later(_WAIT_FOR_SLOT_S, _time_out, fut, DeploymentUnavailableError(
            f"replica {self.id} of deployment {self.deployment!r} had no free slot within "
            f"{_WAIT_FOR_SLOT_S:.0f}s (max_ongoing_requests={cap})"))
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._done(served=False)     # handed a slot, then cancelled: give it on
            raise
        finally:
            timer.cancel()
            try:
                self.waiters.remove(fut)
            except ValueError:
                pass

    def _grant(self) -> None:
        """Give free slots to waiting requests, in order."""
        cap = self._cap()
        while self.waiters and self.ongoing < cap:
            f = self.waiters.popleft()
            if not f.done():
                self.ongoing += 1
                f.set_result(None)

    def queued(self) -> dict:
        return {f"{self.app}/{self.deployment}": len(self.waiters)}

    async def _serve(self, conn, rid, kind, payload) -> None:
        try:
            if kind == _wire.CALL:
                await self._call(conn, rid, *payload)
            else:
                await self._http(conn, rid, payload)
        finally:
            self._done()

    async def _serve_stream(self, conn, rid, chunks) -> None:
        from shoal.serve import _http
        try:
            await self._stream(conn, rid, chunks, _http.chunk_of)
        except Exception as e:  # noqa: BLE001 - the status went out: log it, end the body
            self._error(e, "__call__")
            conn.send((rid, _wire.END, None))
        finally:
            self._done()

    def _done(self, served: bool = True) -> None:
        if served:
            self.served += 1
        if self.waiters and self.ongoing <= self._cap():
            while self.waiters:          # the slot goes straight to the first waiting
                f = self.waiters.popleft()
                if not f.done():
                    f.set_result(None)
                    return
        self.ongoing -= 1
        if not self.ongoing:
            self.idle.set()
        if self.waiters:
            self._grant()

    async def _call(self, conn, rid, method, args, kwargs, stream) -> None:
        try:
            fn = getattr(self.instance, method, None)
            if fn is None:
                raise AttributeError(f"deployment {self.deployment} has no method {method!r}")
            result = fn(*args, **kwargs)
            if stream:
                await self._stream(conn, rid, result, lambda x: x)
                return
            if inspect.isawaitable(result):
                result = await result
        except Exception as e:  # noqa: BLE001 - answered to the caller, replica stays up
            conn.send((rid, _wire.ERR, self._error(e, method)))
            return
        try:
            conn.send((rid, _wire.OK, result))
        except Exception as e:  # noqa: BLE001 - e.g. an unpicklable result
            conn.send((rid, _wire.ERR, self._error(e, method)))

    async def _stream(self, conn, rid, result, convert) -> None:
        if inspect.isasyncgen(result):
            async for item in result:
                conn.send((rid, _wire.ITEM, convert(item)))
        elif inspect.isgenerator(result):
            for item in result:
                conn.send((rid, _wire.ITEM, convert(item)))
                await asyncio.sleep(0)   # let each chunk leave as it is made
        else:
            raise TypeError(f"a streaming call needs a generator method; "
                            f"{self.deployment} returned {type(result).__name__}")
        conn.send((rid, _wire.END, None))

    async def _http(self, conn, rid, req) -> None:
        from shoal.serve import _http
        if self.asgi is not None:
            try:
                out = await _http.call_asgi(self.asgi, req,
                                            lambda item: conn.send((rid, _wire.ITEM, item)))
            except Exception as e:  # noqa: BLE001 - 500 for this request only
                out = self._http_error(e)
            if out is None:
                conn.send((rid, _wire.END, None))
            else:
                conn.send((rid, _wire.OK, out))
            return
        head = await self._http_head(req)
        if len(head) == 3:
            conn.send((rid, _wire.OK, head))
            return
        conn.send((rid, _wire.ITEM, head[0]))
        try:
            await self._stream(conn, rid, head[1], _http.chunk_of)
        except Exception as e:  # noqa: BLE001 - the status went out: log it, end the body
            self._error(e, "__call__")
            conn.send((rid, _wire.END, None))

    async def _http_head(self, req) -> tuple:
        """Call the deployment on an HTTP request: (status, headers, body), or
        ((status, headers), chunks) for a streamed body."""
        from shoal.serve import _http
        try:
            result = self.instance(_http.make_request(req))
            if inspect.isawaitable(result):
                result = await result
            out = _http.encode_result(result)
            if isinstance(out, tuple):
                return out
            if not (inspect.isgenerator(out) or inspect.isasyncgen(out)):   # StreamingResponse
                return (out.status_code, list(out.raw_headers)), out.body_iterator
            return (200, [(b"content-type", b"text/plain")]), out
        except Exception as e:  # noqa: BLE001 - 4xx/500 for this request only
            return self._http_error(e)

    def _http_error(self, e: Exception) -> tuple:
        from shoal.serve import _http
        if _http.is_http_exception(e):
            return _http.error_response(e.status_code, str(e.detail))
        err = self._error(e, "__call__")
        return _http.error_response(
            500, f"{type(e).__name__} in deployment {self.deployment}: {e}", err.error_id)

    def _error(self, e: BaseException, method: str) -> RequestError:
        error_id = uuid.uuid4().hex[:16]
        tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
        sys.stderr.write(f"[shoal.serve] error_id={error_id} {self.app}/{self.deployment}."
                         f"{method} (replica {self.id}) raised:\n{tb}")
        sys.stderr.flush()
        try:
            import pickle
            pickle.dumps(e)
            cause = e
        except Exception:  # noqa: BLE001 - the message still says what happened
            cause = None
        return RequestError(f"{self.deployment}.{method} raised {type(e).__name__}: {e} "
                            f"(error_id {error_id}, see the replica's log)", error_id, cause)


def _freeze_heap() -> None:
    """Move what the replica holds once it is set up (the model, torch's and the web
    stack's modules: ~170,000 objects for the digits CNN) to the collector's permanent
    generation. Each full collection walked them all, 60-85 ms with the event loop
    stopped, and under load those pauses were the requests' p99 (51 ms, 6.6 ms frozen).
    Objects of that moment that later become cyclic garbage are then freed only by
    refcounting; ``SHOAL_SERVE_GC_FREEZE=0`` leaves the collector alone."""
    if os.environ.get("SHOAL_SERVE_GC_FREEZE", "1") != "0":
        gc.collect()    # garbage is freed, not frozen
        gc.freeze()


def _time_out(fut, error) -> None:
    if not fut.done():
        fut.set_exception(error)


class _QueueConn:
    """What a request answered here writes its response to: the queue the HTTP front
    reads, as it reads a routed request's."""

    __slots__ = ("queue",)

    def __init__(self, queue):
        self.queue = queue

    def send(self, msg) -> None:
        deliver(self.queue, msg[1], msg[2])


class _FunctionDeployment:
    """A function deployment as an instance with ``__call__``."""

    def __init__(self, fn):
        self._fn = fn

    def __call__(self, *args, **kwargs):
        return self._fn(*args, **kwargs)
