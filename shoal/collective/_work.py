"""Handles of asynchronous collectives and the per-communicator op queue.

Collectives must run in the same order on every rank, so every op of a
communicator runs in submission order: a synchronous call runs inline when
nothing is queued, otherwise it queues behind the pending async ops and waits.
Async ops run on one background thread per communicator, which is also where
tensor fusion happens (see _fusion).
"""
from __future__ import annotations

import threading
from collections import deque

from shoal.exceptions import CollectiveError


class Work:
    """The handle of an async collective: ``wait()`` returns its result."""

    def __init__(self, description: str = ""):
        self._event = threading.Event()
        self._result = None
        self._error: BaseException | None = None
        self.description = description

    def _finish(self, result=None, error: BaseException | None = None) -> None:
        self._result, self._error = result, error
        self._event.set()

    def is_completed(self) -> bool:
        """True once the op finished (successfully or not)."""
        return self._event.is_set()

    def wait(self, timeout: float | None = None):
        """Block until the op finished; returns its result, raises its error.

        Raises:
            CollectiveError: the op failed, or did not finish within ``timeout``.
        """
        if not self._event.wait(timeout):
            raise CollectiveError(f"{self.description or 'collective'} did not finish within "
                                  f"{timeout}s (wait again, or check the other ranks)")
        if self._error is not None:
            raise self._error
        return self._result

    def result(self):
        """Block until the op finished and return its result (``wait()`` without a timeout)."""
        return self.wait()


class _Item:
    __slots__ = ("fn", "args", "work", "fusion_key", "nbytes")

    def __init__(self, fn, args, work, fusion_key=None, nbytes=0):
        self.fn, self.args, self.work = fn, args, work
        self.fusion_key, self.nbytes = fusion_key, nbytes


class OpQueue:
    """Runs ops in submission order; async ones on a background thread."""

    def __init__(self, name: str, fuse=None):
        self._lock = threading.RLock()
        self.exec_lock = threading.Lock()  # held while an op runs
        self._runner: int | None = None    # the thread running an op now
        self._cond = threading.Condition(self._lock)
        self._items: deque[_Item] = deque()
        self._inflight = 0
        self._thread: threading.Thread | None = None
        self._closed = False
        self._name = name
        self._fuse = fuse  # callable(list[_Item], OpQueue) handling fusible heads, or None

    def run(self, fn, args, async_op: bool, description: str, fusion_key=None, nbytes: int = 0):
        if self._runner == threading.get_ident():
            return fn(*args)  # an op composed of other ops (e.g. scatter's metadata broadcast)
        if not async_op:
            with self._lock:
                inline = self._inflight == 0
                if inline:
                    self.exec_lock.acquire()
            if inline:
                try:
                    self._runner = threading.get_ident()
                    return fn(*args)
                finally:
                    self._runner = None
                    self.exec_lock.release()
            return self.submit(fn, args, description, None, 0).wait()
        return self.submit(fn, args, description, fusion_key, nbytes)

    def submit(self, fn, args, description: str, fusion_key=None, nbytes: int = 0) -> Work:
        work = Work(description)
        with self._cond:
            if self._closed:
                raise CollectiveError("the communicator was destroyed; form a new group")
            self._items.append(_Item(fn, args, work, fusion_key, nbytes))
            self._inflight += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, daemon=True,
                                                name=f"shoal-collective-{self._name}")
                self._thread.start()
            self._cond.notify_all()
        return work

    def take(self, timeout: float | None) -> _Item | None:
        """Next queued item (waiting up to ``timeout``; None: none came)."""
        with self._cond:
            if not self._items and timeout:
                self._cond.wait(timeout)
            return self._items.popleft() if self._items else None

    def peek(self) -> _Item | None:
        with self._lock:
            return self._items[0] if self._items else None

    def push_front(self, items: list[_Item]) -> None:
        with self._lock:
            self._items.extendleft(reversed(items))

    def done(self, n: int = 1) -> None:
        with self._cond:
            self._inflight -= n
            self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._closed:
                    self._cond.wait()
                if not self._items:
                    return
                item = self._items.popleft()
            if item.fusion_key is not None and self._fuse is not None:
                self._fuse(item, self)
                continue
            self.execute(item)

    def execute(self, item: _Item) -> None:
        try:
            with self.exec_lock:
                self._runner = threading.get_ident()
                try:
                    result = item.fn(*item.args)
                finally:
                    self._runner = None
            item.work._finish(result)
        except BaseException as e:  # delivered to whoever waits on the handle
            item.work._finish(error=e)
        finally:
            self.done()

    def close(self, error: BaseException | None = None) -> None:
        with self._cond:
            self._closed = True
            pending = list(self._items)
            self._items.clear()
            self._cond.notify_all()
        for it in pending:
            it.work._finish(error=error or CollectiveError("the communicator was destroyed "
                                                           "before this op ran"))
            self.done()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
