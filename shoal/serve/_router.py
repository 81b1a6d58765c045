"""Routing a request to a replica: power of two choices on queue length.

Each process that calls deployments (the HTTP proxy, replicas holding
handles, the driver) has one event loop for serve and one Router per
deployment. A router counts the requests it has in flight on each replica,
sends a request to the less loaded of two replicas sampled at random among
those below ``max_ongoing_requests``, and queues it otherwise; past
``max_queued_requests`` waiting requests it raises BackPressureError.
"""
from __future__ import annotations

import asyncio
import itertools
import random
import threading
import time
from collections import deque

from shoal.exceptions import BackPressureError, DeploymentUnavailableError, ServeError
from shoal.serve import _wire

_WAIT_FOR_REPLICAS_S = 30.0


class _Registry:
    """This process's serve loop, routing table and routers."""

    def __init__(self):
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.table: dict = {}       # (app, deployment) -> entry dict from the controller
        self.routers: dict = {}
        self.lock = threading.Lock()

    def set_loop(self, loop) -> None:
        """An actor's own loop serves (replicas, the proxy)."""
        self.loop = loop

    def get_loop(self) -> asyncio.AbstractEventLoop:
        with self.lock:
            if self.loop is None or self.loop.is_closed():
                loop = asyncio.new_event_loop()
                t = threading.Thread(target=loop.run_forever, daemon=True,
                                     name="shoal-serve-loop")
                t.start()
                self.loop, self.thread = loop, t
            return self.loop

    def in_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False

    def update(self, table: dict) -> None:
        """Install a new table (call on the serve loop)."""
        self.table = table
        for key, router in list(self.routers.items()):
            router.update(table.get(key))

    def router(self, app: str, name: str) -> "Router":
        key = (app, name)
        r = self.routers.get(key)
        if r is None:
            r = self.routers[key] = Router(app, name)
            r.update(self.table.get(key))
        return r

    def queued(self) -> dict:
        return {f"{a}/{d}": len(r.waiters) for (a, d), r in self.routers.items()}

    def close(self) -> None:
        for r in self.routers.values():
            r.close()
        self.routers.clear()
        self.table = {}


registry = _Registry()


class _Replica:
    __slots__ = ("id", "path", "conn", "connecting", "ongoing", "pending", "dead")

    def __init__(self, rid, path):
        self.id, self.path = rid, path
        self.conn = None
        self.connecting = None
        self.ongoing = 0
        self.pending: dict = {}
        self.dead = False


class _Pending:
    __slots__ = ("fut", "queue", "started", "request", "retried")

    def __init__(self, fut, queue, request):
        self.fut, self.queue, self.request = fut, queue, request
        self.started = False
        self.retried = False


_END = object()


class Router:
    """Sends one deployment's requests to its replicas."""

    def __init__(self, app: str, name: str):
        self.app, self.name = app, name
        self.replicas: dict = {}
        self.max_ongoing = 5
        self.max_queued = -1
        self.secret = b""
        self.idempotent: frozenset = frozenset()
        self.waiters: deque = deque()
        self.ids = itertools.count(1)

    # ------------------------------------------------------------ table
    def update(self, entry: dict | None) -> None:
        if entry is None:
            new = {}
        else:
            self.max_ongoing = entry["max_ongoing_requests"]
            self.max_queued = entry["max_queued_requests"]
            self.secret = entry["secret"]
            self.idempotent = entry["idempotent"]
            new = dict(entry["replicas"])
        for rid in list(self.replicas):
            if rid not in new:   # draining: its requests finish, none are sent to it
                r = self.replicas.pop(rid)
                if not r.pending and r.conn is not None:
                    r.conn.close()
        for rid, path in new.items():
            if rid not in self.replicas:
                self.replicas[rid] = _Replica(rid, path)
        self._wake(len(self.waiters))

    def _wake(self, n: int = 1) -> None:
        while n > 0 and self.waiters:
            f = self.waiters.popleft()
            if not f.done():
                f.set_result(None)
                n -= 1

    def close(self) -> None:
        for r in self.replicas.values():
            if r.conn is not None:
                r.conn.close()
        self.replicas.clear()

    # ------------------------------------------------------------ choosing
    def has_room(self, exclude: str | None = None) -> bool:
        """Whether a replica (other than ``exclude``) takes a request now, as this router
        counts."""
        cap = self.max_ongoing
        return any(not r.dead and r.ongoing < cap and r.id != exclude
                   for r in self.replicas.values())

    async def _choose(self, deadline: float, exclude: str | None = None) -> _Replica:
        loop = asyncio.get_running_loop()
        while True:
            cap = self.max_ongoing
            free = [r for r in self.replicas.values()
                    if not r.dead and r.ongoing < cap and r.id != exclude]
            if free:
                if len(free) > 1:   # sampled, so ties go either way
                    a, b = random.sample(free, 2)
                    r = a if a.ongoing <= b.ongoing else b
                else:
                    r = free[0]
                r.ongoing += 1
                return r
            if self.replicas and 0 <= self.max_queued <= len(self.waiters):
                raise BackPressureError(
                    f"deployment {self.name!r} of application {self.app!r} has "
                    f"{len(self.waiters)} requests queued (max_queued_requests="
                    f"{self.max_queued}); retry later or add replicas")
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeploymentUnavailableError(
                    f"no replica of deployment {self.name!r} (application {self.app!r}) took the "
                    f"request within {_WAIT_FOR_REPLICAS_S:.0f}s "
                    f"({len(self.replicas)} replicas known); check serve.status()")
            # a bare future and a timer: cheaper than wait_for (a task per wait) when
            # many requests queue
            fut = loop.create_future()
            self.waiters.append(fut)
            timer = loop.call_later(min(left, 1.0), _wake_one, fut)
            try:
                await fut
            finally:
                timer.cancel()
                if not fut.done():
                    fut.cancel()
                try:
                    self.waiters.remove(fut)
                except ValueError:
                    pass

    async def _conn(self, r: _Replica):
        if r.conn is not None and not r.conn.closed:
            return r.conn
        if r.connecting is None:
            r.connecting = asyncio.ensure_future(_wire.connect_unix(
                r.path, self.secret, self._on_message(r), self._on_lost(r)))
        try:
            r.conn = await asyncio.shield(r.connecting)
        finally:
            if r.connecting is not None and r.connecting.done():
                r.connecting = None
        return r.conn

    # ------------------------------------------------------------ sending
    async def request(self, kind: int, payload, stream: bool, idempotent: bool,
                      exclude: str | None = None):
        """Send one request; returns its result, or (stream=True) an asyncio.Queue of items.

        A replica that cannot be reached is skipped; one that dies with the
        request in flight fails it, unless ``idempotent`` (retried once).
        ``exclude``: a replica not to send it to (the one passing it on).
        """
        deadline = time.monotonic() + _WAIT_FOR_REPLICAS_S
        loop = asyncio.get_running_loop()
        req = (kind, payload, stream, idempotent)
        entry = _Pending(loop.create_future(), asyncio.Queue() if stream else None, req)
        for _ in range(max(3, len(self.replicas) + 1)):
            r = await self._choose(deadline, exclude)
            try:
                conn = await self._conn(r)
            except (OSError, asyncio.TimeoutError, ServeError) as e:
                self._release(r)
                r.dead = True    # the controller replaces it; try another
                last = e
                continue
            self._send(r, conn, entry)
            break
        else:
            raise DeploymentUnavailableError(
                f"could not reach a replica of deployment {self.name!r}: {last}")
        if stream:
            return entry.queue
        return await entry.fut

    def _send(self, r: _Replica, conn, entry: _Pending) -> None:
        rid = next(self.ids)
        r.pending[rid] = entry
        kind, payload = entry.request[0], entry.request[1]
        conn.send((rid, kind, payload))

    def _release(self, r: _Replica) -> None:
        r.ongoing -= 1
        if r.id not in self.replicas and not r.pending and r.conn is not None:
            r.conn.close()
        self._wake()

    def _on_message(self, r: _Replica):
        def on_message(conn, msg):
            rid, status, value = msg
            entry = r.pending.get(rid)
            if entry is None:
                return
            if status == _wire.ITEM:
                entry.started = True
                entry.queue.put_nowait(value)
                return
            del r.pending[rid]
            self._release(r)
            if entry.queue is not None:
                deliver(entry.queue, status, value)
            elif status == _wire.OK:
                if not entry.fut.done():
                    entry.fut.set_result(value)
            elif not entry.fut.done():
                entry.fut.set_exception(value)
        return on_message

    def _on_lost(self, r: _Replica):
        def on_lost(conn):
            r.dead = True
            r.conn = None
            pending, r.pending = r.pending, {}
            for _ in pending:
                self._release(r)
            for entry in pending.values():
                if entry.request[3] and not entry.retried and not entry.started:
                    entry.retried = True
                    asyncio.ensure_future(self._retry(entry))
                else:
                    self._fail(entry, DeploymentUnavailableError(
                        f"the replica {r.id} of deployment {self.name!r} died while handling the "
                        "request; mark the method idempotent (@serve.idempotent) to have it "
                        "retried on another replica"))
        return on_lost

    async def _retry(self, entry: _Pending) -> None:
        try:
            deadline = time.monotonic() + _WAIT_FOR_REPLICAS_S
            r = await self._choose(deadline)
            conn = await self._conn(r)
            self._send(r, conn, entry)
        except Exception as e:  # noqa: BLE001 - delivered to the caller
            self._fail(entry, e)

    @staticmethod
    def _fail(entry: _Pending, err: BaseException) -> None:
        if entry.queue is not None:
            entry.queue.put_nowait(_Failure(err))
        elif not entry.fut.done():
            entry.fut.set_exception(err)


def _wake_one(fut) -> None:
    if not fut.done():
        fut.set_result(None)


class _Failure:
    __slots__ = ("error",)

    def __init__(self, error):
        self.error = error


def deliver(queue: asyncio.Queue, status: int, value) -> None:
    """Put one reply (a _wire status and its value) on a streamed response's queue."""
    if status == _wire.ITEM:
        queue.put_nowait(value)
    elif status == _wire.OK:
        queue.put_nowait(value)
        queue.put_nowait(_END)
    elif status == _wire.END:
        queue.put_nowait(_END)
    else:
        queue.put_nowait(_Failure(value))


async def next_item(queue: asyncio.Queue):
    """The next item of a streamed response; StopAsyncIteration at its end."""
    v = await queue.get()
    if v is _END:
        queue.put_nowait(_END)
        raise StopAsyncIteration
    if isinstance(v, _Failure):
        raise v.error
    return v
