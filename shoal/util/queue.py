"""A first-in first-out queue shared by every process of the cluster, as ``ray.util.queue``.

The items live in an asyncio actor; ``Queue`` is a handle to it that can be
passed to tasks and actors. ``Empty`` and ``Full`` are the standard
library's ``queue.Empty`` / ``queue.Full`` as well as ShoalErrors.
"""
from __future__ import annotations

import asyncio
import queue as _stdlib_queue

from shoal.core import api
from shoal.exceptions import ShoalError

__all__ = ["Empty", "Full", "Queue"]


class Empty(ShoalError, _stdlib_queue.Empty):
    """``get`` found the queue empty (and could not wait longer)."""


class Full(ShoalError, _stdlib_queue.Full):
    """``put`` found the queue full (and could not wait longer)."""


class _QueueActor:
    """Holds the items; every method runs on the actor's event loop."""

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self.queue = asyncio.Queue(maxsize)

    def qsize(self) -> int:
        return self.queue.qsize()

    def empty(self) -> bool:
        return self.queue.empty()

    def full(self) -> bool:
        return self.queue.full()

    async def put(self, item, timeout=None) -> bool:
        try:
            await asyncio.wait_for(self.queue.put(item), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def get(self, timeout=None):
        try:
            return True, await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            return False, None

    def put_nowait(self, item) -> bool:
        try:
            self.queue.put_nowait(item)
            return True
        except asyncio.QueueFull:
            return False

    def put_nowait_batch(self, items) -> bool:
        if self.maxsize > 0 and len(items) + self.queue.qsize() > self.maxsize:
            return False   # all or nothing, as Ray's queue
        for item in items:
            self.queue.put_nowait(item)
        return True

    def get_nowait(self):
        try:
            return True, self.queue.get_nowait()
        except asyncio.QueueEmpty:
            return False, None

    def get_nowait_batch(self, num_items: int):
        if num_items > self.queue.qsize():
            return False, self.queue.qsize()
        return True, [self.queue.get_nowait() for _ in range(num_items)]


_QUEUE_ACTOR = api.remote(_QueueActor)


class Queue:
    """A FIFO queue every task and actor can put to and get from.

    Args:
        maxsize: the most items it holds (0: no limit).
        actor_options: options for the actor that holds the items (e.g.
            ``{"num_cpus": 0, "name": "q"}``).

    The handle pickles: pass it to tasks and actors. ``shutdown()`` ends it.
    """

    def __init__(self, maxsize: int = 0, actor_options: dict | None = None):
        if not isinstance(maxsize, int) or maxsize < 0:
            raise ValueError(f"maxsize must be an int >= 0, got {maxsize!r}")
        self.maxsize = maxsize
        opts = {"num_cpus": 0, **(actor_options or {})}
        self.actor = _QUEUE_ACTOR.options(**opts).remote(maxsize)

    def __len__(self) -> int:
        return self.size()

    def size(self) -> int:
        """The number of items in the queue."""
        return api.get(self.actor.qsize.remote())

    def qsize(self) -> int:
        """The number of items in the queue."""
        return self.size()

    def empty(self) -> bool:
        """Whether the queue holds no item."""
        return api.get(self.actor.empty.remote())

    def full(self) -> bool:
        """Whether the queue holds ``maxsize`` items."""
        return api.get(self.actor.full.remote())

    def put(self, item, block: bool = True, timeout: float | None = None) -> None:
        """Add ``item``; when full, wait up to ``timeout`` seconds (forever if None).

        ``block=False`` raises Full at once when full. Raises Full when the
        wait runs out, ValueError on a negative timeout.
        """
        if not block:
            if not api.get(self.actor.put_nowait.remote(item)):
                raise Full(f"the queue is full ({self.maxsize} items)")
            return
        _check_timeout(timeout)
        if not api.get(self.actor.put.remote(item, timeout)):
            raise Full(f"the queue stayed full ({self.maxsize} items) for {timeout}s")

    async def put_async(self, item, block: bool = True, timeout: float | None = None) -> None:
        """``put`` for asyncio code: await it."""
        if not block:
            if not await self.actor.put_nowait.remote(item):
                raise Full(f"the queue is full ({self.maxsize} items)")
            return
        _check_timeout(timeout)
        if not await self.actor.put.remote(item, timeout):
            raise Full(f"the queue stayed full ({self.maxsize} items) for {timeout}s")

    def get(self, block: bool = True, timeout: float | None = None):
        """Remove and return the first item; when empty, wait up to ``timeout`` seconds.

        ``block=False`` raises Empty at once when empty. Raises Empty when
        the wait runs out, ValueError on a negative timeout.
        """
        if not block:
            ok, item = api.get(self.actor.get_nowait.remote())
            if not ok:
                raise Empty("the queue is empty")
            return item
        _check_timeout(timeout)
        ok, item = api.get(self.actor.get.remote(timeout))
        if not ok:
            raise Empty(f"the queue stayed empty for {timeout}s")
        return item

    async def get_async(self, block: bool = True, timeout: float | None = None):
        """``get`` for asyncio code: await it."""
        if not block:
            ok, item = await self.actor.get_nowait.remote()
            if not ok:
                raise Empty("the queue is empty")
            return item
        _check_timeout(timeout)
        ok, item = await self.actor.get.remote(timeout)
        if not ok:
            raise Empty(f"the queue stayed empty for {timeout}s")
        return item

    def put_nowait(self, item) -> None:
        """``put(item, block=False)``."""
        self.put(item, block=False)

    def put_nowait_batch(self, items) -> None:
        """Add every item of ``items``, or none: raises Full if they do not all fit."""
        items = list(items)
        if not api.get(self.actor.put_nowait_batch.remote(items)):
            raise Full(f"{len(items)} items do not fit in the queue (maxsize {self.maxsize})")

    def get_nowait(self):
        """``get(block=False)``."""
        return self.get(block=False)

    def get_nowait_batch(self, num_items: int) -> list:
        """Remove and return ``num_items`` items, or none: raises Empty if fewer are there."""
        if not isinstance(num_items, int) or num_items < 0:
            raise ValueError(f"num_items must be an int >= 0, got {num_items!r}")
        ok, got = api.get(self.actor.get_nowait_batch.remote(num_items))
        if not ok:
            raise Empty(f"asked for {num_items} items but the queue holds {got}")
        return got

    def shutdown(self, force: bool = False, grace_period_s: int = 5) -> None:
        """End the queue's actor; items still in it are lost.

        ``force=True`` kills it at once; otherwise calls already sent get
        ``grace_period_s`` seconds to finish first.
        """
        if self.actor is None:
            return
        if not force:
            try:
                api.get(self.actor.qsize.remote(), timeout=grace_period_s)
            except Exception:  # noqa: BLE001 - it is being ended either way
                pass
        api.kill(self.actor)
        self.actor = None


def _check_timeout(timeout) -> None:
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout must be a number >= 0 or None, got {timeout!r}")
