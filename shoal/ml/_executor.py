"""Where shoal.ml's per-block work runs: in this process or as shoal tasks.

``LocalExecutor`` maps over in-process blocks with a thread pool; ``ClusterExecutor`` maps
over blocks held in the object store as shoal tasks and folds partial results in tasks,
``fan_in`` at a time. ``set_executor``/``use_executor`` choose: "auto" (default: the cluster
for Datasets and for inputs of at least CLUSTER_MIN_ELEMENTS values, once shoal's core is
importable, and never from inside a task), "local" or "cluster".

Iterative fits (L-BFGS, Lloyd) wrap their passes in ``held_by_shards``: on the cluster the
blocks are then held by a session-wide pool of shard actors, mapped once for the fit, and
each pass is one call per shard (see ``_BlockShard``).
"""
from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np

from shoal.exceptions import InvalidInputError

CLUSTER_MIN_ELEMENTS = 1 << 21      # below ~16 MB of float64, task overhead beats parallelism
DEFAULT_FAN_IN = 8
LARGE_ARG_BYTES = 1 << 16

_executor_mode = "auto"
_mode_lock = threading.Lock()


def set_executor(mode: str) -> None:
    """Choose where shoal.ml maps over blocks: "auto", "local" or "cluster"."""
    global _executor_mode
    if mode not in ("auto", "local", "cluster"):
        raise InvalidInputError(f"executor must be 'auto', 'local' or 'cluster', got {mode!r}")
    with _mode_lock:
        _executor_mode = mode


def get_executor_mode() -> str:
    return _executor_mode


@contextlib.contextmanager
def use_executor(mode: str):
    """Context manager form of ``set_executor``."""
    old = _executor_mode
    set_executor(mode)
    try:
        yield
    finally:
        set_executor(old)


def _shoal_core():
    """The shoal module when its task API is importable, else None."""
    try:
        import shoal
        if hasattr(shoal, "remote") and hasattr(shoal, "get") and hasattr(shoal, "put"):
            return shoal
    except Exception:  # the core package may be mid-development
        return None
    return None


def _is_dataset(X) -> bool:
    return hasattr(X, "get_internal_block_refs") or hasattr(X, "_block_refs")


def _dataset_block_refs(ds) -> list:
    if hasattr(ds, "get_internal_block_refs"):
        return list(ds.get_internal_block_refs())
    return list(ds._block_refs())


# ----------------------------------------------------------------------------------
# reductions

def tree_sum(a, b):
    """Elementwise sum of two partial results: numbers, arrays, or tuples/lists/dicts of them."""
    if isinstance(a, tuple):
        return tuple(tree_sum(x, y) for x, y in zip(a, b))
    if isinstance(a, list):
        return [tree_sum(x, y) for x, y in zip(a, b)]
    if isinstance(a, dict):
        return {k: tree_sum(a[k], b[k]) for k in a}
    if a is None:
        return b
    return a + b


def _fold(reduce: Callable, parts: Sequence):
    acc = parts[0]
    for p in parts[1:]:
        acc = reduce(acc, p)
    return acc


# ----------------------------------------------------------------------------------
# executors

def _run_block(fn, block, *args):
    X, y = block
    return fn(X, y, *args)


def _run_block_indexed(fn, block, index, *args):
    X, y = block
    return fn(X, y, index, *args)


def _fold_task(reduce, *parts):
    return _fold(reduce, parts)


class LocalExecutor:
    """Maps over in-process blocks with a thread pool (BLAS and NumPy release the GIL)."""

    name = "local"

    def __init__(self, max_workers: int | None = None, pool: ThreadPoolExecutor | None = None):
        self.max_workers = max_workers or os.cpu_count() or 1
        self._pool = pool       # a pool kept across passes (held_threads), else one per map

    def put(self, block):
        return block

    def map(self, fn, blocks, args, indexed=False):
        def run(i):
            X, y = blocks[i]
            return fn(X, y, i, *args) if indexed else fn(X, y, *args)
        if len(blocks) <= 1 or self.max_workers <= 1:
            return [run(i) for i in range(len(blocks))]
        if self._pool is not None:
            return list(self._pool.map(run, range(len(blocks))))
        with ThreadPoolExecutor(min(self.max_workers, len(blocks))) as pool:
            return list(pool.map(run, range(len(blocks))))

    def map_reduce(self, fn, blocks, args, reduce, fan_in):
        return _fold(reduce, self.map(fn, blocks, args))

    def get_blocks(self, blocks):
        return list(blocks)


class ClusterExecutor:
    """Maps over blocks held in shoal's object store as tasks; folds partial results in tasks."""

    name = "cluster"

    def __init__(self, shoal_module):
        self._shoal = shoal_module
        self._run = shoal_module.remote(_run_block)
        self._fold = shoal_module.remote(_fold_task)

    def put(self, block):
        return self._shoal.put(block)

    def _prepare_args(self, args):
        # a big argument (centroids, a coefficient matrix) travels once, not once per block
        return tuple(self._shoal.put(a) if isinstance(a, np.ndarray) and a.nbytes >= LARGE_ARG_BYTES
                     else a for a in args)

    def submit(self, fn, blocks, args, indexed=False):
        args = self._prepare_args(args)
        if indexed:
            run = self._shoal.remote(_run_block_indexed)
            return [run.remote(fn, b, i, *args) for i, b in enumerate(blocks)]
        return [self._run.remote(fn, b, *args) for b in blocks]

    def map(self, fn, blocks, args, indexed=False):
        return self._shoal.get(self.submit(fn, blocks, args, indexed))

    def map_reduce(self, fn, blocks, args, reduce, fan_in):
        refs = self.submit(fn, blocks, args)
        while len(refs) > fan_in:
            refs = [self._fold.remote(reduce, *refs[i:i + fan_in]) for i in range(0, len(refs), fan_in)]
        return _fold(reduce, self._shoal.get(refs))

    def get_blocks(self, blocks):
        return self._shoal.get(list(blocks))


def resolve_executor(mode: str | None, n_elements: int, is_dataset: bool):
    mode = mode or _executor_mode
    core = _shoal_core()
    if mode == "local":
        if is_dataset and core is None:
            raise InvalidInputError("a shoal.data Dataset needs shoal's core runtime; it is not importable")
        return LocalExecutor() if not is_dataset else ClusterExecutor(core)
    if mode == "cluster":
        if core is None:
            raise InvalidInputError("executor='cluster' needs shoal's core runtime (shoal.remote); "
                                    "it is not importable. Use set_executor('local').")
        return ClusterExecutor(core)
    if core is not None and is_dataset:
        return ClusterExecutor(core)
    if core is not None and n_elements >= CLUSTER_MIN_ELEMENTS and not _inside_task(core):
        return ClusterExecutor(core)
    return LocalExecutor()


def _inside_task(core) -> bool:
    """True in a shoal worker running a task or actor: there the task is the unit of parallelism."""
    try:
        if not core.is_initialized():
            return False
        ctx = core.get_runtime_context()
        return ctx.task_id is not None or ctx.actor_id is not None
    except Exception:
        return False


def _num_workers(executor) -> int:
    if isinstance(executor, ClusterExecutor):
        try:
            return max(1, int(executor._shoal.cluster_resources().get("CPU", 1)))
        except Exception:
            return os.cpu_count() or 1
    return executor.max_workers


def map_dataset_blocks(ds, fn: Callable, *args) -> list:
    """[fn(block, *args) for each raw (Arrow) block of a Dataset], run as shoal tasks."""
    core = _shoal_core()
    if core is None:
        raise InvalidInputError("a shoal.data Dataset needs shoal's core runtime; it is not importable")
    task = core.remote(fn)
    return core.get([task.remote(b, *args) for b in _dataset_block_refs(ds)])


# ----------------------------------------------------------------------------------
# blocks held by actors across the passes of an iterative fit

def kill_actors(shoal, actors) -> None:
    """Kill each actor; one already gone is fine (its worker died, its cluster shut down)."""
    for a in actors:
        try:
            shoal.kill(a)
        except Exception:  # noqa: BLE001, S110 - already gone: nothing to release
            pass


class _BlockShard:
    """An actor holding some blocks of a design matrix, mapped once for a whole fit.

    A task maps its block's shared memory afresh each time (on this kind of VM the page
    faults of a 20 MB block cost about 1.5 ms, each pass, each block); a shard maps its
    blocks once and runs every pass of an iterative fit (Lloyd steps, L-BFGS evaluations)
    over them: one call per shard instead of one task per block.
    """

    def __init__(self):
        self.first, self.blocks, self.hosted = 0, (), None
        # what the passes run: imported while the pool starts, not in a fit's first pass.
        # Not the compiled kernels (KMeans, trees): loading Numba takes about 0.7 s of CPU
        # per process, which slowed the linear models' fits running while the pool started
        # (LogisticRegression at 1M: the pool came into use one fit later, 0.74 -> 1.02 s
        # fastest of 3); they load when a fit first calls them here.
        import scipy.sparse  # noqa: F401
        import shoal.ml._kernels  # noqa: F401

    def hold(self, first: int, *blocks) -> int:
        self.first, self.blocks = first, blocks
        return len(blocks)

    def host(self, factory, *args) -> None:
        """Build an object that lives here until ``release`` (a tree fit's HistShard)."""
        self.hosted = factory(*args)

    def call_hosted(self, method: str, *args):
        return getattr(self.hosted, method)(*args)

    def release(self) -> None:
        self.first, self.blocks, self.hosted = 0, (), None

    def map(self, fn, indexed, *args):
        return [fn(X, y, self.first + i, *args) if indexed else fn(X, y, *args)
                for i, (X, y) in enumerate(self.blocks)]

    def map_reduce(self, fn, reduce, *args):
        return _fold(reduce, [fn(X, y, *args) for X, y in self.blocks])


class _ShardPool:
    """One shard actor per CPU of the cluster, kept for the session's iterative fits.

    Starting the actors' processes takes about half a second: a fit over many blocks
    (``EAGER_BLOCKS`` or more) starts the pool and waits for it, a smaller fit runs its
    passes as tasks and starts the pool in the background when it ends, for the fits
    after it. The actors reserve no CPU: they compute only while the driver waits on
    them. One fit holds the pool at a time; a fit that finds it busy (or not started
    yet) runs its passes as tasks.
    """

    EAGER_BLOCKS = 8
    _lock = threading.Lock()
    _pool = None            # (runtime, [actors], [readiness refs])
    _busy = False

    @classmethod
    def _current(cls, rt, n):
        p = cls._pool
        return p if p is not None and p[0] is rt and len(p[1]) >= n else None

    @classmethod
    def _start(cls, shoal, rt, n):
        if cls._pool is not None and cls._pool[0] is rt:
            kill_actors(shoal, cls._pool[1])
        actor = shoal.remote(_BlockShard)
        actors = [actor.options(num_cpus=0).remote() for _ in range(n)]
        cls._pool = (rt, actors, [a.hold.remote(0) for a in actors])

    @classmethod
    def acquire(cls, shoal, n: int, n_blocks: int):
        from shoal.core.api import _runtime
        with cls._lock:
            if cls._busy:
                return None
            rt = _runtime()
            pool = cls._current(rt, n)
            if pool is None:
                if n_blocks < cls.EAGER_BLOCKS:
                    return None               # started after this fit (see start_later)
                cls._start(shoal, rt, n)
                pool = cls._pool
            elif n_blocks < cls.EAGER_BLOCKS:
                _, pending = shoal.wait(pool[2], num_returns=len(pool[2]), timeout=0)
                if pending:
                    return None               # still starting: not worth waiting for
            cls._busy = True
            return pool[1][:n]

    @classmethod
    def start_later(cls, shoal, n: int) -> None:
        """Start the pool (in the background) if this session has none yet; not from inside
        a task or actor (a worker's pool would outlive the task, idle)."""
        from shoal.core.api import _runtime
        if _inside_task(shoal):
            return
        with cls._lock:
            rt = _runtime()
            if cls._current(rt, n) is None and not cls._busy:
                cls._start(shoal, rt, n)

    @classmethod
    def give_back(cls, broken: bool, shoal) -> None:
        with cls._lock:
            cls._busy = False
            if broken and cls._pool is not None:
                kill_actors(shoal, cls._pool[1])
                cls._pool = None


class ShardExecutor(ClusterExecutor):
    """A ClusterExecutor whose maps over one block list run on shard actors holding them.

    Maps over other blocks, and every call after a shard died, go to tasks (with their
    retries), so a lost worker costs speed, never the fit.
    """

    def __init__(self, base: ClusterExecutor, blocks: list, shards: list):  # noqa: D107
        self._shoal, self._run, self._fold = base._shoal, base._run, base._fold
        self._blocks = blocks
        groups = [list(g) for g in np.array_split(np.arange(len(blocks)), len(shards)) if len(g)]
        self.shards = shards[:len(groups)]
        self.broken = False
        try:
            self._shoal.get([s.hold.remote(int(g[0]), *[blocks[i] for i in g])
                             for s, g in zip(self.shards, groups)])
        except Exception:  # noqa: BLE001 - a shard that cannot take its blocks: use tasks
            self.broken, self.shards = True, []

    def _on_shards(self, blocks, method: str, *args):
        """Results per shard, or None when these are not the shards' blocks or a shard died."""
        if blocks is not self._blocks or not self.shards:
            return None
        from shoal.exceptions import ActorDiedError, WorkerCrashedError
        args = self._prepare_args(args)
        try:
            return self._shoal.get([getattr(s, method).remote(*args) for s in self.shards])
        except (ActorDiedError, WorkerCrashedError):
            self.broken, self.shards = True, []     # a shard died: this and later passes run as tasks
            return None

    def map(self, fn, blocks, args, indexed=False):
        parts = self._on_shards(blocks, "map", fn, indexed, *args)
        if parts is None:
            return super().map(fn, blocks, args, indexed)
        return [r for p in parts for r in p]

    def map_reduce(self, fn, blocks, args, reduce, fan_in):
        parts = self._on_shards(blocks, "map_reduce", fn, reduce, *args)
        if parts is None:
            return super().map_reduce(fn, blocks, args, reduce, fan_in)
        return _fold(reduce, parts)

    def close(self) -> None:
        if self.shards:
            try:
                self._shoal.get([s.release.remote() for s in self.shards])
            except Exception:  # noqa: BLE001
                self.broken = True
        self.shards = []


def pool_size(shoal) -> int:
    """Shard actors in the session's pool: one per CPU of the cluster."""
    try:
        return max(1, int(shoal.cluster_resources().get("CPU", 1)))
    except Exception:  # noqa: BLE001 - a backend without resource accounting
        return 1


@contextlib.contextmanager
def held_threads(dm):
    """``dm`` with its in-process maps run by one thread pool kept for the passes of an
    iterative fit: starting a pool's threads costs 0.1-1 ms a pass (more on a loaded
    machine), as much as a compiled pass over 100k rows. The functions mapped must not
    map over the same design matrix themselves (they would wait on the pool they hold).
    Other design matrices come back unchanged."""
    ex = dm.executor
    if type(ex) is not LocalExecutor or ex.max_workers <= 1 or len(dm.blocks) < 2:
        yield dm
        return
    import dataclasses
    with ThreadPoolExecutor(min(ex.max_workers, len(dm.blocks))) as pool:
        yield dataclasses.replace(dm, executor=LocalExecutor(ex.max_workers, pool))


@contextlib.contextmanager
def held_by_shards(dm):
    """``dm`` with its blocks held by shard actors for the passes of an iterative fit.

    In-process design matrices, one-block ones, and fits that find the shard pool busy
    come back unchanged (their passes run as tasks).
    """
    if not isinstance(dm.executor, ClusterExecutor) or len(dm.blocks) < 2:
        yield dm
        return
    shoal = dm.executor._shoal
    n = pool_size(shoal)
    shards = _ShardPool.acquire(shoal, n, len(dm.blocks))
    if shards is None:
        try:
            yield dm
        finally:
            _ShardPool.start_later(shoal, n)
        return
    import dataclasses
    ex = ShardExecutor(dm.executor, dm.blocks, shards)
    try:
        yield dataclasses.replace(dm, executor=ex)
    finally:
        ex.close()
        _ShardPool.give_back(ex.broken, shoal)
