"""FPGrowth: frequent itemsets and association rules by parallel FP-growth (Spark's FPGrowth)."""
from __future__ import annotations

import math

import numpy as np
from sklearn.base import BaseEstimator

from shoal.exceptions import InvalidInputError, TaskError
from shoal.ml._base import ShoalEstimatorMixin, check_fitted
from shoal.ml._columns import as_frame, is_table, resolve_fit_columns
from shoal.ml._executor import _dataset_block_refs, _is_dataset, _shoal_core
from shoal.ml.fpm import _kernels as K


def _as_table(X, column, who):
    """X (a pandas/Polars DataFrame, an Arrow Table, or a list of transactions) as an Arrow table."""
    import pyarrow as pa
    if is_table(X):
        X = as_frame(X)
        try:
            return pa.Table.from_pandas(X[[column]], preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise InvalidInputError(f"column {column!r} given to {who} must hold a list of items per "
                                    f"row of one type: {e}") from None
    if isinstance(X, (str, bytes)) or not hasattr(X, "__iter__"):
        raise InvalidInputError(f"{who} takes a shoal.data Dataset, a DataFrame or Arrow Table with a "
                                f"list column, or a list of transactions (lists of items); got "
                                f"{type(X).__name__}")
    try:
        return pa.table({column: pa.array([list(t) if t is not None else None for t in X])})
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as e:
        raise InvalidInputError(f"{who}: every transaction must be a list of items of one type "
                                f"(numbers or strings): {e}") from None


def _raise_cause(e: TaskError):
    if isinstance(e.cause, InvalidInputError):
        raise e.cause from None
    raise e


class FPGrowth(ShoalEstimatorMixin, BaseEstimator):
    """Frequent itemsets and association rules of a transactions column (Spark's FPGrowth).

    Parallel FP-growth as Spark: one pass counts every item (one task per block),
    items as frequent as ``min_support`` are ranked by frequency, a second pass splits
    each transaction into the conditional transactions of ``num_partitions`` item
    groups (left in the object store), and one task per group mines the itemsets whose
    least frequent item is in the group, each root item's projected transactions
    searched depth first on bitsets. Rules come from the itemsets in the driver.

    Parameters (Spark's names in snake case):
        min_support: the smallest fraction of transactions an itemset must appear in.
        min_confidence: the smallest confidence of an association rule (rules are
        generated with one consequent item, as Spark). items_col: the column of
        transactions (lists of distinct items; Spark's itemsCol); ``fit(ds,
        features=["basket"])`` names it too. prediction_col: the column transform appends.
        num_partitions: item groups mined in parallel (None: twice the cluster's CPUs).

    ``fit(X)``: a shoal.data Dataset, pandas/Polars DataFrame or Arrow Table with the
    items column, or a list of transactions. A transaction holding an item twice, a null
    transaction or item, a column of non-lists: InvalidInputError naming the column.

    Fitted: freq_itemsets_ (pandas DataFrame: items, freq), association_rules_ (pandas
    DataFrame: antecedent, consequent (one item, a list as Spark), confidence, lift,
    support), n_transactions_, feature_names_in_ ([items_col]), n_features_in_ (1).
    ``transform(X)`` predicts for each transaction the consequents of the rules whose
    antecedent it holds (less its own items).
    """

    def __init__(self, *, min_support=0.3, min_confidence=0.8, items_col="items",
                 prediction_col="prediction", num_partitions=None):
        self.min_support = min_support
        self.min_confidence = min_confidence
        self.items_col = items_col
        self.prediction_col = prediction_col
        self.num_partitions = num_partitions

    def _check_params(self):
        for name in ("min_support", "min_confidence"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating)) or not 0 <= v <= 1:
                raise InvalidInputError(f"FPGrowth {name}={v!r} must be a number in [0, 1]")
        p = self.num_partitions
        if p is not None and (not isinstance(p, (int, np.integer)) or isinstance(p, bool) or p < 1):
            raise InvalidInputError(f"FPGrowth num_partitions={p!r} must be a positive int or None")

    def _column(self, features):
        if features is None:
            return self.items_col
        if len(features) != 1:
            raise InvalidInputError(f"FPGrowth.fit(): features= names the one items column, got "
                                    f"{features!r}")
        return features[0]

    def fit(self, X, y=None, *, features=None, label=None):
        """Mine the frequent itemsets and association rules of X's transactions; returns self."""
        self._check_params()
        y, features, label = resolve_fit_columns(X, y, features=features, label=label, estimator=self)
        column = self._column(features)
        try:
            if _is_dataset(X):
                values, counts, n, groups, frequent = self._mine_dataset(X, column)
            else:
                values, counts, n, groups, frequent = self._mine_local(_as_table(X, column, "FPGrowth.fit()"),
                                                                      column)
        except TaskError as e:
            _raise_cause(e)
        self._finish(frequent, counts, n, groups)
        self.feature_names_in_ = np.array([column], dtype=object)
        self.n_features_in_ = 1
        return self

    # ------------------------------------------------------------------ mining

    def _frequent(self, parts):
        """Merge per-block item counts; the frequent items by rank, their counts, n."""
        import pyarrow as pa
        n = int(sum(p[2] for p in parts))
        if n == 0:
            raise InvalidInputError("FPGrowth.fit() got no transactions (X has no rows)")
        parts = [p for p in parts if len(p[0])]
        if not parts:
            return pa.array([], pa.null()), np.zeros(0, dtype=np.int64), n, 0
        try:
            table = pa.table({"item": pa.concat_arrays([p[0] for p in parts]),
                              "n": pa.array(np.concatenate([p[1] for p in parts]))})
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise InvalidInputError(f"FPGrowth: the items column holds items of different types in "
                                    f"different blocks; give every item one type. ({e})") from None
        table = table.group_by("item").aggregate([("n", "sum")])
        min_count = max(1, math.ceil(self.min_support * n))
        table = table.filter(np.asarray(table.column("n_sum").to_numpy()) >= min_count)
        table = table.sort_by([("n_sum", "descending"), ("item", "ascending")])
        return table.column("item").combine_chunks(), table.column("n_sum").to_numpy(), n, min_count

    def _mine_local(self, table, column):
        frequent, counts, n, min_count = self._frequent([K.count_items(table, column)])
        groups = [K.mine_group(0, 1, min_count, K.conditional_transactions(table, column, frequent, 1))] \
            if len(frequent) else []
        return frequent, counts, n, groups, frequent

    def _mine_dataset(self, ds, column):
        core = _shoal_core()
        if core is None:
            raise InvalidInputError("a shoal.data Dataset needs shoal's core runtime; it is not importable")
        columns = ds.columns()
        if column not in columns:
            raise InvalidInputError(f"column {column!r} is missing from X (FPGrowth reads the items "
                                    f"column items_col= or features=[...]); available columns: {columns}")
        refs = _dataset_block_refs(ds)
        count = core.remote(K.count_items)
        frequent, counts, n, min_count = self._frequent(core.get([count.remote(b, column) for b in refs]))
        if not len(frequent):
            return frequent, counts, n, [], frequent
        cpus = max(1, int(core.cluster_resources().get("CPU", 1)))
        p = int(self.num_partitions or 2 * cpus)
        split = core.remote(K.conditional_transactions).options(num_returns=p)
        frequent_ref = core.put(frequent)
        parts = [split.remote(b, column, frequent_ref, p) for b in refs]
        parts = [x if isinstance(x, (list, tuple)) else [x] for x in parts]
        mine = core.remote(K.mine_group)
        groups = core.get([mine.remote(g, p, min_count, *[x[g] for x in parts]) for g in range(p)])
        return frequent, counts, n, groups, frequent

    def _finish(self, frequent, counts, n, groups):
        """freq_itemsets_ and association_rules_ from the frequent items and the groups' itemsets."""
        import pandas as pd
        items = frequent.to_pylist()
        sets = [(r,) for r in range(len(items))]
        freq = [int(c) for c in counts]
        for flat, lengths, cnt in groups:
            at = 0
            for length, c in zip(lengths.tolist(), cnt.tolist()):
                # most frequent item first (ranks ascending), as each set's canonical order
                sets.append(tuple(sorted(flat[at:at + length].tolist())))
                freq.append(c)
                at += length
        self.n_transactions_ = n
        self.freq_itemsets_ = pd.DataFrame({"items": [[items[r] for r in s] for s in sets],
                                            "freq": np.array(freq, dtype=np.int64)})
        support = {s: f for s, f in zip(sets, freq)}
        rules = []
        for s, f in zip(sets, freq):
            if len(s) < 2:
                continue
            for j in range(len(s)):
                ante = s[:j] + s[j + 1:]
                conf = f / support[ante]
                if conf >= self.min_confidence:
                    rules.append((ante, s[j], conf, conf / (counts[s[j]] / n), f / n))
        rules.sort(key=lambda r: (-r[2], -r[4], len(r[0]), r[0], r[1]))
        self.association_rules_ = pd.DataFrame({
            "antecedent": [[items[r] for r in a] for a, *_ in rules],
            "consequent": [[items[c]] for _, c, *_ in rules],
            "confidence": np.array([r[2] for r in rules], dtype=np.float64),
            "lift": np.array([r[3] for r in rules], dtype=np.float64),
            "support": np.array([r[4] for r in rules], dtype=np.float64)})
        self._item_type = frequent.type

    # ------------------------------------------------------------------ predict

    def transform(self, X):
        """Each transaction's predicted items (consequents of the rules it satisfies, less its own
        items): a Dataset or table gets a ``prediction_col`` list column (a Dataset lazily, block
        by block as tasks); a list of transactions gives a list of lists."""
        import pyarrow as pa
        check_fitted(self, "association_rules_")
        column = str(self.feature_names_in_[0])
        rules = self.association_rules_
        args = (column, list(rules["antecedent"]), [c[0] for c in rules["consequent"]],
                self._item_type if not pa.types.is_null(self._item_type) else pa.string(),
                self.prediction_col)
        if _is_dataset(X):
            return X.map_batches(K.predict_block, batch_format="pyarrow", fn_args=args)
        if is_table(X):
            frame = as_frame(X)
            if column not in frame.columns:
                raise InvalidInputError(f"column {column!r} seen by FPGrowth.fit() is missing from X "
                                        f"(argument X of transform()); columns given: {list(frame.columns)}")
            out = K.predict_block(_as_table(frame, column, "FPGrowth.transform()"), *args)
            frame = frame.copy()
            frame[self.prediction_col] = out.column(self.prediction_col).to_pylist()
            return frame
        table = _as_table(X, column, "FPGrowth.transform()")
        return K.predict_block(table, *args).column(self.prediction_col).to_pylist()
