"""Streaming execution of a plan on shoal tasks and actors.

Each stage keeps a window of at most ``max_tasks_in_flight`` tasks and
hands its outputs on in submission order, as soon as the oldest finishes.
Stages are chained generators, so a consumer pulling batches drives the
whole pipeline and memory stays bounded by the windows: a dataset larger
than the object store streams through it.

A stage task returns its blocks and, as its last return value, their
BlockMeta list: the driver learns row counts and schemas without fetching
data.
"""
from __future__ import annotations

import itertools
import sys
import time
import warnings
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import cloudpickle
import pyarrow as pa

from shoal.data._block import BlockMeta, concat, meta_of, split_even
from shoal.data._context import DataContext
from shoal.data._plan import (AllToAllNode, BinaryNode, BlocksNode, Bundle, LimitNode, MapNode,
                              Node, ReadNode, UnionNode)
from shoal.data._progress import ProgressLine
from shoal.data._read import ReadTask
from shoal.data._transforms import MapBatches, apply_chain
from shoal.exceptions import DataStarvedError, SchemaMismatchError

_REMOTE_FNS: dict = {}
ACTOR_RESTARTS = 3     # restarts of a map stage's pool actor (and retries of its calls)


def remote_fn(fn, light: bool = False):
    """``shoal.remote(fn)``, made once per process.

    ``light`` tasks (slicing, metadata, sampling) take no CPU slot, so they
    run even while an actor pool holds every CPU of the cluster.
    """
    import shoal

    handle = _REMOTE_FNS.get(fn)
    if handle is None:
        handle = _REMOTE_FNS[fn] = shoal.remote(fn)
    return handle.options(num_cpus=0) if light else handle


def as_list(refs) -> list:
    return refs if isinstance(refs, list) else [refs]


# ------------------------------------------------------- task/actor bodies ---

def load_chain(chain):
    """The transforms of a stage, sent as cloudpickle bytes so that functions and
    classes defined in a script's ``__main__`` travel by value."""
    return cloudpickle.loads(chain) if isinstance(chain, (bytes, bytearray, memoryview)) else chain


def coalesce_point(chain) -> tuple[int | None, int | None]:
    """Index and batch size of the first ``map_batches`` with a ``batch_size``.

    From that transform on, a stage works on the concatenation of its input
    blocks, so every call but the last of a task gets exactly ``batch_size``
    rows; the transforms before it still see one block at a time.
    """
    for index, transform in enumerate(chain):
        if isinstance(transform, MapBatches) and transform.batch_size is not None:
            return index, transform.batch_size
    return None, None


def apply_stage(chain, tables: list[pa.Table], k: int) -> list[pa.Table]:
    """Apply ``chain`` to the input ``tables`` of one task and return ``k`` blocks."""
    index, _ = coalesce_point(chain)
    if index is None:
        if len(tables) == 1 and k > 1:
            tables = split_even(tables[0], k)
        return [apply_chain(chain, t) for t in tables]
    head = [apply_chain(chain[:index], t) for t in tables]
    # pa.concat_tables only chains the chunks together; slicing it into batches
    # copies nothing unless a batch spans two input blocks.
    out = apply_chain(chain[index:], concat(head))
    return split_even(out, k) if k > 1 else [out]


def run_stage(chain, k: int, *items):
    """Read (``ReadTask`` items) or take blocks, apply ``chain``, return ``k`` blocks + metas."""
    start = time.perf_counter()
    chain = load_chain(chain)
    tables = [item() if isinstance(item, ReadTask) else item for item in items]
    outs = apply_stage(chain, tables, k)
    elapsed = (time.perf_counter() - start) / len(outs)
    return (*outs, [meta_of(o, elapsed) for o in outs])


def group_bundles(bundles: Iterable[Bundle], min_rows: int) -> Iterator[list[Bundle]]:
    """Consecutive bundles joined until each group holds at least ``min_rows`` rows."""
    group: list[Bundle] = []
    rows = 0
    for bundle in bundles:
        group.append(bundle)
        rows += bundle[1].num_rows
        if rows >= min_rows:
            yield group
            group, rows = [], 0
    if group:
        yield group


class MapWorker:
    """The actor behind a callable-class stage: builds the chain's state once."""

    def __init__(self, chain):
        self.chain = load_chain(chain)
        for transform in self.chain:
            transform.setup()

    def process(self, k: int, *items):
        return run_stage(self.chain, k, *items)


# -------------------------------------------------------------- executor ---

@dataclass
class StageStats:
    name: str
    blocks: int = 0
    rows: int = 0
    bytes: int = 0
    task_s: float = 0.0
    start: float = field(default_factory=time.perf_counter)
    wall_s: float = 0.0

    def add(self, meta: BlockMeta) -> None:
        self.blocks += 1
        self.rows += meta.num_rows
        self.bytes += meta.size_bytes
        self.task_s += meta.exec_s
        self.wall_s = time.perf_counter() - self.start

    def line(self) -> str:
        return (f"{self.name}: {self.blocks} blocks, {self.rows:,} rows, "
                f"{self.bytes / 2**20:.1f} MiB, wall {self.wall_s:.3f}s, "
                f"task time {self.task_s:.3f}s")


class Executor:
    """Runs plan nodes; one Executor per consumer call, its ``stats`` kept for ``Dataset.stats``."""

    def __init__(self, ctx: DataContext | None = None):
        import shoal

        self.ctx = ctx or DataContext.get_current()
        self.stats: list[StageStats] = []
        self._progress: list[ProgressLine] = []
        cpus = int(shoal.cluster_resources().get("CPU", 1)) or 1
        self.cpus = cpus
        self.window = self.ctx.max_tasks_in_flight or max(2, 2 * cpus)

    def progress(self, name: str, total: int | None) -> ProgressLine:
        """A progress line; only the first open one of an execution prints (stages
        that stream into each other would otherwise overwrite one line)."""
        enabled = self.ctx.progress_enabled(sys.stderr) and not any(
            p.open for p in self._progress)
        line = ProgressLine(name, total, enabled, self.ctx.progress_after_s)
        self._progress.append(line)
        return line

    def new_stats(self, name: str) -> StageStats:
        s = StageStats(name)
        self.stats.append(s)
        return s

    def materialize(self, node: Node) -> list[Bundle]:
        return list(self.stream(node))

    def stream(self, node: Node) -> Iterator[Bundle]:
        if isinstance(node, BlocksNode):
            return (bundle for bundle in node.bundles)
        if isinstance(node, ReadNode):
            return self._map_stream(node.tasks, (), None, {}, node.name, len(node.tasks))
        if isinstance(node, MapNode):
            _, batch_size = coalesce_point(node.chain)
            if isinstance(node.child, ReadNode) and not _reads_small(node.child, batch_size):
                items, total = node.child.tasks, len(node.child.tasks)
                name = f"{node.child.name}->{node.name}"
            else:
                items, total = self.stream(node.child), None
                if batch_size is not None:
                    items = group_bundles(items, batch_size)
                name = node.name
            return self._map_stream(items, node.chain, node.compute, node.options, name, total)
        if isinstance(node, AllToAllNode):
            return self._all_to_all(node)
        if isinstance(node, BinaryNode):
            return self._binary(node)
        if isinstance(node, LimitNode):
            return self._limit(node)
        if isinstance(node, UnionNode):
            return self._union(node)
        raise TypeError(f"unknown plan node {node!r}")

    def _all_to_all(self, node: AllToAllNode) -> Iterator[Bundle]:
        bundles = self.materialize(node.child)
        stats = self.new_stats(node.name)
        out = node.fn(bundles, self)
        del bundles
        for bundle in out:
            stats.add(bundle[1])
        yield from out

    def _binary(self, node: BinaryNode) -> Iterator[Bundle]:
        left, right = (self.materialize(child) for child in node.children)
        stats = self.new_stats(node.name)
        out = node.fn(left, right, self)
        del left, right
        for bundle in out:
            stats.add(bundle[1])
        yield from out

    def _map_stream(self, items: Iterable, chain, compute, options: dict, name: str,
                    total: int | None) -> Iterator[Bundle]:
        import shoal

        stats = self.new_stats(name)
        progress = self.progress(name, total)
        chain_ref = shoal.put(cloudpickle.dumps(list(chain)))
        actors, load = [], []
        source = iter(items)
        if compute is not None:
            # Pull the first input before the pool takes the CPUs: a barrier
            # upstream (repartition, sort) runs its tasks inside this first pull.
            first = next(source, None)
            if first is None:
                progress.close()
                return
            source = itertools.chain([first], source)
            worker = remote_fn(MapWorker)
            actor_options = dict(options)
            # By default a pool shares the cluster's CPUs rather than waiting for more.
            actor_options.setdefault("num_cpus", min(1.0, self.cpus / compute.size))
            # An actor whose process dies is started again (its class rebuilds the same
            # state) and the batches it held are mapped again, as Ray Data does; one
            # that keeps dying fails the dataset with ActorDiedError.
            actor_options.setdefault("max_restarts", ACTOR_RESTARTS)
            actor_options.setdefault("max_task_retries", ACTOR_RESTARTS)
            watch = StarvationWatch(name, actor_options["num_cpus"], self.ctx)
            actors = [worker.options(**actor_options).remote(chain_ref)
                      for _ in range(compute.size)]
            load = [0] * len(actors)
            window = len(actors) * self.ctx.actor_tasks_in_flight
        else:
            task = remote_fn(run_stage)
            options = dict(options)
            window = min(self.window, options.pop("concurrency", self.window))
            watch = StarvationWatch(name, options.get("num_cpus", 1), self.ctx)
        pending: deque = deque()
        try:
            exhausted = False
            while True:
                while not exhausted and len(pending) < window:
                    try:
                        item = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    if isinstance(item, ReadTask):
                        k, payload = item.num_blocks, [item]
                    elif isinstance(item, list):  # a group of bundles joined for batch_size
                        k, payload = len(item), [ref for ref, _ in item]
                    else:
                        k, payload = 1, [item[0]]
                    if actors:
                        i = load.index(min(load))
                        load[i] += 1
                        refs = actors[i].process.options(num_returns=k + 1).remote(k, *payload)
                    else:
                        i = -1
                        refs = task.options(num_returns=k + 1, **options).remote(chain_ref, k,
                                                                                 *payload)
                    pending.append((as_list(refs), i))
                if not pending:
                    break
                refs, i = pending.popleft()
                metas = watch.get(refs[-1]) if watch.armed else shoal.get(refs[-1])
                if i >= 0:
                    load[i] -= 1
                for ref, meta in zip(refs[:-1], metas):
                    stats.add(meta)
                    progress.update(1, meta.num_rows)
                    yield ref, meta
        finally:
            progress.close()
            for refs, _ in pending:
                _cancel_quietly(refs[-1])
            for actor in actors:
                try:
                    shoal.kill(actor)
                except Exception:  # noqa: BLE001 - the actor may already be gone
                    pass

    def _limit(self, node: LimitNode) -> Iterator[Bundle]:
        from shoal.data._row_ranges import take_row_ranges

        remaining = node.n
        if remaining <= 0:
            return
        upstream = self.stream(node.child)
        try:
            for ref, meta in upstream:
                if meta.num_rows <= remaining:
                    remaining -= meta.num_rows
                    yield ref, meta
                else:
                    yield from take_row_ranges([(ref, meta)], [(0, remaining)], light=True)
                    remaining = 0
                if remaining == 0:
                    return
        finally:
            upstream.close()

    def _union(self, node: UnionNode) -> Iterator[Bundle]:
        reference: pa.Schema | None = None
        for index, child in enumerate(node.children):
            checked = False
            for ref, meta in self.stream(child):
                if meta.num_rows and not checked:
                    if reference is None:
                        reference = meta.schema
                    else:
                        check_union_schema(reference, meta.schema, index)
                    checked = True
                yield ref, meta


class StarvationWatch:
    """Turns a stage that can never start into a warning and then an error, not a hang.

    Armed only when no CPU was free for the stage as it started (actors such as a
    training gang may hold them all); disarmed by its first result or by a CPU
    seen free, so a busy but moving cluster never trips it.
    """

    POLL_S = 1.0

    def __init__(self, name: str, need: float, ctx: DataContext):
        self.name, self.need, self.ctx = name, need, ctx
        self.since = time.monotonic()
        self.warned = False
        self.armed = bool(need) and self._free() < need

    @staticmethod
    def _free() -> float:
        import shoal

        return shoal.available_resources().get("CPU", 0.0)

    def _message(self, waited: float) -> str:
        return (f"shoal.data stage {self.name!r} has waited {waited:.0f}s to start: its tasks "
                f"need {self.need:g} CPU each and no CPU has been free in the cluster. If "
                "actors hold every CPU (a Trainer gang, an actor pool), give them fewer "
                "(e.g. resources_per_worker={'CPU': 0.5}), start shoal with more CPUs, or "
                "materialize the dataset before they start. "
                "DataContext.starved_timeout_s bounds this wait.")

    def get(self, ref):
        import shoal

        while self.armed:
            ready, _ = shoal.wait([ref], timeout=self.POLL_S)
            if ready or self._free() >= self.need:
                break
            waited = time.monotonic() - self.since
            if not self.warned and waited >= self.ctx.starved_warning_s:
                warnings.warn(self._message(waited), RuntimeWarning, stacklevel=2)
                self.warned = True
            limit = self.ctx.starved_timeout_s
            if limit is not None and waited >= limit:
                raise DataStarvedError(self._message(waited))
        self.armed = False
        return shoal.get(ref)


def _reads_small(node: ReadNode, batch_size: int | None) -> bool:
    """True when read tasks give fewer rows than a batch, so the map stage must run
    after the read (to join their blocks) instead of fused into it."""
    if batch_size is None:
        return False
    rows = [t.num_rows for t in node.tasks]
    return (len(rows) > 1 and all(r is not None for r in rows)
            and min(rows[:-1]) < batch_size)


def check_union_schema(reference: pa.Schema, schema: pa.Schema, index: int) -> None:
    if reference.names != schema.names:
        raise SchemaMismatchError(
            f"union: dataset {index} has columns {schema.names} but dataset 0 has "
            f"{reference.names}; select or rename columns so they match before union")
    for field_ref, field_other in zip(reference, schema):
        if not field_ref.type.equals(field_other.type):
            raise SchemaMismatchError(
                f"union: column {field_ref.name!r} is {field_other.type} in dataset {index} but "
                f"{field_ref.type} in dataset 0; cast it (e.g. with map_batches) before union")


def _cancel_quietly(ref) -> None:
    import shoal

    try:
        shoal.cancel(ref)
    except Exception:  # noqa: BLE001 - best effort: the task may have finished
        pass
