"""Aggregations in two phases: a partial per block, combined per group.

``partial_aggregate`` runs on each block (Arrow's hash aggregation) and
returns a small table of partial states per group. ``combine_partials``
merges the partials of the same groups (from every block) and finishes
each aggregate. Standard deviation merges (count, mean, M2) with Chan's
formula, so it stays accurate when the mean is large next to the spread.
Output rows are sorted by the group keys.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shoal.data._block import check_columns, concat


class AggregateFn:
    """One aggregate over one column (``on``), named ``alias_name`` or ``fn(on)``."""

    kind = ""

    def __init__(self, on: str | None = None, alias_name: str | None = None):
        if on is not None and not isinstance(on, str):
            raise TypeError(f"{type(self).__name__}(on=...) takes one column name, got {on!r}")
        self.on = on
        self.name = alias_name or f"{self.kind}({on or ''})"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.on!r})"

    def partial_specs(self) -> list[tuple]:
        """The partial states this aggregate needs per block: ``(column, arrow aggregation)`` pairs."""
        return [(self.on, self.kind)]

    def finalize(self, reduced: pa.Table, extra: dict) -> pa.Array:
        """The aggregate per group, from the combined partial states in ``reduced``."""
        return reduced.column(_combined_name(self.on, self.kind))


class Count(AggregateFn):
    """Rows per group (``on=None``) or non-null values of a column."""

    kind = "count"

    def partial_specs(self):
        """See AggregateFn.partial_specs."""
        return [([], "count_all")] if self.on is None else [(self.on, "count")]

    def finalize(self, reduced, extra):
        """See AggregateFn.finalize."""
        name = "count_all" if self.on is None else _partial_name(self.on, "count")
        return reduced.column(f"{name}_sum")


class Sum(AggregateFn):
    """Sum of a column's non-null values."""

    kind = "sum"


class Min(AggregateFn):
    """Smallest non-null value of a column."""

    kind = "min"


class Max(AggregateFn):
    """Largest non-null value of a column."""

    kind = "max"


class Mean(AggregateFn):
    """Mean of a column's non-null values (null for a group without any)."""

    kind = "mean"

    def partial_specs(self):
        """See AggregateFn.partial_specs."""
        return [(self.on, "sum"), (self.on, "count")]

    def finalize(self, reduced, extra):
        """See AggregateFn.finalize."""
        total = reduced.column(_combined_name(self.on, "sum")).to_numpy(zero_copy_only=False)
        count = reduced.column(_combined_name(self.on, "count")).to_numpy(zero_copy_only=False)
        total = np.asarray(total, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = total / count
        return pa.array(mean, mask=count == 0)


class Std(AggregateFn):
    """Sample standard deviation (``ddof=1`` as pandas) of a column."""

    kind = "std"

    def __init__(self, on: str | None = None, ddof: int = 1, alias_name: str | None = None):
        super().__init__(on, alias_name)
        self.ddof = ddof

    def partial_specs(self):
        """See AggregateFn.partial_specs."""
        return [(self.on, "count"), (self.on, "mean"), (self.on, "variance")]

    def finalize(self, reduced, extra):
        """See AggregateFn.finalize (Chan's merge of count, mean and M2)."""
        n, m2 = extra[("std", self.on)]
        with np.errstate(invalid="ignore", divide="ignore"):
            std = np.sqrt(m2 / (n - self.ddof))
        return pa.array(std, mask=(n - self.ddof) <= 0)


def _partial_name(col, kind) -> str:
    return "count_all" if kind == "count_all" else f"{col}_{kind}"


def _combined_name(col, kind) -> str:
    return f"{_partial_name(col, kind)}_{_COMBINE[kind]}"


_COMBINE = {"count": "sum", "count_all": "sum", "sum": "sum", "min": "min", "max": "max"}
_VARIANCE = pc.VarianceOptions(ddof=0)


def _unique_specs(aggs: Sequence[AggregateFn]) -> list[tuple]:
    seen, specs = set(), []
    for agg in aggs:
        for col, kind in agg.partial_specs():
            key = (tuple(col) if isinstance(col, list) else col, kind)
            if key not in seen:
                seen.add(key)
                specs.append((col, kind))
    return specs


def validate_aggs(aggs: Sequence[AggregateFn]) -> list[AggregateFn]:
    aggs = list(aggs)
    if not aggs:
        raise ValueError("aggregate needs at least one aggregation, e.g. Count() or Sum('x')")
    for a in aggs:
        if not isinstance(a, AggregateFn):
            raise TypeError(f"aggregate takes AggregateFn objects (Count(), Sum('x'), ...), got {a!r}")
        if a.on is None and not isinstance(a, Count):
            raise ValueError(f"{type(a).__name__} needs a column: {type(a).__name__}('column')")
    names = [a.name for a in aggs]
    if len(set(names)) != len(names):
        raise ValueError(f"aggregations produce duplicate column names {names}; "
                         "give alias_name= to tell them apart")
    return aggs


def partial_aggregate(table: pa.Table, keys: Sequence[str],
                      aggs: Sequence[AggregateFn]) -> pa.Table:
    """Per-group partial states of ``aggs`` over one block."""
    check_columns(table.schema, list(keys) + [a.on for a in aggs if a.on is not None],
                  "groupby")
    specs = []
    for col, kind in _unique_specs(aggs):
        if kind == "variance":
            specs.append((col, "variance", _VARIANCE))
        else:
            specs.append((col, kind))
    return table.group_by(list(keys)).aggregate(specs)


def sort_table(table: pa.Table, keys: Sequence[str], descending: bool | Sequence[bool] = False
               ) -> pa.Table:
    """Rows sorted by ``keys``; nulls (and NaN) last."""
    if not keys or table.num_rows <= 1:
        return table
    return table.take(pc.sort_indices(table, sort_keys=sort_order(keys, descending)))


def sort_order(keys: Sequence[str], descending: bool | Sequence[bool] = False) -> list[tuple]:
    """Arrow ``sort_keys`` for ``keys``, nulls last: the one order sort and partitioning share."""
    if isinstance(descending, bool):
        descending = [descending] * len(keys)
    return [(k, "descending" if d else "ascending", "at_end") for k, d in zip(keys, descending)]


def combine_partials(partials: Sequence[pa.Table], keys: Sequence[str],
                     aggs: Sequence[AggregateFn]) -> pa.Table:
    """Merge partial states of the same groups and finish each aggregate."""
    table = sort_table(concat([p for p in partials if p.num_rows] or list(partials[:1])), keys)
    specs = [(_partial_name(col, kind), _COMBINE[kind])
             for col, kind in _unique_specs(aggs) if kind in _COMBINE]
    std_cols = sorted({a.on for a in aggs if isinstance(a, Std)})
    extra_specs = []
    for col in std_cols:
        n = _float(table.column(f"{col}_count"))
        mean = np.nan_to_num(_float(table.column(f"{col}_mean")))
        m2 = np.nan_to_num(_float(table.column(f"{col}_variance"))) * n
        table = table.append_column(f"__{col}_s", pa.array(n * mean))
        table = table.append_column(f"__{col}_m2", pa.array(m2))
        extra_specs += [(f"__{col}_s", "sum"), (f"__{col}_m2", "sum")]
    # Arrow's group_by does not keep the order of first appearance for every key set
    # (seen with two int keys), so sort the groups: then they follow the sorted table's
    # runs, which the gids below count on.
    reduced = sort_table(table.group_by(list(keys), use_threads=False).aggregate(
        specs + extra_specs + [([], "count_all")]), keys)
    extra = {}
    if std_cols:
        sizes = reduced.column("count_all").to_numpy()
        gid = np.repeat(np.arange(len(sizes)), sizes)
        for col in std_cols:
            n_i = _float(table.column(f"{col}_count"))
            mean_i = _float(table.column(f"{col}_mean"))
            n = _float(reduced.column(f"{col}_count_sum"))
            s = _float(reduced.column(f"__{col}_s_sum"))
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = s / n
            dev = np.where(n_i > 0, mean_i - mean[gid], 0.0)
            between = np.bincount(gid, weights=n_i * np.nan_to_num(dev) ** 2,
                                  minlength=len(sizes))
            extra[("std", col)] = (n, _float(reduced.column(f"__{col}_m2_sum")) + between)
    columns = {k: reduced.column(k) for k in keys}
    for agg in aggs:
        columns[agg.name] = agg.finalize(reduced, extra)
    return pa.table(columns)


def _float(col) -> np.ndarray:
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)
