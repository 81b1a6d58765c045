"""Generator tasks: ``num_returns="streaming"`` and ``num_returns="dynamic"``, as Ray.

A task or actor method that ``yield``\\ s, called with
``num_returns="streaming"``, returns an ``ObjectRefGenerator`` at once:
``next()`` on it waits for the next item the task yields and returns its
ObjectRef; StopIteration follows the last. If the task raises after some
items, the next ref raises that error (then StopIteration). ``shoal.cancel``
on the generator stops the task.

With ``num_returns="dynamic"`` the task returns one ObjectRef whose value,
once the task has finished, is a ``DynamicObjectRefGenerator``: the refs of
every item (and of the error last, if it raised).
"""
from __future__ import annotations

import time

from shoal.exceptions import GetTimeoutError

__all__ = ["DynamicObjectRefGenerator", "ObjectRefGenerator"]


class ObjectRefGenerator:
    """The ObjectRefs of the items a streaming task yields, as it yields them.

    Iterate it (``for ref in gen``, or ``async for``); ``next(gen)`` blocks
    until the next item exists. ``completed()`` is the ref of the task
    itself (ready when it ends; raises its error). Pass it to
    ``shoal.cancel`` to stop the task.
    """

    def __init__(self, task_ref, runtime_name: str, ray_generator=None):
        self._task_ref = task_ref          # shoal ObjectRef of the task's end
        self._backend = runtime_name
        self._ray = ray_generator          # Ray's own generator on the Ray backend
        self._index = 0
        self._finished = False
        self._peeked = None

    def __iter__(self) -> "ObjectRefGenerator":
        return self

    def __next__(self):
        return self._next(None)

    def _next(self, timeout):
        if self._peeked is not None:
            ref, self._peeked = self._peeked, None
            return ref
        if self._finished:
            raise StopIteration
        from shoal.core import api
        ref = api._runtime().stream_next(self, timeout)
        if ref is None:
            self._finished = True
            raise StopIteration
        self._index += 1
        return ref

    def next_ready(self) -> bool:
        """Whether ``next()`` would return (or stop) without waiting."""
        if self._peeked is not None or self._finished:
            return True
        try:
            self._peeked = self._next(0)
        except GetTimeoutError:
            return False
        except StopIteration:
            pass
        return True

    def __aiter__(self) -> "ObjectRefGenerator":
        return self

    async def __anext__(self):
        import asyncio
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(None, self._next, None)
        except StopIteration:
            raise StopAsyncIteration from None

    def completed(self):
        """The ObjectRef of the task's end: ready when it returns, raises if it failed."""
        return self._task_ref

    def is_finished(self) -> bool:
        """Whether every item has been taken (the next ``next()`` raises StopIteration)."""
        return self._finished

    def __reduce__(self):
        raise TypeError("an ObjectRefGenerator cannot be passed to another task; pass the "
                        "ObjectRefs it yields")

    def __repr__(self) -> str:
        return f"ObjectRefGenerator({self._task_ref!r}, taken={self._index})"


class DynamicObjectRefGenerator:
    """The value of a ``num_returns="dynamic"`` task: the ObjectRefs of its items.

    Iterate it for the refs in the order the task yielded them; if the task
    raised, the last ref raises its error. ``len()`` is the number of refs.
    """

    def __init__(self, refs: list, error: BaseException | None = None):
        self._refs = list(refs)
        self._error = error      # the task's error, where it is made (not sent)

    def __iter__(self):
        return iter(self._refs)

    def __len__(self) -> int:
        return len(self._refs)

    def __reduce__(self):
        return (DynamicObjectRefGenerator, (self._refs,))

    def __repr__(self) -> str:
        return f"DynamicObjectRefGenerator({len(self._refs)} refs)"


def _deadline_left(deadline):
    """Seconds left until ``deadline`` (None: no bound); raises once it has passed."""
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise GetTimeoutError("no item of the generator was ready in time")
    return left
