"""Two-input operators: hash join, zip, and the per-block random sample.

A join hash-partitions both sides on the key columns into ``n`` parts (one
map task per input block, one return value per part) and joins part ``j``
of the left with part ``j`` of the right in one reduce task each. Rows with
equal keys land in the same part, so every reduce task holds about ``1/n``
of each side and no process ever holds a whole table. Key columns whose
types differ but compare as one (int32 and int64, int and float, string
and large_string) are cast to a common type before hashing, so equal
values hash alike on both sides.
"""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from shoal.data._block import check_columns, concat, meta_of
from shoal.data._plan import Bundle
from shoal.data._shuffle import _exchange, split_by_partition
from shoal.exceptions import SchemaMismatchError

JOIN_TYPES = {"inner": "inner", "left": "left outer", "right": "right outer",
              "outer": "full outer", "semi": "left semi", "anti": "left anti"}

_MIX = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: spreads consecutive ints over parts


# ------------------------------------------------------------ pure parts ---

def common_key_type(name: str, left: pa.DataType, right: pa.DataType) -> pa.DataType:
    """The type both sides' key column ``name`` is cast to; SchemaMismatchError if none."""
    if pa.types.is_dictionary(left):
        left = left.value_type
    if pa.types.is_dictionary(right):
        right = right.value_type
    if left.equals(right):
        return left
    numeric = (pa.types.is_integer, pa.types.is_floating)
    if any(f(left) for f in numeric) and any(f(right) for f in numeric):
        if pa.types.is_integer(left) and pa.types.is_integer(right):
            return pa.int64()
        return pa.float64()
    stringy = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)
    if any(f(left) for f in stringy) and any(f(right) for f in stringy):
        return pa.large_string()
    binary = (pa.types.is_binary, pa.types.is_large_binary)
    if any(f(left) for f in binary) and any(f(right) for f in binary):
        return pa.large_binary()
    raise SchemaMismatchError(
        f"join: key column {name!r} is {left} on the left and {right} on the right; these "
        f"cannot be compared. Cast one side first (e.g. ds.map_batches or add_column) so "
        f"both hold the same type.")


def hash_partition_ids(table: pa.Table, keys: Sequence[str], n: int) -> np.ndarray:
    """The part in ``[0, n)`` of each row, a function of its key values only."""
    h = np.zeros(table.num_rows, dtype=np.uint64)
    for key in keys:
        h = h * np.uint64(31) + _column_hash(table.column(key))
    # the top bits of the mixed hash are the well-spread ones
    return ((h * _MIX) >> np.uint64(32)).astype(np.int64) % n


def _column_hash(col: pa.ChunkedArray) -> np.ndarray:
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_integer(col.type) or pa.types.is_boolean(col.type):
        values = pc.fill_null(col.cast(pa.int64()), 0).to_numpy(zero_copy_only=False)
        return values.view(np.uint64)
    if pa.types.is_floating(col.type):
        values = pc.fill_null(col.cast(pa.float64()), 0.0).to_numpy(zero_copy_only=False)
        values = values + 0.0  # -0.0 and 0.0 compare equal, so must hash alike
        return values.view(np.uint64)
    if pa.types.is_temporal(col.type):
        values = pc.fill_null(col.cast(pa.int64()), 0).to_numpy(zero_copy_only=False)
        return values.view(np.uint64)
    return pd.util.hash_array(col.to_numpy(zero_copy_only=False), categorize=True)


def cast_keys(table: pa.Table, casts: dict) -> pa.Table:
    """``table`` with its key columns cast to the common key types (dictionaries decoded)."""
    for name, typ in casts.items():
        i = table.schema.get_field_index(name)
        col = table.column(i)
        if not col.type.equals(typ):
            table = table.set_column(i, name, col.cast(typ))
    return table


def join_tables(left: pa.Table, right: pa.Table, keys: list, how: str,
                suffixes: tuple[str, str]) -> pa.Table:
    """``left`` joined with ``right`` on ``keys``; the columns ordered as pandas.merge orders
    them (the left's, then the right's non-key ones), keys coalesced."""
    join_type = JOIN_TYPES[how]
    out = left.join(right, keys, join_type=join_type, left_suffix=suffixes[0],
                    right_suffix=suffixes[1], coalesce_keys=True, use_threads=False)
    if how == "right":  # Arrow puts the right side's keys after the left's columns
        names = left.slice(0, 0).join(right.slice(0, 0), keys, join_type="inner",
                                      left_suffix=suffixes[0], right_suffix=suffixes[1],
                                      coalesce_keys=True).column_names
        out = out.select(names)
    return out


# ------------------------------------------------------------ task bodies ---

def join_map(keys: list, casts: dict, n: int, table: pa.Table):
    table = cast_keys(table, casts)
    parts = split_by_partition(table, hash_partition_ids(table, keys, n), n)
    return parts if n > 1 else parts[0]


def join_reduce(keys: list, how: str, suffixes: tuple, num_left: int, *parts: pa.Table):
    start = time.perf_counter()
    left, right = concat(parts[:num_left]), concat(parts[num_left:])
    out = join_tables(left, right, keys, how, suffixes)
    return out, meta_of(out, time.perf_counter() - start)


def zip_blocks(left: pa.Table, right: pa.Table):
    start = time.perf_counter()
    out = left
    for name, col in zip(right.column_names, right.columns):
        while name in out.column_names:  # Ray Data's rule for a name both sides have
            name = f"{name}_1"
        out = out.append_column(name, col)
    return out, meta_of(out, time.perf_counter() - start)


def sample_block(fraction: float, seed, table: pa.Table):
    start = time.perf_counter()
    keep = np.random.default_rng(seed).random(table.num_rows) < fraction
    out = table.filter(pa.array(keep))
    return out, meta_of(out, time.perf_counter() - start)


# ------------------------------------------------------------ operators ---

def _schema_of(bundles: list[Bundle]) -> pa.Schema | None:
    for _, meta in bundles:
        if meta.num_rows:
            return meta.schema
    return bundles[0][1].schema if bundles else None


def join(left: list[Bundle], right: list[Bundle], ex, keys: list, how: str,
         suffixes: tuple, num_partitions: int | None) -> list[Bundle]:
    """Hash join of two materialized sides (see the module docstring)."""
    left_schema, right_schema = _schema_of(left), _schema_of(right)
    if left_schema is None or right_schema is None:  # a side with no blocks at all
        return [] if left_schema is None or how in ("inner", "right", "semi") else left
    check_columns(left_schema, keys, "join (left side)")
    check_columns(right_schema, keys, "join (right side)")
    casts = {k: common_key_type(k, left_schema.field(k).type, right_schema.field(k).type)
             for k in keys}
    n = num_partitions or max(len(left), len(right), 1)
    nl = len(left)
    return _exchange("join", left + right, join_map, lambda i: (keys, casts, n), n,
                     join_reduce, lambda j: (keys, how, suffixes, nl), ex)


def zip_datasets(left: list[Bundle], right: list[Bundle], ex) -> list[Bundle]:
    """Columns of ``right`` beside those of ``left``, row by row, in ``left``'s blocks."""
    import shoal

    from shoal.data._execution import as_list, remote_fn
    from shoal.data._row_ranges import row_offsets, take_row_ranges

    lo, ro = row_offsets(left), row_offsets(right)
    if lo[-1] != ro[-1]:
        raise ValueError(f"zip needs datasets with the same number of rows; this one has "
                         f"{lo[-1]} and the other {ro[-1]}. Use limit() on the longer one first.")
    aligned = take_row_ranges(right, list(zip(lo[:-1].tolist(), lo[1:].tolist())))
    task = remote_fn(zip_blocks)
    outs = [as_list(task.options(num_returns=2).remote(lref, rref))
            for (lref, _), (rref, _) in zip(left, aligned)]
    return [(block, shoal.get(meta)) for block, meta in outs]


def random_sample(bundles: list[Bundle], ex, fraction: float, seed) -> list[Bundle]:
    """Each row kept with probability ``fraction``, one task per block, seeded per block."""
    import shoal

    from shoal.data._execution import as_list, remote_fn

    seeds = np.random.SeedSequence(seed).spawn(len(bundles))
    task = remote_fn(sample_block)
    outs = [as_list(task.options(num_returns=2).remote(fraction, s, ref))
            for s, (ref, _) in zip(seeds, bundles)]
    return [(block, shoal.get(meta)) for block, meta in outs]
