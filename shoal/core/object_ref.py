"""ObjectRef: a handle to a value in the object store."""
from __future__ import annotations

import threading
from collections import deque


class RefCounter:
    """Counts the live ObjectRefs of each object id in this process.

    Only the transitions matter to the cluster: the first ref of an id in a
    process (+1) and the last one going away (-1). They are queued here and
    drained by the runtime at safe points, so ``__del__`` never takes the
    scheduler's lock.
    """

    def __init__(self) -> None:
        self._counts: dict = {}
        self._lock = threading.Lock()
        self.events: deque = deque()

    def add(self, oid) -> None:
        with self._lock:
            c = self._counts.get(oid, 0)
            self._counts[oid] = c + 1
            if c == 0:
                self.events.append((1, oid))

    def remove(self, oid) -> None:
        with self._lock:
            c = self._counts.get(oid, 0)
            if c <= 1:
                self._counts.pop(oid, None)
                if c == 1:
                    self.events.append((-1, oid))
            else:
                self._counts[oid] = c - 1

    def drain(self) -> list:
        out = []
        ev = self.events
        while ev:
            out.append(ev.popleft())
        return out

    def live(self) -> int:
        return len(self._counts)


# The counter of this process's runtime (None: refs are not counted, e.g. on Ray).
_counter: RefCounter | None = None
# Ids of refs pickled inside a value being serialized (set per serialization).
_collect = threading.local()


def set_counter(counter: RefCounter | None) -> None:
    global _counter
    _counter = counter


class ObjectRef:
    """A reference to an object that a task returns or ``shoal.put`` stores.

    Pass it to tasks (top-level arguments are resolved to values first) or
    resolve it with ``shoal.get``. The object is freed when no ref to it is
    left anywhere in the cluster.
    """

    __slots__ = ("id", "_counter", "__weakref__")

    def __init__(self, oid, counted: bool = True):
        self.id = oid
        # The counter of the runtime that made this ref: a ref outliving its
        # cluster must not touch the next one's counts.
        self._counter = _counter if counted else None
        if self._counter is not None:
            self._counter.add(oid)

    def __del__(self):
        if self._counter is not None:
            try:
                self._counter.remove(self.id)
            except Exception:  # interpreter shutdown
                pass

    def __reduce__(self):
        sink = getattr(_collect, "ids", None)
        if sink is not None:
            sink.append(self.id)
        return (_rebuild_ref, (self.id,))

    def __eq__(self, other):
        return isinstance(other, ObjectRef) and other.id == self.id

    def __hash__(self):
        return hash(self.id)

    def hex(self) -> str:
        return self.id.hex() if hasattr(self.id, "hex") and not isinstance(self.id, int) else f"{self.id:016x}"

    def __repr__(self):
        return f"ObjectRef({self.hex()})"

    def __await__(self):
        import asyncio

        from shoal.core import api
        loop = asyncio.get_event_loop()
        return loop.run_in_executor(None, api.get, self).__await__()

    def future(self):
        """A concurrent.futures.Future resolved with the object's value."""
        from concurrent.futures import Future

        from shoal.core import api
        fut: Future = Future()

        def run():
            try:
                fut.set_result(api.get(self))
            except BaseException as e:  # noqa: BLE001 - delivered to the future
                fut.set_exception(e)
        threading.Thread(target=run, daemon=True).start()
        return fut


def _rebuild_ref(oid) -> ObjectRef:
    return ObjectRef(oid)
