"""A replica: one instance of a deployment in its own actor, serving requests.

It is an async actor: the controller reaches it through shoal's actor calls
(ready, health, routes, drain), routers through its Unix socket (_wire).
Sync user methods run on the actor's event loop, as in Ray Serve; an
exception in user code answers that request only (500 over HTTP, with an
error id written to the replica's log) and the replica stays up.
"""
from __future__ import annotations

import asyncio
import inspect
import os
import sys
import traceback
import uuid

from shoal.exceptions import RequestError
from shoal.serve import _wire
from shoal.serve._router import registry


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
        self.asgi = getattr(func_or_class, "_shoal_asgi_app", None)
        if inspect.isclass(func_or_class):
            self.instance = func_or_class(*args, **kwargs)
            if self.asgi is not None:
                from shoal.serve._ingress import set_instance
                set_instance(func_or_class, self.instance)
        else:
            self.instance = _FunctionDeployment(func_or_class)
        if user_config is not None:
            self._reconfigure_sync(user_config)

    def _reconfigure_sync(self, user_config):
        fn = getattr(self.instance, "reconfigure", None)
        if fn is None:
            raise ValueError(f"deployment {self.deployment} got user_config but has no "
                             "reconfigure(user_config) method")
        r = fn(user_config)
        if inspect.isawaitable(r):
            asyncio.ensure_future(r)

    # ------------------------------------------------------------ control plane
    async def ready(self) -> str:
        """Start listening; returns the socket path."""
        if self.server is None:
            self.server = await _wire.serve_unix(self.path, self.secret, self._on_message)
        return self.path

    async def check_health(self) -> bool:
        fn = getattr(self.instance, "check_health", None)
        if fn is not None:
            r = fn()
            if inspect.isawaitable(r):
                await r
        return True

    async def stats(self) -> dict:
        return {"ongoing": self.ongoing, "served": self.served, "pid": os.getpid(),
                "queued": sum(registry.queued().values())}

    async def update_routes(self, table: dict) -> None:
        registry.update(table)

    async def reconfigure(self, user_config) -> None:
        fn = getattr(self.instance, "reconfigure")
        r = fn(user_config)
        if inspect.isawaitable(r):
            await r

    async def drain(self, timeout_s: float) -> int:
        """Finish the requests in hand (up to ``timeout_s``); returns how many were left."""
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
        self.ongoing += 1
        self.idle.clear()
        asyncio.ensure_future(self._serve(conn, rid, kind, payload))

    async def _serve(self, conn, rid, kind, payload) -> None:
        try:
            if kind == _wire.CALL:
                await self._call(conn, rid, *payload)
            else:
                await self._http(conn, rid, payload)
        finally:
            self.ongoing -= 1
            self.served += 1
            if not self.ongoing:
                self.idle.set()

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
        try:
            if self.asgi is not None:
                out = await _http.call_asgi(self.asgi, req,
                                            lambda item: conn.send((rid, _wire.ITEM, item)))
                if out is None:
                    conn.send((rid, _wire.END, None))
                else:
                    conn.send((rid, _wire.OK, out))
                return
            result = self.instance(_http.make_request(req))
            if inspect.isawaitable(result):
                result = await result
            out = _http.encode_result(result)
            if isinstance(out, tuple):
                conn.send((rid, _wire.OK, out))
                return
            if not (inspect.isgenerator(out) or inspect.isasyncgen(out)):   # StreamingResponse
                conn.send((rid, _wire.ITEM, (out.status_code, list(out.raw_headers))))
                out = out.body_iterator
            else:
                conn.send((rid, _wire.ITEM, (200, [(b"content-type", b"text/plain")])))
            await self._stream(conn, rid, out, _http.chunk_of)
        except Exception as e:  # noqa: BLE001 - 4xx/500 for this request only
            if _http.is_http_exception(e):
                status, detail = e.status_code, e.detail
                conn.send((rid, _wire.OK, _http.error_response(status, str(detail))))
                return
            err = self._error(e, "__call__")
            conn.send((rid, _wire.OK, _http.error_response(
                500, f"{type(e).__name__} in deployment {self.deployment}: {e}", err.error_id)))

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


class _FunctionDeployment:
    """A function deployment as an instance with ``__call__``."""

    def __init__(self, fn):
        self._fn = fn

    def __call__(self, *args, **kwargs):
        return self._fn(*args, **kwargs)
