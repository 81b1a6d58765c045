"""PCA from the distributed, exactly centered covariance (two passes) and a d x d eigendecomposition."""
from __future__ import annotations

import numpy as np
import scipy.linalg
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin

from shoal.exceptions import InvalidInputError
from shoal.ml._base import ShoalEstimatorMixin, check_fitted, fit_input, transform_dataset
from shoal.ml._kernels import _linear_map_block
from shoal.ml._input import _is_dataset, check_predict_input
from shoal.ml._stats import gram_stats


class PCA(ShoalEstimatorMixin, ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Principal component analysis (Spark's PCA, scikit-learn's attributes).

    n_components: an int, a float in (0, 1) (keep enough components to explain that share of
    the variance) or None (min(n_samples, n_features)). Component signs follow scikit-learn
    (the largest-magnitude loading of each component is positive).
    """

    _fits_design_matrix = True

    def _can_block_transform(self):
        return True

    def _block_transform(self):
        M = self.components_.T
        if self.whiten:
            M = M / np.sqrt(np.where(self.explained_variance_ > 0, self.explained_variance_, 1.0))
        return _linear_map_block, (np.ascontiguousarray(M), -self.mean_ @ M)

    def __init__(self, n_components=None, *, whiten=False):
        self.n_components = n_components
        self.whiten = whiten

    def fit(self, X, y=None, *, features=None, label=None):
        dm = fit_input(self, X, y, None, features=features, label=label)
        n, d = dm.n_rows, dm.n_features
        G, _, _, _, mu, _ = gram_stats(dm, center=True)
        ddof_n = max(n - 1, 1)
        lam, V = scipy.linalg.eigh(G / ddof_n)
        order = np.argsort(lam)[::-1]
        lam, V = np.maximum(lam[order], 0.0), V[:, order].T
        # sign rule of scikit-learn's svd_flip(u_based_decision=False)
        signs = np.sign(V[np.arange(d), np.abs(V).argmax(axis=1)])
        signs[signs == 0] = 1.0
        V *= signs[:, None]
        total = lam.sum()
        max_k = min(n, d)
        k = self.n_components
        if k is None:
            k = max_k
        elif isinstance(k, (float, np.floating)) and 0 < k < 1:
            ratio = np.cumsum(lam) / total if total > 0 else np.ones(d)
            k = int(np.searchsorted(ratio, k, side="right") + 1)
            k = min(k, max_k)
        elif not (isinstance(k, (int, np.integer)) and 1 <= k <= max_k):
            raise InvalidInputError(
                f"n_components={k!r} must be between 1 and min(n_samples, n_features)={max_k}, a float in "
                f"(0, 1), or None.")
        k = int(k)
        self.mean_ = mu
        self.components_ = V[:k]
        self.explained_variance_ = lam[:k]
        self.explained_variance_ratio_ = lam[:k] / total if total > 0 else np.zeros(k)
        self.singular_values_ = np.sqrt(lam[:k] * ddof_n)
        self.noise_variance_ = float(lam[k:max_k].mean()) if k < max_k else 0.0
        self.n_components_ = k
        self.n_samples_ = n
        self._n_features_out = k
        return self

    def transform(self, X):
        check_fitted(self, "components_")
        if _is_dataset(X):
            return transform_dataset(self, X)     # lazy: pca0.. columns replace the features
        X = check_predict_input(self, X, "transform")
        Z = (X - self.mean_) @ self.components_.T
        if self.whiten:
            Z /= np.sqrt(np.where(self.explained_variance_ > 0, self.explained_variance_, 1.0))
        return Z

    def inverse_transform(self, X):
        check_fitted(self, "components_")
        Z = np.asarray(X, dtype=np.float64)
        if Z.ndim != 2 or Z.shape[1] != self.n_components_:
            raise InvalidInputError(f"X has shape {Z.shape}; inverse_transform expects "
                                    f"(n, {self.n_components_}) components")
        if self.whiten:
            Z = Z * np.sqrt(np.where(self.explained_variance_ > 0, self.explained_variance_, 1.0))
        return Z @ self.components_ + self.mean_
