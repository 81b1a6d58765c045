"""PrefixSpan: frequent sequential patterns (Spark's PrefixSpan), mined per item group as tasks."""
from __future__ import annotations

import math

import numpy as np

from shoal.exceptions import InvalidInputError, TaskError
from shoal.ml._columns import as_frame, is_table
from shoal.ml._executor import _dataset_block_refs, _is_dataset, _shoal_core
from shoal.ml.fpm import _kernels as K


class PrefixSpan:
    """Frequent sequential patterns of a column of sequences (Spark's PrefixSpan; Pei et al.).

    A sequence is a list of itemsets (``[[1, 2], [3]]``: 1 and 2 together, then 3); a
    pattern is frequent when at least ``min_support`` of the sequences contain it (its
    itemsets, in order, each inside a later itemset of the sequence). One pass counts the
    items (one task per block); a second sends each sequence, cleaned of infrequent items,
    to the groups of the items it holds; one task per group grows, by prefix projection,
    the patterns that start with its items.

    Parameters (Spark's names in snake case): min_support, max_pattern_length (in items),
    sequence_col (Spark's sequenceCol), num_partitions (item groups mined in parallel;
    None: twice the cluster's CPUs).

    As in Spark, PrefixSpan is not an estimator: ``find_frequent_sequential_patterns(X)``
    takes a shoal.data Dataset, a pandas/Polars DataFrame or Arrow Table with the sequence
    column, or a list of sequences, and returns a pandas DataFrame with columns
    ``sequence`` (a list of itemsets) and ``freq``.
    """

    def __init__(self, *, min_support=0.1, max_pattern_length=10, sequence_col="sequence",
                 num_partitions=None):
        self.min_support = min_support
        self.max_pattern_length = max_pattern_length
        self.sequence_col = sequence_col
        self.num_partitions = num_partitions

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"PrefixSpan({args})"

    def _check_params(self):
        v = self.min_support
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating)) or not 0 <= v <= 1:
            raise InvalidInputError(f"PrefixSpan min_support={v!r} must be a number in [0, 1]")
        for name in ("max_pattern_length",) + (("num_partitions",) if self.num_partitions is not None else ()):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise InvalidInputError(f"PrefixSpan {name}={v!r} must be a positive int")

    def _table(self, X):
        import pyarrow as pa
        col = self.sequence_col
        if is_table(X):
            frame = as_frame(X)
            if col not in frame.columns:
                raise InvalidInputError(f"column {col!r} is missing from X (PrefixSpan reads "
                                        f"sequence_col=); available columns: {list(frame.columns)}")
            X = frame[col].tolist()
        if isinstance(X, (str, bytes)) or not hasattr(X, "__iter__"):
            raise InvalidInputError(f"PrefixSpan takes a Dataset, a DataFrame or Arrow Table with the "
                                    f"sequence column, or a list of sequences; got {type(X).__name__}")
        try:
            return pa.table({col: pa.array([None if s is None else [None if i is None else list(i)
                                                                     for i in s] for s in X])})
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as e:
            raise InvalidInputError(f"PrefixSpan: column {col!r} must hold one sequence of itemsets "
                                    f"per row (a list of lists of items of one type): {e}") from None

    def find_frequent_sequential_patterns(self, X):
        """The frequent sequential patterns of X: a pandas DataFrame (sequence, freq)."""
        self._check_params()
        col = self.sequence_col
        try:
            if _is_dataset(X):
                frequent, found, n = self._mine_dataset(X, col)
            else:
                table = self._table(X)
                frequent, n, min_count = self._frequent([K.count_sequence_items(table, col)])
                found = K.mine_sequences(0, 1, min_count, int(self.max_pattern_length),
                                         K.project_sequences(table, col, frequent, 1))
        except TaskError as e:
            if isinstance(e.cause, InvalidInputError):
                raise e.cause from None
            raise
        import pandas as pd
        items = frequent.to_pylist()
        return pd.DataFrame({"sequence": [[sorted(items[x] for x in s) for s in p] for p, _ in found],
                             "freq": np.array([c for _, c in found], dtype=np.int64)})

    def _frequent(self, parts):
        import pyarrow as pa
        n = int(sum(p[2] for p in parts))
        if n == 0:
            raise InvalidInputError("PrefixSpan got no sequences (X has no rows)")
        parts = [p for p in parts if len(p[0])]
        min_count = max(1, math.ceil(self.min_support * n))
        if not parts:
            return pa.array([], pa.null()), n, min_count
        table = pa.table({"item": pa.concat_arrays([p[0] for p in parts]),
                          "n": pa.array(np.concatenate([p[1] for p in parts]))})
        table = table.group_by("item").aggregate([("n", "sum")])
        table = table.filter(np.asarray(table.column("n_sum").to_numpy()) >= min_count)
        table = table.sort_by([("n_sum", "descending"), ("item", "ascending")])
        return table.column("item").combine_chunks(), n, min_count

    def _mine_dataset(self, ds, col):
        core = _shoal_core()
        if core is None:
            raise InvalidInputError("a shoal.data Dataset needs shoal's core runtime; it is not importable")
        if col not in ds.columns():
            raise InvalidInputError(f"column {col!r} is missing from X (PrefixSpan reads "
                                    f"sequence_col=); available columns: {ds.columns()}")
        refs = _dataset_block_refs(ds)
        count = core.remote(K.count_sequence_items)
        frequent, n, min_count = self._frequent(core.get([count.remote(b, col) for b in refs]))
        if not len(frequent):
            return frequent, [], n
        cpus = max(1, int(core.cluster_resources().get("CPU", 1)))
        p = int(self.num_partitions or 2 * cpus)
        split = core.remote(K.project_sequences).options(num_returns=p)
        frequent_ref = core.put(frequent)
        parts = [split.remote(b, col, frequent_ref, p) for b in refs]
        parts = [x if isinstance(x, (list, tuple)) else [x] for x in parts]
        mine = core.remote(K.mine_sequences)
        groups = core.get([mine.remote(g, p, min_count, int(self.max_pattern_length),
                                       *[x[g] for x in parts]) for g in range(p)])
        return frequent, [f for g in groups for f in g], n
