"""``@serve.batch``: gather concurrent calls into one call on a list.

The first call of a batch waits up to ``batch_wait_timeout_s`` for others
(or until ``max_batch_size`` are in), the method runs once on the list of
their arguments, and result ``i`` goes back to call ``i``.
"""
from __future__ import annotations

import asyncio
import functools
import inspect


class _Batcher:
    def __init__(self, fn, max_batch_size: int, timeout_s: float):
        self.fn, self.max, self.timeout = fn, max_batch_size, timeout_s
        self.queue: list = []
        self.full: asyncio.Event | None = None
        self.task: asyncio.Task | None = None

    async def submit(self, owner, item):
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self.queue.append((item, fut))
        if self.full is None:
            self.full = asyncio.Event()
        if len(self.queue) >= self.max:
            self.full.set()
        if self.task is None or self.task.done():
            self.task = loop.create_task(self._run(owner))
        return await fut

    async def _run(self, owner):
        while self.queue:
            if len(self.queue) < self.max:
                try:
                    await asyncio.wait_for(self.full.wait(), self.timeout)
                except asyncio.TimeoutError:
                    pass
            batch, self.queue = self.queue[:self.max], self.queue[self.max:]
            self.full.clear()
            if len(self.queue) >= self.max:
                self.full.set()
            items = [b[0] for b in batch]
            try:
                out = self.fn(owner, items) if owner is not None else self.fn(items)
                if inspect.isawaitable(out):
                    out = await out
                out = list(out)
                if len(out) != len(items):
                    raise ValueError(f"@serve.batch method {self.fn.__qualname__} returned "
                                     f"{len(out)} results for a batch of {len(items)}; "
                                     "return one result per input, in order")
                for (_, fut), r in zip(batch, out):
                    if not fut.done():
                        fut.set_result(r)
            except Exception as e:  # noqa: BLE001 - every caller of the batch gets it
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)


def batch(_fn=None, *, max_batch_size: int = 10, batch_wait_timeout_s: float = 0.01):
    """Gather concurrent calls of an async method into one call on a list (Ray Serve's
    ``@serve.batch``).

    The decorated method takes a list and returns a list of the same length;
    callers call it with one item and get their own result. ``max_batch_size``
    caps a batch; ``batch_wait_timeout_s`` is how long the first call waits for
    more. Give the deployment ``max_ongoing_requests >= max_batch_size``.
    """
    if not isinstance(max_batch_size, int) or max_batch_size < 1:
        raise ValueError(f"max_batch_size must be an int >= 1, got {max_batch_size!r}")
    if batch_wait_timeout_s < 0:
        raise ValueError(f"batch_wait_timeout_s must be >= 0, got {batch_wait_timeout_s!r}")

    def deco(fn):
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"@serve.batch needs an async method (async def); "
                            f"{fn.__qualname__} is not")
        params = list(inspect.signature(fn).parameters)
        is_method = bool(params) and params[0] == "self"
        attr = f"_shoal_batcher_{fn.__name__}"

        if is_method:
            @functools.wraps(fn)
            async def method(self, item):
                b = self.__dict__.get(attr)
                if b is None:
                    b = self.__dict__[attr] = _Batcher(fn, max_batch_size, batch_wait_timeout_s)
                return await b.submit(self, item)
            return method
        shared = _Batcher(fn, max_batch_size, batch_wait_timeout_s)

        @functools.wraps(fn)
        async def function(item):
            return await shared.submit(None, item)
        return function
    return deco(_fn) if _fn is not None else deco
