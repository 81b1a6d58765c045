"""Random forests and gradient-boosted trees: Spark MLlib's algorithms with scikit-learn's API.

Both grow histogram trees level by level over binned shards (``_tree_grow``):
a forest grows all its trees in the same passes (one pass per level); boosting
grows one round per tree depth's worth of passes, all classes' trees together.
Defaults follow Spark MLlib (20 trees, max_depth 5, 32 bins).
"""
from __future__ import annotations

import numbers

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin

from shoal.ml import _base, _tree_fit


def _forest_checks(est) -> dict:
    checks = _tree_fit.common_checks(est)
    n = est.n_estimators
    checks["n_estimators"] = (isinstance(n, numbers.Integral) and n >= 1, "a positive integer")
    return checks


class RandomForestClassifier(_base.DatasetScoreMixin, ClassifierMixin, _tree_fit.PackedTrees,
                             _base.ShoalEstimatorMixin,
                             BaseEstimator):
    """Random forest classifier (Spark MLlib's RandomForestClassifier).

    n_estimators trees, each on a Poisson(1) bootstrap of the rows (as Spark's
    bagging; ``bootstrap=False`` uses every row once), considering ``max_features``
    random features at each node ("sqrt" by default). All trees grow in the same
    passes over the data. Fitted: classes_, n_features_in_, trees_,
    feature_importances_.
    """

    def __init__(self, n_estimators=20, *, criterion="gini", max_depth=5, min_samples_split=2,
                 min_samples_leaf=1, min_impurity_decrease=0.0, max_features="sqrt", bootstrap=True,
                 max_bins=32, random_state=None):
        self.n_estimators = n_estimators
        self.criterion = criterion
        self.max_depth = max_depth
        self.min_samples_split = min_samples_split
        self.min_samples_leaf = min_samples_leaf
        self.min_impurity_decrease = min_impurity_decrease
        self.max_features = max_features
        self.bootstrap = bootstrap
        self.max_bins = max_bins
        self.random_state = random_state

    def fit(self, X, y=None, *, features=None, label=None):
        _tree_fit.check_params(self, **_forest_checks(self))
        return _tree_fit.fit_forest(self, X, y, "classification", int(self.n_estimators),
                                    bool(self.bootstrap), features, label)

    @_base.on_dataset
    def predict_proba(self, X) -> np.ndarray:
        X = _tree_fit.predict_input(self, X, "predict_proba", "trees_")
        return _tree_fit.forest_mean(self, X)

    @_base.on_dataset
    def predict(self, X) -> np.ndarray:
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]


class RandomForestRegressor(_base.DatasetScoreMixin, RegressorMixin, _tree_fit.PackedTrees,
                            _base.ShoalEstimatorMixin,
                            BaseEstimator):
    """Random forest regressor (Spark MLlib's RandomForestRegressor); max_features=1.0 (all) by default."""

    def __init__(self, n_estimators=20, *, criterion="squared_error", max_depth=5, min_samples_split=2,
                 min_samples_leaf=1, min_impurity_decrease=0.0, max_features=1.0, bootstrap=True,
                 max_bins=32, random_state=None):
        self.n_estimators = n_estimators
        self.criterion = criterion
        self.max_depth = max_depth
        self.min_samples_split = min_samples_split
        self.min_samples_leaf = min_samples_leaf
        self.min_impurity_decrease = min_impurity_decrease
        self.max_features = max_features
        self.bootstrap = bootstrap
        self.max_bins = max_bins
        self.random_state = random_state

    def fit(self, X, y=None, *, features=None, label=None):
        _tree_fit.check_params(self, **_forest_checks(self))
        return _tree_fit.fit_forest(self, X, y, "regression", int(self.n_estimators),
                                    bool(self.bootstrap), features, label)

    @_base.on_dataset
    def predict(self, X) -> np.ndarray:
        X = _tree_fit.predict_input(self, X, "predict", "trees_")
        return _tree_fit.forest_mean(self, X)[:, 0]


def _boosting_checks(est) -> dict:
    checks = _forest_checks(est)
    checks["learning_rate"] = (isinstance(est.learning_rate, numbers.Real) and est.learning_rate > 0,
                               "a positive number")
    checks["subsample"] = (isinstance(est.subsample, numbers.Real) and 0 < est.subsample <= 1,
                           "a fraction in (0, 1]")
    checks["l2_regularization"] = (isinstance(est.l2_regularization, numbers.Real)
                                   and est.l2_regularization >= 0, "a non-negative number")
    return checks


class _BaseBoosting(_tree_fit.PackedTrees, _base.ShoalEstimatorMixin, BaseEstimator):
    def __init__(self, n_estimators=20, *, learning_rate=0.1, max_depth=5, min_samples_leaf=1,
                 subsample=1.0, l2_regularization=0.0, max_bins=32, random_state=None):
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.max_depth = max_depth
        self.min_samples_leaf = min_samples_leaf
        self.subsample = subsample
        self.l2_regularization = l2_regularization
        self.max_bins = max_bins
        self.random_state = random_state

    @property
    def min_instances_per_node(self):
        """Spark's name for min_samples_leaf."""
        return self.min_samples_leaf

    def _raw(self, X, method):
        X = _tree_fit.predict_input(self, X, method, "estimators_")
        return _tree_fit.boosting_raw(self, X)


class GradientBoostingClassifier(_base.DatasetScoreMixin, ClassifierMixin, _BaseBoosting):
    """Gradient-boosted trees for classification (Spark MLlib's GBTClassifier, plus multiclass).

    Binary: log-loss, one tree per round. Multiclass: softmax cross-entropy, one
    tree per class per round (as scikit-learn). Trees are fit by second-order
    (Newton) gain with leaf values -G/(H + l2_regularization); ``subsample`` < 1
    draws that fraction of rows per round. Fitted: classes_, init_, estimators_
    (a list of rounds, each a list of trees), feature_importances_.

    ``learning_rate`` has scikit-learn's meaning (HistGradientBoostingClassifier's:
    each tree's Newton step in log-odds is shrunk by it; with 32 bins and no leaf cap
    the two fit the same model). Spark's ``stepSize`` is not the same number: Spark
    minimises 2 log(1 + exp(-2yF)) (labels +-1) on a margin F that is half the
    log-odds, fits each tree to the gradient (leaf = mean pseudo-residual 4(y - p))
    and does not shrink its first tree, so near p = 1/2 a Spark step of s moves the
    log-odds about as far as learning_rate = 2s here.
    """

    def fit(self, X, y=None, *, features=None, label=None):
        _tree_fit.check_params(self, **_boosting_checks(self))
        return _tree_fit.fit_boosting(self, X, y, "classification", features, label)

    @_base.on_dataset
    def decision_function(self, X) -> np.ndarray:
        raw = self._raw(X, "decision_function")
        return raw[:, 0] if raw.shape[1] == 1 else raw

    @_base.on_dataset
    def predict_proba(self, X) -> np.ndarray:
        raw = self._raw(X, "predict_proba")
        if raw.shape[1] == 1:
            p = 1.0 / (1.0 + np.exp(-raw[:, 0]))
            return np.column_stack([1.0 - p, p])
        z = np.exp(raw - raw.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    @_base.on_dataset
    def predict(self, X) -> np.ndarray:
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]


class GradientBoostingRegressor(_base.DatasetScoreMixin, RegressorMixin, _BaseBoosting):
    """Gradient-boosted trees for regression with squared error (Spark MLlib's GBTRegressor)."""

    def fit(self, X, y=None, *, features=None, label=None):
        _tree_fit.check_params(self, **_boosting_checks(self))
        return _tree_fit.fit_boosting(self, X, y, "regression", features, label)

    @_base.on_dataset
    def predict(self, X) -> np.ndarray:
        return self._raw(X, "predict")[:, 0]
