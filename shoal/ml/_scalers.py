"""Feature scaling and expansion: StandardScaler, MinMaxScaler, MaxAbsScaler, Normalizer, Imputer,
PolynomialExpansion, Binarizer, RobustScaler. Fit statistics are folded from per-block partials (one pass each)."""
from __future__ import annotations

import itertools

import numpy as np
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin

from shoal.exceptions import InvalidInputError
from shoal.ml._kernels import (_affine_block, _block_max_abs, _block_min_max, _block_nan_sums, _block_sketch_missing, _block_value_counts, _merge_min_max, _merge_value_counts, _missing_mask)
from shoal.ml._base import ShoalEstimatorMixin, check_fitted, fit_input, transform_dataset
from shoal.ml._input import _is_dataset, check_finite, check_predict_input
from shoal.ml._feature_kernels import binarize_block
from shoal.ml._quantiles import block_sketch, merge_sketches, sketch_quantiles
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


class Binarizer(OneToOneFeatureMixin, _Transformer):
    """1.0 where a feature is above ``threshold``, else 0.0 (Spark's Binarizer, scikit-learn's
    Binarizer: strictly greater).

    threshold: one number for every feature, or one per feature (Spark's ``thresholds`` for
    several input columns). Stateless: transform works on arrays without fit; on a Dataset the
    fitted columns are replaced in place, as by the other scalers.
    """

    def __init__(self, threshold=0.0):
        self.threshold = threshold

    def _threshold(self, d):
        t = np.asarray(self.threshold, dtype=np.float64) if np.ndim(self.threshold) else None
        if t is None:
            if not (np.isscalar(self.threshold) and not isinstance(self.threshold, (str, bool))
                    and not np.isnan(float(self.threshold))):
                raise InvalidInputError(f"Binarizer threshold={self.threshold!r} must be a number or a "
                                        f"list of one number per feature")
            return float(self.threshold)
        if t.ndim != 1 or len(t) != d or np.isnan(t).any():
            raise InvalidInputError(f"Binarizer threshold has {t.size} values but X has {d} features; "
                                    f"give one threshold, or one per feature")
        return t

    def fit(self, X, y=None, *, features=None, label=None):
        """Nothing to learn: records the input columns and checks the threshold; returns self."""
        dm = fit_input(self, X, y, None, features=features, label=label)
        self._threshold(dm.n_features)
        return self

    def transform(self, X):
        """The 0/1 matrix (a Dataset: its fitted columns replaced)."""
        if _is_dataset(X):
            check_fitted(self, "n_features_in_")
            return transform_dataset(self, X)
        X = check_predict_input(self, X, "transform")
        return (X > self._threshold(X.shape[1])).astype(np.float64)

    def _can_block_transform(self):
        return True

    def _block_transform(self):
        return binarize_block, (self._threshold(self.n_features_in_),)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        return tags


class RobustScaler(OneToOneFeatureMixin, _Transformer):
    """Remove the median and scale by a quantile range (Spark's RobustScaler, scikit-learn's
    RobustScaler and its defaults).

    with_centering (default True, as scikit-learn; Spark's withCentering defaults to False):
    subtract the median. with_scaling: divide by the range between the quantiles
    ``quantile_range`` (percent, default (25.0, 75.0); Spark's lower/upper are these over
    100). unit_variance: scale so a normal feature ends with variance 1. NaN is ignored at
    fit and kept by transform.

    The quantiles come from per-block sketches merged in a tree of tasks: exact (NumPy's
    linear interpolation, as scikit-learn) while every block has at most 1024 rows, else
    within about 1/1000 in rank (Spark's relativeError is 0.001). A feature whose range is 0
    gets scale 1, as in scikit-learn (Spark divides by 0 to give 0).

    Fitted: center_ (Spark's median), scale_ (Spark's range), n_features_in_.
    """
    _fitted_attr = "scale_"
    _fits_design_matrix = True

    def __init__(self, *, with_centering=True, with_scaling=True, quantile_range=(25.0, 75.0),
                 unit_variance=False):
        self.with_centering = with_centering
        self.with_scaling = with_scaling
        self.quantile_range = quantile_range
        self.unit_variance = unit_variance

    def fit(self, X, y=None, *, features=None, label=None):
        """Learn the medians and quantile ranges; returns self."""
        try:
            q_min, q_max = (float(q) for q in self.quantile_range)
        except (TypeError, ValueError):
            raise InvalidInputError(f"RobustScaler quantile_range={self.quantile_range!r} must be two "
                                    f"percentages (low, high)") from None
        if not 0 <= q_min <= q_max <= 100:
            raise InvalidInputError(f"RobustScaler quantile_range={self.quantile_range!r}: need "
                                    f"0 <= low <= high <= 100")
        dm = fit_input(self, X, y, None, features=features, label=label, allow_nan=True)
        sketch = dm.map_reduce(block_sketch, reduce=merge_sketches)
        q = sketch_quantiles(sketch, [0.5, q_min / 100, q_max / 100])
        self.center_ = q[0] if self.with_centering else None
        if self.with_scaling:
            scale = q[2] - q[1]
            if self.unit_variance:
                from scipy.stats import norm
                scale = scale / (norm.ppf(q_max / 100.0) - norm.ppf(q_min / 100.0))
            self.scale_ = _safe_scale(np.nan_to_num(scale, nan=1.0))
        else:
            self.scale_ = None
        return self

    def transform(self, X):
        """Centred and scaled X (NaN stays NaN; a Dataset: its fitted columns replaced)."""
        check_fitted(self, "n_features_in_")
        if _is_dataset(X):
            return transform_dataset(self, X)
        X = _validate_with_nan(self, X)
        out = np.array(X, dtype=np.float64)
        if self.with_centering:
            out -= np.nan_to_num(self.center_)
        if self.with_scaling:
            out /= self.scale_
        return out

    def inverse_transform(self, X):
        """Undo transform."""
        check_fitted(self, "n_features_in_")
        X = np.array(_validate_with_nan(self, X), dtype=np.float64)
        if self.with_scaling:
            X *= self.scale_
        if self.with_centering:
            X += np.nan_to_num(self.center_)
        return X

    def _can_block_transform(self):
        return True

    def _block_transform(self):
        d = self.n_features_in_
        mul = 1.0 / self.scale_ if self.with_scaling else np.ones(d)
        add = -np.nan_to_num(self.center_) * mul if self.with_centering else np.zeros(d)
        return _affine_block, (mul, add)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags
