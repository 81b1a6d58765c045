"""Feature selectors: VarianceThresholdSelector (Spark's name, scikit-learn's VarianceThreshold).

The fit statistics are per-block partials folded on the driver (one pass); transform keeps
the selected columns (on a Dataset: the selected input columns, the others dropped)."""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from shoal.exceptions import InvalidInputError
from shoal.ml._base import ShoalEstimatorMixin, check_fitted, fit_input, transform_dataset
from shoal.ml._input import _is_dataset, check_predict_input
from shoal.ml._stats import block_moments, merge_moments


def _select_block(X, y, columns):
    """Runs where the block lives: the block's selected columns."""
    return np.ascontiguousarray(X[:, columns]), y


def _block_min_max(X, y):
    return X.min(axis=0), X.max(axis=0)


def _merge_min_max(a, b):
    return np.minimum(a[0], b[0]), np.maximum(a[1], b[1])


class MaskSelector(ShoalEstimatorMixin, TransformerMixin, BaseEstimator):
    """What the selectors share once fitted: ``_support_mask()`` says which features stay;
    transform keeps them (a Dataset: the kept feature columns, other columns untouched)."""

    _fits_design_matrix = True
    _fitted_attribute = "variances_"

    def _support_mask(self):
        raise NotImplementedError

    def get_support(self, indices=False):
        """Mask (or indices) of the kept features."""
        check_fitted(self, self._fitted_attribute)
        mask = self._support_mask()
        return np.flatnonzero(mask) if indices else mask

    def get_feature_names_out(self, input_features=None):
        """Names of the kept features (x0, x1, ... for unnamed input)."""
        check_fitted(self, self._fitted_attribute)
        names = getattr(self, "feature_names_in_", None)
        if input_features is not None:
            names = np.asarray(input_features, dtype=object)
        if names is None:
            names = np.array([f"x{i}" for i in range(self.n_features_in_)], dtype=object)
        return np.asarray(names, dtype=object)[self.get_support()]

    def transform(self, X):
        """The kept columns of X (a Dataset: the kept feature columns, other columns untouched)."""
        check_fitted(self, self._fitted_attribute)
        if _is_dataset(X):
            return transform_dataset(self, X)
        return check_predict_input(self, X, "transform")[:, self.get_support()]

    def _can_block_transform(self):
        return True

    def _block_transform(self):
        return _select_block, (self.get_support(indices=True),)

    def _dataset_columns_io(self):
        return list(self.feature_names_in_), [str(c) for c in self.get_feature_names_out()]


class VarianceThresholdSelector(MaskSelector):
    """Drop the features whose variance is not above ``threshold`` (Spark's
    VarianceThresholdSelector; scikit-learn's VarianceThreshold API and results).

    Parameters: threshold (Spark's varianceThreshold): keep features with variance >
    threshold; 0 drops the constant ones. ddof: 0 for the population variance
    (scikit-learn), 1 for the sample variance (Spark).

    Fitted: variances_, n_features_in_, feature_names_in_ (named input); get_support(),
    get_feature_names_out(). The variances come from per-block (count, mean, M2) partials
    merged pairwise (Chan et al.), so no block's rows leave it.
    """

    def __init__(self, threshold=0.0, *, ddof=0):
        self.threshold = threshold
        self.ddof = ddof

    def fit(self, X, y=None, *, features=None, label=None):
        """Learn the per-feature variances; returns self."""
        if not (np.isscalar(self.threshold) and np.isfinite(self.threshold) and self.threshold >= 0):
            raise InvalidInputError(f"VarianceThresholdSelector threshold={self.threshold!r} must be a "
                                    f"number >= 0")
        if self.ddof not in (0, 1):
            raise InvalidInputError(f"VarianceThresholdSelector ddof={self.ddof!r} must be 0 "
                                    f"(scikit-learn) or 1 (Spark)")
        dm = fit_input(self, X, y, None, features=features, label=label)
        n, _, M2 = dm.map_reduce(block_moments, reduce=merge_moments)
        var = M2 / max(n - self.ddof, 1)
        if self.threshold == 0:
            # a constant column can come out at 1e-30 from rounding; its range is exactly 0
            lo, hi = dm.map_reduce(_block_min_max, reduce=_merge_min_max)
            var = np.where(hi - lo == 0, 0.0, var)
        self.variances_ = var
        if not self.get_support().any():
            raise InvalidInputError(f"No feature in X meets the variance threshold {self.threshold:.5f}"
                                    f"{' (X contains only one sample)' if n == 1 else ''}; lower "
                                    f"threshold.")
        return self

    def _support_mask(self):
        return self.variances_ > self.threshold
