"""All-to-all operators: repartition, random_shuffle, sort and groupby.

Each is a map phase (one task per input block, cutting it into ``n``
parts, one return value per part) and a reduce phase (one task per output
block, taking the j-th part of every map output as arguments). Sort and
groupby partition by ranges of the key, with boundaries chosen from a
sample, so the output blocks are globally ordered. With several keys the
boundaries are whole key tuples, so a skewed first key still spreads over
the partitions by the next keys (and equal tuples stay together).
"""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shoal.data._aggregate import (AggregateFn, combine_partials, partial_aggregate, sort_order,
                                   sort_table)
from shoal.data._block import check_columns, concat, meta_of
from shoal.data._plan import Bundle

SAMPLES_PER_BLOCK = 100


# ------------------------------------------------------------ pure parts ---

def split_by_partition(table: pa.Table, part: np.ndarray, n: int) -> list[pa.Table]:
    """Rows of ``table`` grouped by ``part`` (ints in [0, n)), order kept within a part."""
    # a stable sort of small ints is a radix sort in NumPy: O(rows), not O(rows log rows)
    small = np.uint8 if n <= 256 else np.uint16 if n <= 65536 else part.dtype
    order = np.argsort(part.astype(small, copy=False), kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(part, minlength=n))])
    ordered = table.take(pa.array(order)) if n > 1 else table
    return [ordered.slice(int(a), int(b - a)) for a, b in zip(bounds[:-1], bounds[1:])]


def range_partition_ids(column: pa.ChunkedArray, boundaries: pa.Array,
                        descending: bool) -> np.ndarray:
    """Partition of each value: values below ``boundaries[0]`` go to 0, and so on; nulls last."""
    nb = len(boundaries)
    if nb == 0:
        return np.zeros(len(column), dtype=np.int64)
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    column = column.cast(boundaries.type) if not column.type.equals(boundaries.type) else column
    values = pc.fill_null(column, boundaries[0]).to_numpy(zero_copy_only=False)
    ids = np.searchsorted(boundaries.to_numpy(zero_copy_only=False), values, side="right")
    if descending:
        ids = nb - ids
    if isinstance(values.dtype, np.dtype) and values.dtype.kind == "f":
        valid &= ~np.isnan(values)
    return np.where(valid, ids, nb).astype(np.int64)


def choose_boundaries(samples: Sequence[pa.Array], n: int) -> pa.Array:
    """Up to ``n - 1`` distinct quantiles of the sampled key values."""
    samples = [s for s in samples if len(s)]
    if not samples or n <= 1:
        return pa.array([], type=samples[0].type if samples else pa.int64())
    values = pa.concat_arrays([s.cast(samples[0].type) for s in samples])
    values = values.filter(pc.is_valid(values))
    if pa.types.is_floating(values.type):
        values = values.filter(pc.invert(pc.is_nan(values)))
    if len(values) == 0:
        return values
    values = values.take(pc.sort_indices(values))
    picks = (np.arange(1, n) * len(values)) // n
    return pc.unique(values.take(pa.array(picks)))


def tuple_partition_ids(table: pa.Table, keys: list, boundaries: pa.Table,
                        descending) -> np.ndarray:
    """Partition of each row by its key tuple: the number of boundary tuples at or before it in
    the sort order of ``keys`` (lexicographic, per-key direction, nulls last)."""
    nb = boundaries.num_rows
    if nb == 0:
        return np.zeros(table.num_rows, dtype=np.int64)
    rows = table.select(keys)
    rows = rows.cast(boundaries.schema) if not rows.schema.equals(boundaries.schema) else rows
    # Boundaries first: Arrow's sort is stable, so a row equal to a boundary sorts after it
    # (searchsorted's side="right", as the single-key path).
    both = pa.concat_tables([boundaries, rows])
    order = pc.sort_indices(both, sort_keys=sort_order(keys, descending)).to_numpy()
    is_boundary = order < nb
    seen = np.cumsum(is_boundary)
    ids = np.empty(table.num_rows, dtype=np.int64)
    ids[order[~is_boundary] - nb] = seen[~is_boundary]
    return ids


def choose_tuple_boundaries(samples: Sequence[pa.Table], keys: list, n: int,
                            descending) -> pa.Table:
    """Up to ``n - 1`` distinct key tuples at the quantiles of the sampled rows."""
    samples = [s for s in samples if s.num_rows]
    if not samples or n <= 1:
        return samples[0].slice(0, 0) if samples else pa.table({})
    values = sort_table(concat(samples), keys, descending)
    picks = (np.arange(1, n) * values.num_rows) // n
    picked = values.take(pa.array(picks))
    distinct = picked.group_by(keys, use_threads=False).aggregate([])
    return sort_table(distinct.select(keys), keys, descending)


def _map_return(parts: list):
    return parts if len(parts) > 1 else parts[0]


# ------------------------------------------------------------ task bodies ---

def shuffle_map(n: int, seed, table: pa.Table):
    rng = np.random.default_rng(seed)
    return _map_return(split_by_partition(table, rng.integers(0, n, table.num_rows), n))


def shuffle_reduce(seed, *parts: pa.Table):
    start = time.perf_counter()
    table = concat(parts)
    table = table.take(pa.array(np.random.default_rng(seed).permutation(table.num_rows)))
    return table, meta_of(table, time.perf_counter() - start)


def sample_keys(key, seed, table: pa.Table):
    """Sampled values of one key column (``key`` a name) or rows of several (a list)."""
    keys = [key] if isinstance(key, str) else list(key)
    check_columns(table.schema, keys, "sort/groupby")
    k = min(table.num_rows, SAMPLES_PER_BLOCK)
    idx = pa.array(np.random.default_rng(seed).choice(table.num_rows, size=k, replace=False))
    if isinstance(key, str):
        return table.column(key).take(idx).combine_chunks()
    return table.select(keys).take(idx)


def partition_ids(table: pa.Table, keys: list, boundaries, descending) -> np.ndarray:
    if isinstance(boundaries, pa.Table):
        return tuple_partition_ids(table, keys, boundaries, descending)
    first_desc = descending if isinstance(descending, bool) else descending[0]
    return range_partition_ids(table.column(keys[0]), boundaries, first_desc)


def range_map(keys: list, boundaries, descending, table: pa.Table):
    check_columns(table.schema, keys, "sort")
    ids = partition_ids(table, keys, boundaries, descending)
    return _map_return(split_by_partition(table, ids, len(boundaries) + 1))


def sort_reduce(keys: list, descending, *parts: pa.Table):
    start = time.perf_counter()
    table = sort_table(concat(parts), keys, descending)
    return table, meta_of(table, time.perf_counter() - start)


def aggregate_map(keys: list, aggs: list, boundaries: pa.Array, table: pa.Table):
    partial = partial_aggregate(table, keys, aggs)
    if not keys:
        return partial
    ids = partition_ids(partial, keys, boundaries, False)
    return _map_return(split_by_partition(partial, ids, len(boundaries) + 1))


def aggregate_reduce(keys: list, aggs: list, *parts: pa.Table):
    start = time.perf_counter()
    table = combine_partials(parts, keys, aggs)
    return table, meta_of(table, time.perf_counter() - start)


# ------------------------------------------------------- all-to-all ops ---

def _exchange(name: str, bundles: list[Bundle], map_fn, map_args, n: int, reduce_fn,
              reduce_args_of, ex) -> list[Bundle]:
    """Run the map tasks, then one reduce task per output partition."""
    import shoal

    from shoal.data._execution import as_list, remote_fn

    mapper, reducer = remote_fn(map_fn), remote_fn(reduce_fn)
    progress = ex.progress(name, len(bundles) + n)
    try:
        parts = [as_list(mapper.options(num_returns=n).remote(*map_args(i), ref))
                 for i, (ref, _) in enumerate(bundles)]
        progress.update(len(bundles))
        outs = [as_list(reducer.options(num_returns=2).remote(
            *reduce_args_of(j), *[p[j] for p in parts])) for j in range(n)]
        del parts
        metas = []
        for block_ref, meta_ref in outs:
            meta = shoal.get(meta_ref)
            progress.update(1, meta.num_rows)
            metas.append((block_ref, meta))
        return metas
    finally:
        progress.close()


def random_shuffle(bundles: list[Bundle], ex, seed, n: int | None = None) -> list[Bundle]:
    if not bundles:
        return bundles
    n = n or len(bundles)
    seq = np.random.SeedSequence(seed)
    map_seeds = seq.spawn(len(bundles))
    reduce_seeds = seq.spawn(n)
    return _exchange("random_shuffle", bundles, shuffle_map, lambda i: (n, map_seeds[i]), n,
                     shuffle_reduce, lambda j: (reduce_seeds[j],), ex)


def _sample_boundaries(bundles: list[Bundle], keys: list, n: int, descending=False):
    """Boundaries for ``n`` partitions: values of the key (one key) or key tuples (several)."""
    import shoal

    from shoal.data._execution import remote_fn

    sampler = remote_fn(sample_keys)
    key = keys[0] if len(keys) == 1 else list(keys)
    samples = shoal.get([sampler.remote(key, i, ref) for i, (ref, _) in enumerate(bundles)])
    if len(keys) == 1:
        return choose_boundaries(samples, n)
    return choose_tuple_boundaries(samples, list(keys), n, descending)


def _check_known_schema(bundles: list[Bundle], keys: list, operation: str) -> None:
    for _, meta in bundles:
        if meta.num_rows:
            check_columns(meta.schema, keys, operation)
            return


def sort(bundles: list[Bundle], ex, keys: list, descending) -> list[Bundle]:
    if not bundles:
        return bundles
    _check_known_schema(bundles, keys, "sort")
    boundaries = _sample_boundaries(bundles, keys, len(bundles), descending)
    n = len(boundaries) + 1
    return _exchange("sort", bundles, range_map, lambda i: (keys, boundaries, descending), n,
                     sort_reduce, lambda j: (keys, descending), ex)


def aggregate(bundles: list[Bundle], ex, keys: list, aggs: list[AggregateFn]) -> list[Bundle]:
    if not bundles:
        return bundles
    _check_known_schema(bundles, keys + [a.on for a in aggs if a.on is not None], "groupby")
    if keys:
        boundaries = _sample_boundaries(bundles, keys, len(bundles))
    else:
        boundaries = pa.array([], type=pa.int64())
    n = len(boundaries) + 1
    return _exchange("groupby", bundles, aggregate_map, lambda i: (keys, aggs, boundaries), n,
                     aggregate_reduce, lambda j: (keys, aggs), ex)
