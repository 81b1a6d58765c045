"""Bucketizer (fixed splits) and QuantileDiscretizer (splits from a distributed quantile sketch)."""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin

from shoal.exceptions import InvalidInputError
from shoal.ml._base import ShoalEstimatorMixin, check_fitted, fit_input, transform_dataset
from shoal.ml._input import _is_dataset
from shoal.ml._quantiles import block_sketch, merge_sketches, sketch_quantiles
from shoal.ml._scalers import _validate_with_nan

_HANDLE_INVALID = ("error", "keep", "skip")


def _check_splits(splits, where="splits"):
    s = np.asarray(splits, dtype=np.float64)
    if s.ndim != 1 or len(s) < 3:
        raise InvalidInputError(f"{where} must hold at least 3 values (2 buckets), got {splits!r}")
    if np.isnan(s).any() or not (np.diff(s) > 0).all():
        raise InvalidInputError(f"{where} must be strictly increasing, got {splits!r}")
    return s


def _bucketize(X, splits_per_col, handle_invalid, names=None):
    """Bucket i holds [s_i, s_{i+1}); the last bucket also holds its upper bound (Spark's rule)."""
    out = np.empty_like(X)
    keep_rows = np.ones(X.shape[0], dtype=bool)
    for j, s in enumerate(splits_per_col):
        col = X[:, j]
        idx = np.searchsorted(s, col, side="right") - 1
        idx[col == s[-1]] = len(s) - 2
        nan = np.isnan(col)
        bad = ((idx < 0) | (idx > len(s) - 2)) & ~nan
        if bad.any():
            v = col[np.flatnonzero(bad)[0]]
            label = repr(names[j]) if names is not None else str(j)
            raise InvalidInputError(f"value {v!r} of column {label} is outside the splits "
                                    f"[{s[0]}, {s[-1]}]; widen the splits (use -inf/inf at the ends).")
        if nan.any():
            if handle_invalid == "error":
                label = repr(names[j]) if names is not None else str(j)
                raise InvalidInputError(f"column {label} holds NaN; set handle_invalid='keep' (extra "
                                        f"bucket) or 'skip' (drop the row), or impute first.")
            idx[nan] = len(s) - 1
            keep_rows &= ~nan if handle_invalid == "skip" else True
        out[:, j] = idx
    return out[keep_rows] if handle_invalid == "skip" else out


class _Bucketing(ShoalEstimatorMixin, OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    def transform(self, X):
        check_fitted(self, "splits_")
        if _is_dataset(X):
            return transform_dataset(self, X)
        X = _validate_with_nan(self, X)
        return _bucketize(X, self.splits_, self.handle_invalid, getattr(self, "feature_names_in_", None))

    def _rows_kept(self, frame):
        """The rows ``transform`` keeps (with handle_invalid="skip": those without NaN)."""
        return ~frame.isna().to_numpy().any(axis=1)

    def _check_handle_invalid(self):
        if self.handle_invalid not in _HANDLE_INVALID:
            raise InvalidInputError(f"handle_invalid must be one of {_HANDLE_INVALID}, got {self.handle_invalid!r}")

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = self.handle_invalid != "error"
        return tags


class Bucketizer(_Bucketing):
    """Map continuous features to bucket indices with given ``splits`` (one list for every column,
    or a list of lists, one per column)."""

    def __init__(self, splits=None, *, handle_invalid="error"):
        self.splits = splits
        self.handle_invalid = handle_invalid

    def fit(self, X, y=None, *, features=None, label=None):
        self._check_handle_invalid()
        if self.splits is None:
            raise InvalidInputError("Bucketizer needs splits=[...] (e.g. [-inf, 0, 10, inf])")
        dm = fit_input(self, X, y, None, features=features, label=label, allow_nan=self.handle_invalid != "error")
        per_col = np.ndim(self.splits[0]) == 1 if len(self.splits) else False
        if per_col:
            if len(self.splits) != dm.n_features:
                raise InvalidInputError(f"splits has {len(self.splits)} lists for {dm.n_features} columns")
            self.splits_ = [_check_splits(s, f"splits[{j}]") for j, s in enumerate(self.splits)]
        else:
            s = _check_splits(self.splits)
            self.splits_ = [s] * dm.n_features
        return self


class QuantileDiscretizer(_Bucketing):
    """Bucket each column into ``num_buckets`` of about equal counts (splits from approximate quantiles)."""

    def __init__(self, num_buckets=2, *, handle_invalid="error"):
        self.num_buckets = num_buckets
        self.handle_invalid = handle_invalid

    def fit(self, X, y=None, *, features=None, label=None):
        self._check_handle_invalid()
        if not (isinstance(self.num_buckets, (int, np.integer)) and self.num_buckets >= 2):
            raise InvalidInputError(f"num_buckets must be an integer >= 2, got {self.num_buckets!r}")
        dm = fit_input(self, X, y, None, features=features, label=label, allow_nan=self.handle_invalid != "error")
        sketch = dm.map_reduce(block_sketch, reduce=merge_sketches)
        inner = sketch_quantiles(sketch, np.arange(1, self.num_buckets) / self.num_buckets)
        self.splits_ = []
        for j in range(dm.n_features):
            q = inner[:, j]
            q = np.unique(q[~np.isnan(q)])
            self.splits_.append(np.concatenate([[-np.inf], q, [np.inf]]))
        return self
