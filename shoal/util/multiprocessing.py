"""The standard library's ``multiprocessing.Pool`` API, run by actors on the cluster.

A drop-in for ``from multiprocessing import Pool`` (as ``ray.util.multiprocessing``):
each pool process is an actor, so the work runs wherever the cluster has
room, on the local backend or on Ray.
"""
from __future__ import annotations

import itertools
import multiprocessing as _mp
import threading
import weakref

from shoal.core import api

__all__ = ["AsyncResult", "IMapIterator", "Pool", "TimeoutError"]

TimeoutError = _mp.TimeoutError   # what AsyncResult.get raises, as in the standard library


class _PoolProcess:
    """One process of a Pool: runs the initializer once, then chunks of calls."""

    def __init__(self, initializer, initargs):
        if initializer is not None:
            initializer(*initargs)

    def ping(self):
        return True

    def run_chunk(self, func, chunk, star):
        # Each call's error is kept in its place: the other calls of the chunk still count.
        out = []
        for args in chunk:
            try:
                out.append(func(*args) if star else func(args))
            except Exception as e:  # noqa: BLE001 - returned to the caller, in order
                out.append(_CallError(e))
        return out

    def run_one(self, func, args, kwds):
        return func(*args, **kwds)


class _CallError:
    """A call of a chunk raised: its error, in the call's place."""

    def __init__(self, error):
        self.error = error

    def __reduce__(self):
        return (_CallError, (self.error,))


_POOL_PROCESS = api.remote(_PoolProcess)


class AsyncResult:
    """The result of ``apply_async`` / ``map_async`` / ``starmap_async``.

    ``get(timeout)`` returns the value (or raises the call's error, or
    ``multiprocessing.TimeoutError``), ``wait(timeout)`` waits, ``ready()``
    and ``successful()`` ask without waiting.
    """

    def __init__(self, refs: list, single: bool, callback=None, error_callback=None):
        self._refs = refs
        self._single = single
        self._event = threading.Event()
        self._value = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        if callback is not None or error_callback is not None:
            threading.Thread(target=self._deliver, args=(callback, error_callback),
                             daemon=True, name="shoal-pool-callback").start()

    def _settle(self) -> None:
        with self._lock:
            if self._event.is_set():
                return
            try:
                values = api.get(self._refs)
                if self._single:
                    self._value = values[0]
                else:
                    self._value = list(itertools.chain.from_iterable(values))
                    failed = next((v for v in self._value if type(v) is _CallError), None)
                    if failed is not None:   # the first error, as the standard library
                        self._value, self._error = None, failed.error
            except Exception as e:  # noqa: BLE001 - kept for get() to raise
                self._error = e
            self._event.set()

    def _deliver(self, callback, error_callback) -> None:
        self._settle()
        if self._error is None:
            if callback is not None:
                callback(self._value)
        elif error_callback is not None:
            error_callback(self._error)

    def ready(self) -> bool:
        """Whether the work has finished (successfully or not)."""
        if self._event.is_set():
            return True
        ready, _ = api.wait(self._refs, num_returns=len(self._refs), timeout=0)
        return len(ready) == len(self._refs)

    def wait(self, timeout: float | None = None) -> None:
        """Wait until the work has finished, or ``timeout`` seconds."""
        if not self._event.is_set():
            api.wait(self._refs, num_returns=len(self._refs), timeout=timeout)

    def successful(self) -> bool:
        """Whether the work finished without raising; ValueError if it has not finished."""
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        self._settle()
        return self._error is None

    def get(self, timeout: float | None = None):
        """The result; raises the call's error, or TimeoutError after ``timeout`` seconds."""
        self.wait(timeout)
        if not self.ready():
            raise TimeoutError(f"the pool's result was not ready within {timeout}s")
        self._settle()
        if self._error is not None:
            raise self._error
        return self._value


class IMapIterator:
    """The iterator ``imap`` / ``imap_unordered`` return; ``next(timeout)`` bounds a wait.

    The input is read as the results are taken: a bounded window of chunks is
    in the pool at a time, so a long or endless iterable streams through. As in
    Ray's Pool, a call that raised yields its exception object in its place
    (the other results still come); a lost process raises.
    """

    def __init__(self, submit, chunks, window: int, ordered: bool):
        self._submit = submit               # chunk -> ref of its results
        self._chunks = chunks               # the rest of the input, chunk by chunk
        self._window = window
        self._pending: list = []
        self._ordered = ordered
        self._buffer: list = []
        self._fill()

    def _fill(self, limit: int | None = None) -> None:
        limit = self._window if limit is None else limit
        while self._chunks is not None and len(self._pending) < limit:
            chunk = next(self._chunks, None)
            if chunk is None:
                self._chunks = None
                break
            self._pending.append(self._submit(chunk))

    def _submit_rest(self) -> None:
        """Send every chunk not sent yet (``Pool.join`` waits for the whole input)."""
        self._fill(limit=float("inf"))

    def __iter__(self):
        return self

    def __next__(self):
        return self.next()

    def next(self, timeout: float | None = None):
        """The next result; StopIteration at the end, TimeoutError after ``timeout`` seconds."""
        if self._buffer:
            return self._buffer.pop(0)
        if not self._pending:
            raise StopIteration
        if self._ordered:
            ref = self._pending[0]
            ready, _ = api.wait([ref], timeout=timeout)
        else:
            ready, _ = api.wait(self._pending, num_returns=1, timeout=timeout)
        if not ready:
            raise TimeoutError(f"no result of the pool was ready within {timeout}s")
        ref = ready[0]
        self._pending.remove(ref)
        self._fill()
        self._buffer = [v.error if type(v) is _CallError else v for v in api.get(ref)]
        return self.next(timeout)


class Pool:
    """A pool of worker processes with the standard library's ``Pool`` API.

    Args:
        processes: how many actors run the work (default: the cluster's CPUs).
        initializer, initargs: ``initializer(*initargs)`` runs once in each process.
        maxtasksperchild: chunks a process runs before it is replaced by a fresh
            one (None: never replaced).
        context: accepted for compatibility; the processes are the cluster's.
        ray_remote_args: options of each process's actor (default ``num_cpus=0``,
            as Ray's: a pool inside a pool's call cannot starve for CPUs).
        ray_address: the cluster to start on (``shoal.init(address=...)``) when
            shoal is not started yet; otherwise a local one with ``processes`` CPUs.

    Raises ValueError when the cluster has fewer CPUs than ``processes``.
    Use it as a context manager (``terminate()`` on exit), or ``close()`` then
    ``join()``. Errors: ``map`` and ``AsyncResult.get`` raise the first
    call's error; ``imap`` yields it in its place, as Ray's Pool does.
    """

    def __init__(self, processes: int | None = None, initializer=None, initargs=(),
                 maxtasksperchild: int | None = None, context=None,
                 ray_remote_args: dict | None = None, ray_address=None):
        if processes is not None and (not isinstance(processes, int) or processes < 1):
            raise ValueError(f"processes must be an int >= 1, got {processes!r}")
        if not api.is_initialized():
            if ray_address is not None and ray_address != "local":
                api.init(address=ray_address)
            else:
                api.init(num_cpus=processes)
        cpus = api.cluster_resources().get("CPU", 0.0)
        if processes is None:
            processes = max(1, int(cpus))
        if processes > cpus:
            raise ValueError(f"a Pool of {processes} processes needs as many CPUs but the "
                             f"cluster has {cpus:g}; ask for fewer processes")
        if maxtasksperchild is not None and (not isinstance(maxtasksperchild, int)
                                              or maxtasksperchild < 1):
            raise ValueError(f"maxtasksperchild must be an int >= 1 or None, "
                             f"got {maxtasksperchild!r}")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        self._processes = processes
        self._initializer = initializer
        self._initargs = tuple(initargs)
        self._maxtasks = maxtasksperchild
        self._opts = {"num_cpus": 0, **(ray_remote_args or {})}
        self._actors = [self._new_actor() for _ in range(processes)]
        # Ready before the constructor returns: the initializers have run, as with processes.
        api.get([a.ping.remote() for a in self._actors])
        self._served = [0] * processes
        self._next = 0
        self._state = "running"
        self._outstanding: list = []
        self._imaps: weakref.WeakSet = weakref.WeakSet()   # imaps whose input is not all sent
        self._lock = threading.Lock()

    def _new_actor(self):
        return _POOL_PROCESS.options(**self._opts).remote(self._initializer, self._initargs)

    def _pick(self):
        """The next process, round robin; one that served maxtasksperchild is replaced."""
        i = self._next
        self._next = (i + 1) % self._processes
        if self._maxtasks is not None and self._served[i] >= self._maxtasks:
            # Its calls already sent finish first: the actor ends when its handle goes.
            self._actors[i] = self._new_actor()
            self._served[i] = 0
        self._served[i] += 1
        return self._actors[i]

    def _check_running(self) -> None:
        if self._state != "running":
            raise ValueError("Pool not running")

    def _submit_chunks(self, func, iterable, chunksize, star) -> list:
        self._check_running()
        items = list(iterable)
        if chunksize is None:
            chunksize, extra = divmod(len(items), self._processes * 4)
            chunksize += 1 if extra else 0
            chunksize = max(1, chunksize)
        if not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError(f"chunksize must be an int >= 1, got {chunksize!r}")
        fn = api.put(func) if items else None   # shipped once, not with every chunk
        with self._lock:
            refs = [self._pick().run_chunk.remote(fn, items[i:i + chunksize], star)
                    for i in range(0, len(items), chunksize)]
            self._outstanding.extend(refs)
        return refs

    # ---------------------------------------------------------------- one call
    def apply(self, func, args=(), kwds=None):
        """``func(*args, **kwds)`` in a pool process; its result."""
        return self.apply_async(func, args, kwds).get()

    def apply_async(self, func, args=(), kwds=None, callback=None, error_callback=None):
        """``func(*args, **kwds)`` in a pool process; an AsyncResult.

        ``callback(result)`` or ``error_callback(error)`` runs in a thread of
        this process when it finishes.
        """
        self._check_running()
        with self._lock:
            ref = self._pick().run_one.remote(func, tuple(args), dict(kwds or {}))
            self._outstanding.append(ref)
        return AsyncResult([ref], True, callback, error_callback)

    # ---------------------------------------------------------------- many calls
    def map(self, func, iterable, chunksize: int | None = None) -> list:
        """``[func(x) for x in iterable]``, computed in the pool."""
        return self.map_async(func, iterable, chunksize).get()

    def map_async(self, func, iterable, chunksize=None, callback=None, error_callback=None):
        """``map`` without waiting; an AsyncResult of the list."""
        return AsyncResult(self._submit_chunks(func, iterable, chunksize, False), False,
                           callback, error_callback)

    def starmap(self, func, iterable, chunksize: int | None = None) -> list:
        """``[func(*args) for args in iterable]``, computed in the pool."""
        return self.starmap_async(func, iterable, chunksize).get()

    def starmap_async(self, func, iterable, chunksize=None, callback=None, error_callback=None):
        """``starmap`` without waiting; an AsyncResult of the list."""
        return AsyncResult(self._submit_chunks(func, iterable, chunksize, True), False,
                           callback, error_callback)

    def imap(self, func, iterable, chunksize: int = 1) -> IMapIterator:
        """An iterator of ``func(x)`` in the order of ``iterable``, as results arrive."""
        return self._imap(func, iterable, chunksize, True)

    def imap_unordered(self, func, iterable, chunksize: int = 1) -> IMapIterator:
        """An iterator of ``func(x)`` in the order the results finish."""
        return self._imap(func, iterable, chunksize, False)

    def _imap(self, func, iterable, chunksize, ordered: bool) -> IMapIterator:
        self._check_running()
        if not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError(f"chunksize must be an int >= 1, got {chunksize!r}")
        fn = api.put(func)
        source = iter(iterable)
        chunks = iter(lambda: list(itertools.islice(source, chunksize)), [])

        def submit(chunk):
            with self._lock:
                if self._state == "terminated":
                    raise ValueError("Pool was terminated while its imap was being read")
                ref = self._pick().run_chunk.remote(fn, chunk, False)
                self._outstanding.append(ref)
            return ref

        # Two chunks per process: each has the next one queued while it works.
        it = IMapIterator(submit, chunks, 2 * self._processes, ordered)
        self._imaps.add(it)
        return it

    # ---------------------------------------------------------------- lifetime
    def close(self) -> None:
        """Accept no more work; what was submitted still runs (then ``join()``)."""
        if self._state == "running":
            self._state = "closed"

    def terminate(self) -> None:
        """Stop every process now; unfinished work is lost."""
        if self._state == "terminated":
            return
        self._state = "terminated"
        for a in self._actors:
            try:
                api.kill(a)
            except Exception:  # noqa: BLE001 - an actor already gone is what we want
                pass
        self._actors = []
        self._outstanding = []

    def join(self) -> None:
        """Wait for the submitted work to finish, then end the processes.

        Call ``close()`` or ``terminate()`` first (ValueError otherwise).
        """
        if self._state == "running":
            raise ValueError("Pool is still running; call close() or terminate() first")
        for it in list(self._imaps):
            it._submit_rest()
        if self._outstanding:
            api.wait(self._outstanding, num_returns=len(self._outstanding))
        self.terminate()

    def __enter__(self) -> "Pool":
        self._check_running()
        return self

    def __exit__(self, *exc) -> None:
        self.terminate()

    def __reduce__(self):
        raise TypeError("a Pool cannot be passed to tasks or pickled; "
                        "create it where it is used")
