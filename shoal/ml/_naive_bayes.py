"""Naive Bayes: Gaussian, multinomial and Bernoulli; per-class sums are map-side, one or two passes."""
from __future__ import annotations

import numpy as np
from scipy.special import logsumexp
from sklearn.base import BaseEstimator, ClassifierMixin

from shoal.exceptions import InvalidInputError
from shoal.ml._kernels import (_block_binary_class_sums, _block_class_ssq, _block_class_sums, _block_min)
from shoal.ml._base import DatasetScoreMixin, ShoalEstimatorMixin, check_fitted, fit_input, on_dataset
from shoal.ml._input import check_predict_input, tree_sum
from shoal.ml._stats import (block_moments, block_offsets, block_weighted_class_ssq, block_weighted_class_sums,
                             check_sample_weight, fold, merge_moments)


class _BaseNB(ShoalEstimatorMixin, DatasetScoreMixin, ClassifierMixin, BaseEstimator):
    _fits_design_matrix = True

    @on_dataset
    def predict(self, X):
        check_fitted(self, "classes_")
        return self.classes_[self._joint_log_likelihood(check_predict_input(self, X)).argmax(axis=1)]

    @on_dataset
    def predict_log_proba(self, X):
        check_fitted(self, "classes_")
        jll = self._joint_log_likelihood(check_predict_input(self, X, "predict_log_proba"))
        return jll - logsumexp(jll, axis=1, keepdims=True)

    @on_dataset
    def predict_proba(self, X):
        return np.exp(self.predict_log_proba(X))

    def _log_prior(self, class_count, given):
        k = len(class_count)
        if given is not None:
            p = np.asarray(given, dtype=np.float64)
            if p.shape != (k,):
                raise InvalidInputError(f"class priors must have one value per class ({k}), got shape {p.shape}")
            if not np.isclose(p.sum(), 1.0) or (p < 0).any():
                raise InvalidInputError("class priors must be non-negative and sum to 1")
            with np.errstate(divide="ignore"):
                return np.log(p)
        return np.log(class_count / class_count.sum())


class GaussianNB(_BaseNB):
    """Gaussian naive Bayes; variances from a second, centered pass (exact, no cancellation)."""

    def __init__(self, *, priors=None, var_smoothing=1e-9):
        self.priors = priors
        self.var_smoothing = var_smoothing

    def fit(self, X, y=None, sample_weight=None, *, features=None, label=None):
        """Per-class means and variances; ``sample_weight`` (one weight per row) weights them
        and the class counts (the smoothing term uses the unweighted variance, as scikit-learn)."""
        dm = fit_input(self, X, y, "classification", features=features, label=label)
        self.classes_ = dm.classes
        k = len(self.classes_)
        w = check_sample_weight(sample_weight, dm.n_rows, "GaussianNB")
        if w is None:
            counts, sums = dm.map_reduce(_block_class_sums, k)
            theta = sums / counts[:, None]
            ssq = dm.map_reduce(_block_class_ssq, theta)
            n = counts.sum()
            mean_all = counts @ theta / n
            total_var = (ssq.sum(axis=0) + counts @ (theta - mean_all) ** 2) / n
        else:
            offsets = block_offsets(dm)
            counts, sums = fold(dm.map_indexed(block_weighted_class_sums, w, offsets, k), tree_sum)
            present = counts > 0
            if not present.all():
                raise InvalidInputError(
                    f"class {self.classes_[~present][0]!r} has a total sample_weight of 0; give its rows "
                    f"positive weights or drop them.")
            theta = sums / counts[:, None]
            ssq = fold(dm.map_indexed(block_weighted_class_ssq, w, offsets, theta), tree_sum)
            rows, _, M2 = dm.map_reduce(block_moments, reduce=merge_moments)
            total_var = M2 / rows
        self.epsilon_ = float(self.var_smoothing * total_var.max())
        self.var_ = ssq / counts[:, None] + self.epsilon_
        self.theta_ = theta
        self.class_count_ = counts
        self.class_prior_ = np.exp(self._log_prior(counts, self.priors))
        return self

    def _joint_log_likelihood(self, X):
        inv = 1.0 / self.var_
        quad = (X * X) @ inv.T - 2.0 * X @ (self.theta_ * inv).T + (self.theta_ ** 2 * inv).sum(axis=1)
        with np.errstate(divide="ignore"):
            log_prior = np.log(self.class_prior_)
        return log_prior - 0.5 * np.log(2.0 * np.pi * self.var_).sum(axis=1) - 0.5 * quad


class _DiscreteNB(_BaseNB):
    def _check_alpha(self):
        if np.any(np.asarray(self.alpha) < 0):
            raise InvalidInputError(f"alpha must be >= 0, got {self.alpha!r}")

    def _finish(self, counts, feature_counts):
        self.class_count_ = counts
        self.feature_count_ = feature_counts
        self.class_log_prior_ = (self._log_prior(counts, self.class_prior) if self.fit_prior or
                                 self.class_prior is not None else np.full(len(counts), -np.log(len(counts))))


class MultinomialNB(_DiscreteNB):
    """Multinomial naive Bayes for counts (non-negative features)."""

    def __init__(self, *, alpha=1.0, fit_prior=True, class_prior=None):
        self.alpha = alpha
        self.fit_prior = fit_prior
        self.class_prior = class_prior

    def fit(self, X, y=None, *, features=None, label=None):
        self._check_alpha()
        dm = fit_input(self, X, y, "classification", features=features, label=label)
        if min(dm.map(_block_min)) < 0:
            raise InvalidInputError("Negative values in data passed to MultinomialNB (input X): it "
                                    "models counts; use GaussianNB or scale with MinMaxScaler.")
        self.classes_ = dm.classes
        counts, fc = dm.map_reduce(_block_class_sums, len(self.classes_))
        self._finish(counts, fc)
        smoothed = fc + self.alpha
        with np.errstate(divide="ignore"):
            self.feature_log_prob_ = np.log(smoothed) - np.log(smoothed.sum(axis=1, keepdims=True))
        return self

    def _joint_log_likelihood(self, X):
        if (X < 0).any():
            raise InvalidInputError("Negative values in data passed to MultinomialNB (input X).")
        return X @ self.feature_log_prob_.T + self.class_log_prior_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = True
        tags.classifier_tags.poor_score = True    # as scikit-learn's: counts model, not blobs
        return tags


class BernoulliNB(_DiscreteNB):
    """Bernoulli naive Bayes on features binarized at ``binarize``."""

    def __init__(self, *, alpha=1.0, binarize=0.0, fit_prior=True, class_prior=None):
        self.alpha = alpha
        self.binarize = binarize
        self.fit_prior = fit_prior
        self.class_prior = class_prior

    def fit(self, X, y=None, *, features=None, label=None):
        self._check_alpha()
        dm = fit_input(self, X, y, "classification", features=features, label=label)
        self.classes_ = dm.classes
        if self.binarize is None:   # features are already 0/1
            counts, fc = dm.map_reduce(_block_class_sums, len(self.classes_))
        else:
            counts, fc = dm.map_reduce(_block_binary_class_sums, len(self.classes_), float(self.binarize))
        self._finish(counts, fc)
        with np.errstate(divide="ignore"):
            self.feature_log_prob_ = np.log(fc + self.alpha) - np.log(counts + 2.0 * self.alpha)[:, None]
        return self

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.poor_score = True
        return tags

    def _joint_log_likelihood(self, X):
        if self.binarize is not None:
            X = (X > self.binarize).astype(np.float64)
        with np.errstate(divide="ignore"):
            neg = np.log1p(-np.exp(self.feature_log_prob_))
        return X @ (self.feature_log_prob_ - neg).T + self.class_log_prior_ + neg.sum(axis=1)
