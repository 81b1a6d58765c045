"""TargetEncoder: each category replaced by a smoothed mean of the label within it (Spark's
TargetEncoder, scikit-learn's TargetEncoder's encodings).

Fit gathers per-block statistics (per category: rows, sum and sum of squares of the label) as
tasks on a Dataset and sums them by category on the driver; no row leaves its block.
"""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from shoal.exceptions import InvalidInputError
from shoal.ml._base import ShoalEstimatorMixin, check_fitted
from shoal.ml._feature_kernels import category_target_stats, merge_category_target_stats
from shoal.ml._input import (_is_dataset, as_frame, is_table, map_dataset_blocks, merge_input_columns,
                             resolve_fit_columns)

_TARGET_TYPES = ("auto", "binary", "continuous")


def _check_column(values, name, allow_null):
    """A column's values as a NumPy array with no nulls (unless allowed), checked for one type."""
    values = np.asarray(values)
    if values.dtype.kind == "c":
        raise InvalidInputError(f"Complex data not supported in column {name} of TargetEncoder")
    if values.dtype.kind == "f":
        if np.isinf(values).any():
            raise InvalidInputError(f"column {name} holds infinity (inf); it is no category: drop or "
                                    f"replace those rows first.")
        missing = np.isnan(values)
    elif values.dtype.kind == "O":
        import pandas as pd
        missing = np.asarray(pd.isna(values), dtype=bool)     # None, NaN, pd.NA in one C pass
    else:
        missing = np.zeros(len(values), dtype=bool)
    if missing.any() and not allow_null:
        raise InvalidInputError(f"column {name} holds a missing category (null/NaN) at row "
                                f"{int(missing.argmax())}; fill or drop it first (or handle_invalid='keep' "
                                f"to encode it with the overall mean).")
    return values, missing


def _label_values(y, label, target_type):
    y = np.asarray(y)
    try:
        if y.dtype.kind not in "biufO":
            raise TypeError
        y = y.astype(np.float64)
    except (TypeError, ValueError):
        raise InvalidInputError(f"Unknown label type: TargetEncoder's label {label} has dtype {y.dtype}; it "
                                f"needs numbers (index a string label with StringIndexer first).") from None
    if not np.isfinite(y).all():
        raise InvalidInputError(f"TargetEncoder's label {label} holds NaN, null or infinity at row "
                                f"{int((~np.isfinite(y)).argmax())}; drop those rows first.")
    if target_type == "binary" and not np.isin(y, (0.0, 1.0)).all():
        bad = y[~np.isin(y, (0.0, 1.0))][0]
        raise InvalidInputError(f"TargetEncoder target_type='binary' needs a 0/1 label, but {label} holds "
                                f"{bad!r}; set target_type='continuous'.")
    return y


def _block_stats(table, columns, label, target_type, allow_null):
    """Runs in a task: one block's category statistics (see category_target_stats)."""
    cols = []
    keep = np.ones(table.num_rows, dtype=bool)
    for c in columns:
        values, missing = _check_column(table.column(c).to_numpy(zero_copy_only=False), repr(c), allow_null)
        cols.append(values)
        keep &= ~missing
    y = _label_values(table.column(label).to_numpy(zero_copy_only=False), repr(label), target_type)
    return _stats(cols, y, keep, columns)


def _stats(cols, y, keep, names):
    # rows with a missing category count in the overall mean only
    try:
        per, _ = category_target_stats([c[keep & _present(c)] for c in cols], y[keep])
    except TypeError:
        raise InvalidInputError(f"a column of {names} mixes value types (e.g. strings and numbers); "
                                f"use one type per column.") from None
    totals = (float(len(y)), float(y.sum()), float((y * y).sum()))
    return per, totals, bool(np.isin(y, (0.0, 1.0)).all())


def _present(col):
    import pandas as pd
    return ~np.asarray(pd.isna(col), dtype=bool)


def _as_2d(X):
    import scipy.sparse as sp
    if sp.issparse(X):
        raise TypeError("TargetEncoder does not accept sparse input: pass a dense array (X.toarray()).")
    arr = np.asarray(X)
    if arr.ndim != 2:
        raise InvalidInputError(f"Expected 2D array for X, got {arr.ndim}D array instead. Reshape your data "
                                f"with X.reshape(-1, 1) for a single feature.")
    return arr


class TargetEncoder(ShoalEstimatorMixin, TransformerMixin, BaseEstimator):
    """Encode categorical columns by the label's mean within each category (Spark's TargetEncoder).

    Encoding of category c with n_c rows and label mean m_c, the overall label mean being m:
    ``w * m_c + (1 - w) * m`` with ``w = n_c / (n_c + smoothing)`` (Spark's formula, which is
    scikit-learn's for a number ``smooth``). smoothing: a number >= 0 (Spark's, default 0: the
    plain category mean) or "auto" (scikit-learn's empirical Bayes weight from the variance of
    the label within the category). target_type: "binary" (a 0/1 label; the encoding is the
    share of positives, Spark's default), "continuous", or "auto" (binary when the label is
    0/1). handle_invalid: a category not seen at fit (or a null) is an error ("error") or
    encodes as the overall mean ("keep"). input_cols / output_cols: the columns encoded and
    written (default ``<column>_encoded``) on a Dataset.

    Categories may be numbers or strings. Unlike scikit-learn's ``fit_transform``, which
    encodes the training rows by cross fitting, ``fit_transform`` here is ``fit`` then
    ``transform``, as Spark does; use it on held-out rows to avoid leaking the label.

    Fitted: categories_ and encodings_ (per input column, sorted categories and their
    encodings), category_counts_, target_mean_, n_features_in_, feature_names_in_.
    """

    def __init__(self, *, smoothing=0.0, target_type="auto", handle_invalid="error", input_cols=None,
                 output_cols=None):
        self.smoothing = smoothing
        self.target_type = target_type
        self.handle_invalid = handle_invalid
        self.input_cols = input_cols
        self.output_cols = output_cols

    def _own_input_columns(self):
        return self.input_cols

    def _check_params(self):
        if self.target_type not in _TARGET_TYPES:
            raise InvalidInputError(f"TargetEncoder target_type={self.target_type!r} must be one of "
                                    f"{_TARGET_TYPES} (multiclass labels: one binary encoder per class)")
        if self.handle_invalid not in ("error", "keep"):
            raise InvalidInputError(f"TargetEncoder handle_invalid={self.handle_invalid!r} must be 'error' "
                                    f"or 'keep'")
        s = self.smoothing
        if not (s == "auto" or (np.isscalar(s) and not isinstance(s, (str, bool)) and np.isfinite(s) and s >= 0)):
            raise InvalidInputError(f"TargetEncoder smoothing={s!r} must be a number >= 0 or 'auto'")

    def fit(self, X, y=None, *, features=None, label=None):
        """Learn each category's encoding from the label; returns self."""
        self._check_params()
        if _is_dataset(X):
            X = X.materialize()
        y, features, label = resolve_fit_columns(X, y, features=features, label=label, estimator=self,
                                                 supervised=True)
        features = merge_input_columns(self.input_cols, features, self)
        if features is not None:
            resolve_fit_columns(X, None, features=features, label=label, estimator=self,
                                features_param="input_cols=")
        allow_null = self.handle_invalid == "keep"
        target_type = self.target_type
        if _is_dataset(X):
            if features is None:
                features = [c for c in X.columns() if c != label]
            kind = "binary" if target_type == "binary" else "continuous"
            parts = [p for p in map_dataset_blocks(X, _block_stats, features, label, kind, allow_null)
                     if p[1][0] > 0]
            if not parts:
                raise InvalidInputError("TargetEncoder got an empty Dataset (0 rows)")
            names = list(features)
        else:
            cols, names, y, label = self._columns_and_label(X, y, features, label)
            shown = names if names is not None else [f"x{j}" for j in range(len(cols))]
            checked = [_check_column(c, repr(n), allow_null) for c, n in zip(cols, shown)]
            y = _label_values(y, repr(label), "binary" if target_type == "binary" else "continuous")
            keep = np.ones(len(y), dtype=bool)
            for _, missing in checked:
                keep &= ~missing
            parts = [_stats([c for c, _ in checked], y, keep, shown)]
        per, (n, s, ss) = merge_category_target_stats(parts)
        self.target_mean_ = s / n
        if target_type == "auto":
            self.target_type_ = "binary" if all(p[2] for p in parts) else "continuous"
        else:
            self.target_type_ = target_type
        y_var = ss / n - self.target_mean_ ** 2
        self.categories_, self.encodings_, self.category_counts_ = [], [], []
        for values, counts, sums, sqs in per:
            means = sums / counts
            if self.smoothing == "auto":
                within = np.maximum(sqs / counts - means ** 2, 0.0)
                denom = y_var * counts + within
                w = np.divide(y_var * counts, denom, out=np.ones_like(denom), where=denom > 0)
            else:
                w = counts / (counts + float(self.smoothing))
            self.categories_.append(values)
            self.encodings_.append(w * means + (1.0 - w) * self.target_mean_)
            self.category_counts_.append(counts)
        self.n_features_in_ = len(per)
        if names is not None and all(isinstance(c, str) for c in names):
            self.feature_names_in_ = np.asarray(names, dtype=object)
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        return self

    def _columns_and_label(self, X, y, features, label):
        """(list of columns, names or None, label array, label name) of array or table input."""
        if is_table(X):
            frame = as_frame(X)
            if label is not None:
                y = frame[label].to_numpy()
            names = list(features) if features is not None else [str(c) for c in frame.columns if c != label]
            return [frame[c].to_numpy() for c in names], names, y, label or "y"
        arr = _as_2d(X)
        if arr.shape[0] == 0 or arr.shape[1] == 0:
            raise InvalidInputError(f"Found array with {arr.shape[0]} sample(s) and {arr.shape[1]} feature(s) "
                                    f"(shape={arr.shape}) while a minimum of 1 is required by TargetEncoder.")
        if y is None:
            raise InvalidInputError("TargetEncoder requires y to be passed, but the target y is None: pass the "
                                    "label as y (or label='<column>').")
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != arr.shape[0]:
            raise InvalidInputError(f"X and y have inconsistent numbers of samples: [{arr.shape[0]}, "
                                    f"{y.shape[0] if y.ndim else 0}] (y must be 1-D).")
        return [arr[:, j] for j in range(arr.shape[1])], None, y, "y"

    def _output_names(self):
        names = list(getattr(self, "feature_names_in_", [f"x{j}" for j in range(self.n_features_in_)]))
        if self.output_cols is None:
            return [f"{c}_encoded" for c in names]
        out = [self.output_cols] if isinstance(self.output_cols, str) else list(self.output_cols)
        if len(out) != len(names):
            raise InvalidInputError(f"TargetEncoder has {len(names)} input columns but {len(out)} "
                                    f"output_cols; give one output name per input column.")
        return out

    def get_feature_names_out(self, input_features=None):
        """The output column names (``<column>_encoded`` unless output_cols names them)."""
        check_fitted(self, "encodings_")
        return np.asarray(self._output_names(), dtype=object)

    def _dataset_columns_io(self):
        return list(self.feature_names_in_), self._output_names()

    def _encode(self, cols, names):
        out = np.empty((len(cols[0]), len(cols)))
        for j, (c, cats, enc) in enumerate(zip(cols, self.categories_, self.encodings_)):
            c, missing = _check_column(c, repr(names[j]), self.handle_invalid == "keep")
            pos = np.zeros(len(c), dtype=np.int64)
            known = np.zeros(len(c), dtype=bool)
            present = np.flatnonzero(~missing)
            try:
                p = np.minimum(np.searchsorted(cats, c[present]), len(cats) - 1)
                pos[present] = p
                known[present] = cats[p] == c[present]
            except TypeError:
                raise InvalidInputError(f"column {names[j]!r} holds values of another type than at fit") from None
            if not known.all() and self.handle_invalid == "error":
                bad = c[~known][0]
                bad = bad.item() if isinstance(bad, np.generic) else bad
                raise InvalidInputError(
                    f"column {names[j]!r} holds the category {bad!r}, not seen at fit; set "
                    f"handle_invalid='keep' (encode it with the overall mean) or refit on data holding it.")
            out[:, j] = np.where(known, enc[pos], self.target_mean_)
        return out

    def transform(self, X):
        """The encodings (n, k) of X's columns; a Dataset gets the columns ``output_cols``."""
        check_fitted(self, "encodings_")
        if _is_dataset(X):
            names = getattr(self, "feature_names_in_", None)
            if names is None:
                raise InvalidInputError("TargetEncoder was fitted on an array; fit it on the Dataset (or a "
                                        "DataFrame) to transform a Dataset by column name.")
            return X.map_batches(_encode_table, batch_format="pyarrow",
                                 fn_args=(self, list(names), self._output_names()))
        names = list(getattr(self, "feature_names_in_", [f"x{j}" for j in range(self.n_features_in_)]))
        if is_table(X):
            frame = as_frame(X)
            missing = [c for c in names if c not in frame.columns]
            if missing:
                raise InvalidInputError(f"column {missing[0]!r} seen by TargetEncoder.fit() is missing from X; "
                                        f"columns given: {[str(c) for c in frame.columns]}")
            cols = [frame[c].to_numpy() for c in names]
        else:
            arr = _as_2d(X)
            if arr.shape[1] != self.n_features_in_:
                raise InvalidInputError(f"X has {arr.shape[1]} features, but TargetEncoder is expecting "
                                        f"{self.n_features_in_} features as input (argument X of transform()).")
            if arr.shape[0] == 0:
                raise InvalidInputError("X given to TargetEncoder.transform() is empty (0 rows).")
            cols = [arr[:, j] for j in range(arr.shape[1])]
        return self._encode(cols, names)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        tags.input_tags.string = True
        tags.input_tags.categorical = True
        tags.input_tags.allow_nan = self.handle_invalid == "keep"
        return tags


def _encode_table(table, encoder, names, out_names):
    """Runs in a task: the block with the encoded columns added."""
    import pyarrow as pa
    for c in names:
        if c not in table.column_names:
            raise InvalidInputError(f"column {c!r} (an input column of TargetEncoder) is missing from the "
                                    f"Dataset; available columns: {table.column_names}")
    if table.num_rows == 0:
        out = np.empty((0, len(names)))
    else:
        out = encoder._encode([table.column(c).to_numpy(zero_copy_only=False) for c in names], names)
    for j, name in enumerate(out_names):
        values = pa.array(out[:, j])
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, values)
        else:
            table = table.append_column(name, values)
    return table
