"""Categorical features: OneHotEncoder, StringIndexer, VectorAssembler."""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from shoal.exceptions import InvalidInputError
from shoal.ml._base import ShoalEstimatorMixin, check_fitted, transform_dataset
from shoal.ml._input import _is_dataset, map_dataset_blocks


def _as_columns(X, estimator, fit: bool):
    """Any 2-D input (array, DataFrame, Arrow Table) -> (list of 1-D column arrays, names or None)."""
    import scipy.sparse as sp
    if sp.issparse(X):
        raise TypeError(f"{type(estimator).__name__} does not accept sparse input; pass a dense array.")
    if type(X).__module__.startswith("pyarrow"):
        X = X.to_pandas()
    if hasattr(X, "columns"):
        names = [str(c) for c in X.columns]
        cols = [X[c].to_numpy() for c in X.columns]
    else:
        arr = np.asarray(X)
        if arr.ndim != 2:
            raise InvalidInputError(f"Expected 2D array for X, got {arr.ndim}D array instead. Reshape your "
                                    f"data with X.reshape(-1, 1) for a single feature.")
        if np.iscomplexobj(arr):
            raise InvalidInputError("Complex data not supported in X")
        names = None
        cols = [arr[:, j] for j in range(arr.shape[1])]
    n = len(cols[0]) if cols else (X.shape[0] if hasattr(X, "shape") else 0)
    if not cols:
        raise InvalidInputError(f"Found array with 0 feature(s) (shape=({n}, 0)) while a minimum of 1 is "
                                f"required by {type(estimator).__name__}.")
    if n == 0:
        raise InvalidInputError(f"Found array with 0 sample(s) (shape=(0, {len(cols)})) while a minimum of 1 "
                                f"is required by {type(estimator).__name__}: X is empty.")
    for j, c in enumerate(cols):
        if c.dtype.kind == "f" and not np.isfinite(c).all():
            label = repr(names[j]) if names else str(j)
            raise InvalidInputError(f"column {label} of X contains NaN or infinity; impute or drop first.")
    if not fit:
        expected = estimator.n_features_in_
        if len(cols) != expected:
            raise InvalidInputError(f"X has {len(cols)} features, but {type(estimator).__name__} is expecting "
                                    f"{expected} features as input (argument X of transform()).")
    return cols, names


def _py(v):
    """A NumPy scalar as the plain Python value, for readable messages."""
    return v.item() if isinstance(v, np.generic) else v


def _sorted_unique(col):
    try:
        return np.unique(col)
    except TypeError:
        raise InvalidInputError("a column mixes value types (e.g. strings and numbers); use one type") from None


def _check_no_missing(col, label):
    if col.dtype.kind == "O" and any(v is None for v in col):
        raise InvalidInputError(f"column {label} holds None; impute or drop missing categories first.")


class OneHotEncoder(ShoalEstimatorMixin, TransformerMixin, BaseEstimator):
    """One indicator column per category of each input column (dense float64 output).

    handle_unknown: "error" (default) or "ignore" (all zeros). drop_last=True drops each
    column's last category (Spark's dropLast).
    """

    def __init__(self, *, handle_unknown="error", drop_last=False):
        self.handle_unknown = handle_unknown
        self.drop_last = drop_last

    def fit(self, X, y=None):
        if self.handle_unknown not in ("error", "ignore"):
            raise InvalidInputError(f"handle_unknown must be 'error' or 'ignore', got {self.handle_unknown!r}")
        if _is_dataset(X):
            parts = map_dataset_blocks(X, _block_uniques, y if isinstance(y, str) else None)
            names = list(parts[0][1])
            cats = [_sorted_unique(np.concatenate([p[0][j] for p in parts])) for j in range(len(names))]
        else:
            cols, names = _as_columns(X, self, fit=True)
            for j, c in enumerate(cols):
                _check_no_missing(c, repr(names[j]) if names else str(j))
            cats = [_sorted_unique(c) for c in cols]
        self.categories_ = cats
        self.n_features_in_ = len(cats)
        if names is not None:
            self.feature_names_in_ = np.asarray(names, dtype=object)
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        return self

    def transform(self, X):
        check_fitted(self, "categories_")
        if _is_dataset(X):
            return transform_dataset(self, X)     # lazy: indicator columns replace the inputs
        cols, names = _as_columns(X, self, fit=False)
        blocks = []
        for j, (c, cats) in enumerate(zip(cols, self.categories_)):
            try:
                pos = np.searchsorted(cats, c)
            except TypeError:
                raise InvalidInputError(f"column {j} of X has values of another type than at fit time") from None
            pos = np.minimum(pos, len(cats) - 1)
            known = cats[pos] == c
            if not known.all() and self.handle_unknown == "error":
                label = repr(names[j]) if names else str(j)
                raise InvalidInputError(
                    f"Found unknown categories [{_py(c[~known][0])!r}] in column {label} during transform; "
                    f"refit on data holding every category or set handle_unknown='ignore'.")
            width = len(cats) - (1 if self.drop_last else 0)
            out = np.zeros((len(c), width))
            rows = np.flatnonzero(known & (pos < width))
            out[rows, pos[rows]] = 1.0
            blocks.append(out)
        return np.hstack(blocks)

    def get_feature_names_out(self, input_features=None):
        check_fitted(self, "categories_")
        names = (input_features if input_features is not None else
                 getattr(self, "feature_names_in_", [f"x{j}" for j in range(self.n_features_in_)]))
        out = []
        for n, cats in zip(names, self.categories_):
            keep = cats[:-1] if self.drop_last else cats
            out.extend(f"{n}_{c}" for c in keep)
        return np.asarray(out, dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.categorical = True
        tags.input_tags.string = True
        return tags


def _block_uniques(table, label):
    """Runs in a task: the sorted distinct values of each column but the label."""
    df = table.to_pandas() if hasattr(table, "to_pandas") else table
    cols = [c for c in df.columns if c != label]
    return [_sorted_unique(df[c].to_numpy()) for c in cols], list(map(str, cols))


class StringIndexer(ShoalEstimatorMixin, TransformerMixin, BaseEstimator):
    """Encode labels as indices 0..k-1 ordered by ``string_order_type`` (Spark's StringIndexer).

    string_order_type: "frequencyDesc" (default: the most frequent label gets 0; ties by
    label), "frequencyAsc", "alphabetAsc", "alphabetDesc". handle_invalid for unseen labels:
    "error", "keep" (index k) or "skip" (drop the row). Fits one column (1-D input) or several.
    """

    def __init__(self, *, string_order_type="frequencyDesc", handle_invalid="error"):
        self.string_order_type = string_order_type
        self.handle_invalid = handle_invalid

    def _columns(self, X, fit):
        arr = X
        if not hasattr(X, "columns") and not type(X).__module__.startswith("pyarrow"):
            arr = np.asarray(X)
            if arr.ndim == 1:
                return [arr], None, True
        cols, names = _as_columns(arr, self, fit)
        return cols, names, False

    def fit(self, X, y=None):
        if self.string_order_type not in ("frequencyDesc", "frequencyAsc", "alphabetAsc", "alphabetDesc"):
            raise InvalidInputError(f"unknown string_order_type {self.string_order_type!r}")
        if self.handle_invalid not in ("error", "keep", "skip"):
            raise InvalidInputError(f"handle_invalid must be 'error', 'keep' or 'skip', got {self.handle_invalid!r}")
        cols, names, one_d = self._columns(X, fit=True)
        if len(cols[0]) == 0:
            raise InvalidInputError("StringIndexer got an empty input (0 rows)")
        self.labels_ = []
        for j, c in enumerate(cols):
            _check_no_missing(c, repr(names[j]) if names else str(j))
            values, counts = np.unique(c, return_counts=True)
            if self.string_order_type == "frequencyDesc":
                order = np.lexsort((values, -counts))
            elif self.string_order_type == "frequencyAsc":
                order = np.lexsort((values, counts))
            elif self.string_order_type == "alphabetAsc":
                order = np.arange(len(values))
            else:
                order = np.arange(len(values))[::-1]
            self.labels_.append(values[order])
        self._one_d = one_d
        self.n_features_in_ = len(cols)
        return self

    def transform(self, X):
        check_fitted(self, "labels_")
        cols, names, _ = self._columns(X, fit=False)
        if len(cols) != self.n_features_in_:
            raise InvalidInputError(f"X has {len(cols)} features, but StringIndexer is expecting "
                                    f"{self.n_features_in_} features as input (argument X of transform()).")
        out = np.empty((len(cols[0]), len(cols)))
        keep = np.ones(len(cols[0]), dtype=bool)
        for j, (c, labels) in enumerate(zip(cols, self.labels_)):
            order = np.argsort(labels)
            sorted_labels = labels[order]
            pos = np.minimum(np.searchsorted(sorted_labels, c), len(labels) - 1)
            known = sorted_labels[pos] == c
            idx = order[pos].astype(np.float64)
            if not known.all():
                if self.handle_invalid == "error":
                    raise InvalidInputError(
                        f"unseen label {_py(c[~known][0])!r} in column {repr(names[j]) if names else j}; set "
                        f"handle_invalid='keep' or 'skip', or refit on data holding every label.")
                idx[~known] = len(labels)
                if self.handle_invalid == "skip":
                    keep &= known
            out[:, j] = idx
        out = out[keep]
        return out[:, 0] if self._one_d else out

    def inverse_transform(self, X):
        check_fitted(self, "labels_")
        idx = np.asarray(X).astype(np.int64)
        if self._one_d:
            return self.labels_[0][idx]
        return np.column_stack([labels[idx[:, j]] for j, labels in enumerate(self.labels_)])


class VectorAssembler(ShoalEstimatorMixin, TransformerMixin, BaseEstimator):
    """Gather named columns (scalars or fixed-length vectors per row) into one float64 matrix.

    handle_invalid: "error" (NaN names the column), "skip" (drop rows with NaN) or "keep".
    """

    def __init__(self, input_cols=None, *, handle_invalid="error"):
        self.input_cols = input_cols
        self.handle_invalid = handle_invalid

    def fit(self, X=None, y=None):
        if not self.input_cols:
            raise InvalidInputError("VectorAssembler needs input_cols=[...] column names")
        if self.handle_invalid not in ("error", "keep", "skip"):
            raise InvalidInputError(f"handle_invalid must be 'error', 'keep' or 'skip', got {self.handle_invalid!r}")
        self.n_features_in_ = len(self.input_cols)
        self.feature_names_in_ = np.asarray(self.input_cols, dtype=object)
        return self

    def transform(self, X):
        if not hasattr(self, "n_features_in_"):
            self.fit()
        if type(X).__module__.startswith("pyarrow"):
            X = X.to_pandas()
        if not (hasattr(X, "columns") or isinstance(X, dict)):
            raise InvalidInputError("VectorAssembler needs named columns: a DataFrame, an Arrow Table or a dict")
        parts = []
        for c in self.input_cols:
            if c not in X:
                raise InvalidInputError(f"column {c!r} is missing from the input of VectorAssembler")
            v = X[c]
            v = v.to_numpy() if hasattr(v, "to_numpy") else np.asarray(v)
            if v.dtype.kind == "O":
                try:
                    v = np.stack([np.asarray(r, dtype=np.float64) for r in v])
                except (ValueError, TypeError):
                    raise InvalidInputError(f"column {c!r} holds values that are neither numbers nor "
                                            f"equal-length numeric vectors") from None
            elif v.dtype.kind not in "biuf":
                raise InvalidInputError(f"column {c!r} has non-numeric dtype {v.dtype}; index it first "
                                        f"(StringIndexer)")
            parts.append(v.astype(np.float64).reshape(len(v), -1))
        out = np.hstack(parts)
        bad = ~np.isfinite(out).all(axis=1)
        if bad.any():
            if self.handle_invalid == "error":
                col_idx = np.flatnonzero(~np.isfinite(out[bad][0]))[0]
                widths = np.cumsum([p.shape[1] for p in parts])
                name = self.input_cols[int(np.searchsorted(widths, col_idx, side="right"))]
                raise InvalidInputError(f"column {name!r} holds NaN or infinity; set handle_invalid='skip' "
                                        f"or 'keep', or impute first.")
            if self.handle_invalid == "skip":
                out = out[~bad]
        return out
