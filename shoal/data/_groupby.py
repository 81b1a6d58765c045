"""GroupedData: ``Dataset.groupby(key)`` and its aggregations."""
from __future__ import annotations

from functools import partial
from typing import Callable, Sequence

import pyarrow as pa

from shoal.data import _shuffle
from shoal.data._aggregate import (AggregateFn, Count, Max, Mean, Min, Std, Sum, sort_table,
                                   validate_aggs)
from shoal.data._block import callable_name, check_batch_format, concat, to_batch, to_block
from shoal.data._plan import AllToAllNode, add_transform
from shoal.data._transforms import BlockTransform


class GroupedData:
    """Rows of a Dataset grouped by key columns (none: one group of all rows).

    Aggregations run as a partial aggregate per block and a combine per
    range of keys, so the result is one row per group, sorted by key.
    """

    def __init__(self, dataset, keys: list[str]):
        self._dataset = dataset
        self._keys = keys

    def aggregate(self, *aggs: AggregateFn):
        """A Dataset of one row per group: the key columns, then one column per aggregate, sorted by key."""
        aggs = validate_aggs(aggs)
        from shoal.data._dataset import Dataset

        fn = partial(_shuffle.aggregate, keys=self._keys, aggs=aggs)
        name = f"groupby({self._keys}).aggregate({', '.join(a.name for a in aggs)})"
        return Dataset(AllToAllNode(self._dataset._plan, fn, name))

    def count(self):
        """Rows per group, in a column ``count()``."""
        return self.aggregate(Count())

    def _each(self, agg_type, on, **kwargs):
        cols = [on] if isinstance(on, str) else list(on)
        return self.aggregate(*[agg_type(c, **kwargs) for c in cols])

    def sum(self, on: str | Sequence[str]):
        """Sum per group of column ``on`` (or each of a list)."""
        return self._each(Sum, on)

    def min(self, on: str | Sequence[str]):
        """Smallest value per group of ``on``."""
        return self._each(Min, on)

    def max(self, on: str | Sequence[str]):
        """Largest value per group of ``on``."""
        return self._each(Max, on)

    def mean(self, on: str | Sequence[str]):
        """Mean per group of ``on``."""
        return self._each(Mean, on)

    def std(self, on: str | Sequence[str], ddof: int = 1):
        """Standard deviation per group of ``on`` (``ddof=1``: the sample's)."""
        return self._each(Std, on, ddof=ddof)

    def map_groups(self, fn: Callable, *, batch_format: str = "numpy", fn_args: Sequence = (),
                   fn_kwargs: dict | None = None):
        """Apply ``fn(batch) -> batch`` to all rows of each group (groups sorted by key)."""
        if not self._keys:
            raise ValueError("map_groups needs groupby(key) with at least one key column")
        from shoal.data._dataset import Dataset

        ds = self._dataset.sort(self._keys)
        transform = MapGroups(fn, self._keys, batch_format, fn_args, fn_kwargs)
        return Dataset(add_transform(ds._plan, transform))


class MapGroups(BlockTransform):
    """``fn`` over each run of equal keys in a block sorted by them.

    Sorting partitions by ranges of whole key tuples, so rows with equal
    keys, and so every group, lie inside one block.
    """

    def __init__(self, fn, keys, batch_format, fn_args, fn_kwargs):
        self.fn = fn
        self.keys = list(keys)
        self.batch_format = check_batch_format(batch_format)
        self.fn_args = tuple(fn_args)
        self.fn_kwargs = dict(fn_kwargs or {})
        self.name = f"map_groups({callable_name(fn)})"

    def __call__(self, table: pa.Table) -> pa.Table:
        if table.num_rows == 0:
            return table
        table = sort_table(table, self.keys)
        groups = table.group_by(self.keys, use_threads=False).aggregate([([], "count_all")])
        # sorted like the table's runs (group_by's own order is not first appearance)
        sizes = sort_table(groups, self.keys).column("count_all").to_numpy()
        outs, start = [], 0
        for size in sizes.tolist():
            batch = to_batch(table.slice(start, size), self.batch_format)
            outs.append(to_block(self.fn(batch, *self.fn_args, **self.fn_kwargs), self.fn))
            start += size
        return concat(outs)
