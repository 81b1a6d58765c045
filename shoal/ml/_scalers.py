"""Feature scaling and expansion: StandardScaler, MinMaxScaler, MaxAbsScaler, Normalizer, Imputer,
PolynomialExpansion. Fit statistics are folded from per-block partials (one pass each)."""
from __future__ import annotations

import itertools

import numpy as np
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin

from shoal.exceptions import InvalidInputError
from shoal.ml._kernels import (_affine_block, _block_max_abs, _block_min_max, _block_nan_sums, _block_sketch_missing, _block_value_counts, _merge_min_max, _merge_value_counts, _missing_mask)
from shoal.ml._base import ShoalEstimatorMixin, check_fitted, fit_input, transform_dataset
from shoal.ml._input import _is_dataset, check_finite, check_predict_input
from shoal.ml._quantiles import merge_sketches, sketch_quantiles
from shoal.ml._stats import (block_moments, block_offsets, block_weighted_moments, check_sample_weight,
                             fold, merge_moments)


def _safe_scale(scale):
    """Constant features get scale 1 so they map to 0 instead of dividing by zero."""
    scale = np.asarray(scale, dtype=np.float64).copy()
    scale[scale < 10 * np.finfo(np.float64).eps] = 1.0
    return scale


class _Transformer(ShoalEstimatorMixin, TransformerMixin, BaseEstimator):
    _fitted_attr = "n_features_in_"

    def transform(self, X):
        check_fitted(self, self._fitted_attr)
        if _is_dataset(X):
            return transform_dataset(self, X)
        return self._transform(check_predict_input(self, X, "transform"))


class StandardScaler(OneToOneFeatureMixin, _Transformer):
    """Remove the mean and scale to unit variance (population variance, as scikit-learn)."""
    _fitted_attr = "scale_"
    _fits_design_matrix = True

    def _can_block_transform(self):
        return True

    def _block_transform(self):
        d = self.n_features_in_
        mul = 1.0 / self.scale_ if self.with_std else np.ones(d)
        add = -self.mean_ * mul if self.with_mean else np.zeros(d)
        return _affine_block, (mul, add)

    def __init__(self, *, with_mean=True, with_std=True):
        self.with_mean = with_mean
        self.with_std = with_std

    def fit(self, X, y=None, sample_weight=None, *, features=None, label=None):
        """Learn the mean and scale; ``sample_weight`` (one weight per row) weights both."""
        dm = fit_input(self, X, y, None, features=features, label=label)
        w = check_sample_weight(sample_weight, dm.n_rows, "StandardScaler")
        if w is None:
            n, mean, M2 = dm.map_reduce(block_moments, reduce=merge_moments)
            self.n_samples_seen_ = int(n)
        else:
            n, mean, M2 = fold(dm.map_indexed(block_weighted_moments, w, block_offsets(dm)),
                               merge_moments)
            self.n_samples_seen_ = float(n)   # scikit-learn's: the sum of the weights
        self.mean_ = mean if self.with_mean else None
        self.var_ = M2 / n if self.with_std else None
        self.scale_ = _safe_scale(np.sqrt(M2 / n)) if self.with_std else None
        return self

    def _transform(self, X):
        # one output allocation, then in place: first-touching big arrays is the cost here
        out = np.subtract(X, self.mean_) if self.with_mean else np.array(X, dtype=np.float64)
        if self.with_std:
            out /= self.scale_
        return out

    def inverse_transform(self, X):
        check_fitted(self, "n_samples_seen_")
        X = check_predict_input(self, X, "inverse_transform")
        if self.with_std:
            X = X * self.scale_
        if self.with_mean:
            X = X + self.mean_
        return X


class MinMaxScaler(OneToOneFeatureMixin, _Transformer):
    """Scale each feature to ``feature_range`` using the distributed min and max."""
    _fitted_attr = "scale_"
    _fits_design_matrix = True

    def _can_block_transform(self):
        return not self.clip

    def _block_transform(self):
        return _affine_block, (self.scale_, self.min_)

    def __init__(self, feature_range=(0, 1), *, clip=False):
        self.feature_range = feature_range
        self.clip = clip

    def fit(self, X, y=None, *, features=None, label=None):
        lo, hi = self.feature_range
        if lo >= hi:
            raise InvalidInputError(f"feature_range must be (min, max) with min < max, got {self.feature_range}")
        dm = fit_input(self, X, y, None, features=features, label=label)
        self.data_min_, self.data_max_ = dm.map_reduce(_block_min_max, reduce=_merge_min_max)
        self.data_range_ = self.data_max_ - self.data_min_
        self.scale_ = (hi - lo) / _safe_scale(self.data_range_)
        self.min_ = lo - self.data_min_ * self.scale_
        self.n_samples_seen_ = dm.n_rows
        return self

    def _transform(self, X):
        X = np.multiply(X, self.scale_)
        X += self.min_
        if self.clip:
            np.clip(X, self.feature_range[0], self.feature_range[1], out=X)
        return X

    def inverse_transform(self, X):
        check_fitted(self, "scale_")
        X = check_predict_input(self, X, "inverse_transform")
        return (X - self.min_) / self.scale_


class MaxAbsScaler(OneToOneFeatureMixin, _Transformer):
    """Scale each feature by its maximum absolute value (keeps sparsity and sign)."""
    _fitted_attr = "scale_"
    _fits_design_matrix = True

    def _can_block_transform(self):
        return True

    def _block_transform(self):
        return _affine_block, (1.0 / self.scale_, np.zeros(self.n_features_in_))

    def fit(self, X, y=None, *, features=None, label=None):
        dm = fit_input(self, X, y, None, features=features, label=label)
        self.max_abs_ = dm.map_reduce(_block_max_abs, reduce=np.maximum)
        self.scale_ = _safe_scale(self.max_abs_)
        self.n_samples_seen_ = dm.n_rows
        return self

    def _transform(self, X):
        return X / self.scale_

    def inverse_transform(self, X):
        check_fitted(self, "scale_")
        return check_predict_input(self, X, "inverse_transform") * self.scale_


class Normalizer(OneToOneFeatureMixin, _Transformer):
    """Scale each row to unit norm: ``norm`` is "l2", "l1" or "max" (Spark's p = 2, 1, inf)."""

    def __init__(self, norm="l2"):
        self.norm = norm

    def fit(self, X, y=None, *, features=None, label=None):
        if self.norm not in ("l1", "l2", "max"):
            raise InvalidInputError(f"norm must be 'l1', 'l2' or 'max', got {self.norm!r}")
        fit_input(self, X, y, None, features=features, label=label)
        return self

    def transform(self, X):
        # stateless: usable without fit (scikit-learn's requires_fit=False)
        if _is_dataset(X):
            check_fitted(self, "n_features_in_")
            return transform_dataset(self, X)
        if self.norm not in ("l1", "l2", "max"):
            raise InvalidInputError(f"norm must be 'l1', 'l2' or 'max', got {self.norm!r}")
        return self._transform(check_predict_input(self, X, "transform"))

    def _transform(self, X):
        if self.norm == "l2":
            norms = np.sqrt(np.einsum("ij,ij->i", X, X))
        elif self.norm == "l1":
            norms = np.abs(X).sum(axis=1)
        else:
            norms = np.abs(X).max(axis=1)
        return X / _safe_scale(norms)[:, None]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        return tags


class Imputer(OneToOneFeatureMixin, _Transformer):
    """Replace missing values by the column's mean, median or most frequent value (Spark's Imputer).

    ``missing_value``: the value counted as missing (NaN always is). The median uses a
    mergeable quantile sketch (exact up to 1024 rows per block, ~0.1% rank error beyond).
    """
    _fitted_attr = "statistics_"

    def __init__(self, *, strategy="mean", missing_value=np.nan):
        self.strategy = strategy
        self.missing_value = missing_value

    def fit(self, X, y=None, *, features=None, label=None):
        if self.strategy not in ("mean", "median", "most_frequent"):
            raise InvalidInputError(f"strategy must be 'mean', 'median' or 'most_frequent', got {self.strategy!r}")
        dm = fit_input(self, X, y, None, features=features, label=label, allow_nan=True)
        missing = float(self.missing_value)
        if self.strategy == "mean":
            sums, counts = dm.map_reduce(_block_nan_sums, missing)
            stats = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        elif self.strategy == "median":
            stats = sketch_quantiles(dm.map_reduce(_block_sketch_missing, missing, reduce=merge_sketches), 0.5)
        else:
            vc = dm.map_reduce(_block_value_counts, missing, reduce=_merge_value_counts)
            stats = np.array([v[np.argmax(c)] if len(v) else np.nan for v, c in vc])
        empty = np.flatnonzero(np.isnan(stats))
        if empty.size:
            names = getattr(self, "feature_names_in_", None)
            col = repr(names[empty[0]]) if names is not None else str(int(empty[0]))
            raise InvalidInputError(
                f"column {col} holds only missing values: the {self.strategy} cannot be computed; "
                f"drop that column before imputing.")
        self.statistics_ = stats
        return self

    def transform(self, X):
        check_fitted(self, "statistics_")
        if _is_dataset(X):
            return transform_dataset(self, X)
        X = _validate_with_nan(self, X)
        mask = _missing_mask(X, float(self.missing_value))
        return np.where(mask, self.statistics_, X)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags


def _validate_with_nan(estimator, X):
    """check_predict_input, but NaN is data here (infinity is still rejected)."""
    from shoal.ml import _input
    Xa = _input._to_float_matrix(X, "X", estimator) if not hasattr(X, "columns") else None
    if Xa is None:
        Xa, _, _ = _input._frame_to_matrix(X, list(getattr(estimator, "feature_names_in_", X.columns)),
                                           None, estimator)
    if Xa.shape[0] == 0:
        raise InvalidInputError(f"X given to {type(estimator).__name__}.transform() is empty (0 rows).")
    if Xa.shape[1] != estimator.n_features_in_:
        raise InvalidInputError(
            f"X has {Xa.shape[1]} features, but {type(estimator).__name__} is expecting "
            f"{estimator.n_features_in_} features as input (argument X of transform()).")
    check_finite(np.where(np.isnan(Xa), 0.0, Xa), getattr(estimator, "feature_names_in_", None), "X")
    return Xa


class PolynomialExpansion(_Transformer):
    """All monomials of the features up to ``degree`` (no constant term), scikit-learn's column order."""

    def __init__(self, degree=2):
        self.degree = degree

    def fit(self, X, y=None, *, features=None, label=None):
        if not (isinstance(self.degree, (int, np.integer)) and self.degree >= 1):
            raise InvalidInputError(f"degree must be a positive integer, got {self.degree!r}")
        dm = fit_input(self, X, y, None, features=features, label=label)
        self.powers_ = np.array([np.bincount(c, minlength=dm.n_features)
                                 for k in range(1, self.degree + 1)
                                 for c in itertools.combinations_with_replacement(range(dm.n_features), k)])
        self.n_output_features_ = len(self.powers_)
        return self

    def _transform(self, X):
        # build degree k from degree k-1 columns: one vectorized product per output column
        d = X.shape[1]
        cols = [X[:, j] for j in range(d)]
        out = list(cols)
        prev = [(j,) for j in range(d)]
        prev_cols = cols
        for _ in range(2, self.degree + 1):
            nxt, nxt_cols = [], []
            for combo, col in zip(prev, prev_cols):
                for j in range(combo[-1], d):
                    nxt.append(combo + (j,))
                    nxt_cols.append(col * X[:, j])
            out.extend(nxt_cols)
            prev, prev_cols = nxt, nxt_cols
        return np.column_stack(out)

    def get_feature_names_out(self, input_features=None):
        check_fitted(self, "powers_")
        names = (np.asarray(input_features) if input_features is not None else
                 getattr(self, "feature_names_in_", np.array([f"x{i}" for i in range(self.n_features_in_)])))
        return np.array([" ".join(f"{names[j]}^{p}" if p > 1 else str(names[j])
                                  for j, p in enumerate(row) if p) for row in self.powers_], dtype=object)
