"""ActorPool: spread work over a fixed set of actors, as ``ray.util.ActorPool``."""
from __future__ import annotations

from collections import deque

from shoal.core import api
from shoal.exceptions import ActorDiedError, GetTimeoutError


def _refs_of(future) -> list:
    return list(future) if isinstance(future, (list, tuple)) else [future]


def _key_of(future):
    return tuple(future) if isinstance(future, (list, tuple)) else future


class ActorPool:
    """Run ``fn(actor, value)`` calls on whichever actor of a pool is free.

    ``fn`` takes an actor handle and a value and returns the ObjectRef (or
    list of refs) of a call on that actor, e.g. ``lambda a, v:
    a.double.remote(v)``. An actor is busy until the result of its call has
    been taken with ``get_next`` / ``get_next_unordered``; values submitted
    while every actor is busy wait in the pool, in order.

    Args:
        actors: the actor handles the pool runs calls on.
    """

    def __init__(self, actors: list):
        self._idle = list(actors)
        self._busy: dict = {}          # future key -> (submission index, actor)
        self._futures: dict = {}       # submission index -> future
        self._next_submit = 0
        self._next_return = 0
        self._pending_submits: deque = deque()  # (fn, value) waiting for a free actor
        self._done: deque = deque()    # future keys known finished, for unordered gets

    # ---------------------------------------------------------------- submitting
    def submit(self, fn, value) -> None:
        """Schedule ``fn(actor, value)`` on a free actor, or queue it until one is free.

        Take the result with ``get_next()`` (submission order) or
        ``get_next_unordered()`` (completion order).
        """
        if not self._idle:
            self._pending_submits.append((fn, value))
            return
        actor = self._idle.pop()
        future = fn(actor, value)
        self._busy[_key_of(future)] = (self._next_submit, actor)
        self._futures[self._next_submit] = future
        self._next_submit += 1

    def map(self, fn, values):
        """Apply ``fn(actor, value)`` to every value; an iterator of the results in order.

        Results not yet taken from earlier submissions are dropped first, as
        Ray does. Iterate the result to run the work to the end.
        """
        self._drop_pending(ordered=True)
        for v in values:
            self.submit(fn, v)

        def results():
            while self.has_next():
                yield self.get_next()
        return results()

    def map_unordered(self, fn, values):
        """Like ``map``, but yields each result as soon as it is ready."""
        self._drop_pending(ordered=False)
        for v in values:
            self.submit(fn, v)

        def results():
            while self.has_next():
                yield self.get_next_unordered()
        return results()

    def _drop_pending(self, ordered: bool) -> None:
        while self.has_next():
            try:
                if ordered:
                    self.get_next(timeout=0, ignore_if_timedout=True)
                else:
                    self.get_next_unordered(timeout=0, ignore_if_timedout=True)
            except TimeoutError:
                pass
            except Exception:  # noqa: BLE001 - a dropped result's error is not the new map's
                pass

    # ---------------------------------------------------------------- results
    def has_next(self) -> bool:
        """Whether a submitted call's result has not been taken yet."""
        return bool(self._busy)

    def get_next(self, timeout: float | None = None, ignore_if_timedout: bool = False):
        """The next result in submission order, waiting up to ``timeout`` seconds.

        Raises StopIteration when nothing is pending, TimeoutError (a
        GetTimeoutError) when the result is not ready in time (with
        ``ignore_if_timedout=True`` the call is given up and skipped first),
        and the call's own error if it raised. ValueError after
        ``get_next_unordered`` has taken results out of order.
        """
        if not self.has_next():
            raise StopIteration("No more results to get")
        if self._next_return >= self._next_submit:
            raise ValueError("get_next() cannot follow get_next_unordered(); "
                             "use get_next_unordered() for the remaining results")
        future = self._futures[self._next_return]
        timed_out = False
        if timeout is not None:
            refs = _refs_of(future)
            ready, _ = api.wait(refs, num_returns=len(refs), timeout=timeout)
            if len(ready) < len(refs):
                if not ignore_if_timedout:
                    raise GetTimeoutError(f"Timed out waiting for result after {timeout}s")
                timed_out = True
        del self._futures[self._next_return]
        self._next_return += 1
        _, actor = self._busy.pop(_key_of(future))
        if timed_out:
            self._return_actor(actor)
            raise GetTimeoutError(f"Timed out waiting for result after {timeout}s; the call "
                                  f"{future!r} was given up")
        return self._result(future, actor)

    def get_next_unordered(self, timeout: float | None = None, ignore_if_timedout: bool = False):
        """Any finished result (the first to finish), waiting up to ``timeout`` seconds.

        Raises as ``get_next`` does.
        """
        if not self.has_next():
            raise StopIteration("No more results to get")
        key = self._take_done()
        if key is None:
            refs = [r for k in self._busy for r in _refs_of(k)]
            ready, _ = api.wait(refs, num_returns=len(refs), timeout=0)
            if not ready:
                ready, _ = api.wait(refs, num_returns=1, timeout=timeout)
            ready_set = set(ready)
            for k in self._busy:
                if all(r in ready_set for r in _refs_of(k)):
                    self._done.append(k)
            key = self._take_done()
        timed_out = key is None
        if timed_out:
            if not ignore_if_timedout:
                raise GetTimeoutError(f"Timed out waiting for result after {timeout}s")
            key = next(iter(self._busy))
        index, actor = self._busy.pop(key)
        future = self._futures.pop(index)
        self._next_return = max(self._next_return, index + 1)
        if timed_out:
            self._return_actor(actor)
            raise GetTimeoutError(f"Timed out waiting for result after {timeout}s; the call "
                                  f"{future!r} was given up")
        return self._result(future, actor)

    def _take_done(self):
        while self._done:
            k = self._done.popleft()
            if k in self._busy:
                return k
        return None

    def _result(self, future, actor):
        alive = True
        try:
            return api.get(future)
        except ActorDiedError:
            alive = False   # a dead actor must not be picked again
            raise
        finally:
            self._return_actor(actor, alive)

    def _return_actor(self, actor, alive: bool = True) -> None:
        if alive:
            self._idle.append(actor)
        while self._pending_submits and self._idle:
            self.submit(*self._pending_submits.popleft())

    # ---------------------------------------------------------------- membership
    def has_free(self) -> bool:
        """Whether an actor is idle and no submitted value is waiting for one."""
        return bool(self._idle) and not self._pending_submits

    def pop_idle(self):
        """Take an idle actor out of the pool; None when none is free."""
        return self._idle.pop() if self.has_free() else None

    def push(self, actor) -> None:
        """Add ``actor`` to the pool (it takes waiting work at once).

        Raises ValueError if the actor is already in the pool.
        """
        if actor in self._idle or any(a == actor for _, a in self._busy.values()):
            raise ValueError("Actor already belongs to current ActorPool")
        self._return_actor(actor)
