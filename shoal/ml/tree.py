"""Decision trees: Spark MLlib's binned, level-wise trees with scikit-learn's API."""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin

from shoal.ml import _base, _tree_fit


class _BaseTree(_tree_fit.PackedTrees, _base.ShoalEstimatorMixin, BaseEstimator):
    def _fit(self, X, y, target, features, label):
        _tree_fit.check_params(self, **_tree_fit.common_checks(self))
        return _tree_fit.fit_forest(self, X, y, target, n_trees=1, bootstrap=False,
                                    features=features, label=label)

    @property
    def tree_(self):
        _base.check_fitted(self, "trees_")
        return self.trees_[0]

    def get_depth(self) -> int:
        return self.tree_.max_depth

    def get_n_leaves(self) -> int:
        return int((self.tree_.feature < 0).sum())

    def apply(self, X) -> np.ndarray:
        """Index of the leaf each row of X lands in."""
        X = _tree_fit.predict_input(self, X, "apply", "trees_")
        return self._packed.apply(X)[:, 0]


class DecisionTreeClassifier(_base.DatasetScoreMixin, ClassifierMixin, _BaseTree):
    """A classification tree grown on quantile bins (Spark MLlib's DecisionTreeClassifier).

    Parameters follow scikit-learn; defaults follow Spark (max_depth=5, max_bins=32).
    criterion: "gini" or "entropy". max_features: features considered per node
    (None: all). Fitted: classes_, n_features_in_, trees_ (one Tree), tree_,
    feature_importances_.
    """

    def __init__(self, *, criterion="gini", max_depth=5, min_samples_split=2, min_samples_leaf=1,
                 min_impurity_decrease=0.0, max_features=None, max_bins=32, random_state=None):
        self.criterion = criterion
        self.max_depth = max_depth
        self.min_samples_split = min_samples_split
        self.min_samples_leaf = min_samples_leaf
        self.min_impurity_decrease = min_impurity_decrease
        self.max_features = max_features
        self.max_bins = max_bins
        self.random_state = random_state

    def fit(self, X, y=None, *, features=None, label=None):
        return self._fit(X, y, "classification", features, label)

    @_base.on_dataset
    def predict_proba(self, X) -> np.ndarray:
        X = _tree_fit.predict_input(self, X, "predict_proba", "trees_")
        return _tree_fit.forest_mean(self, X)

    @_base.on_dataset
    def predict(self, X) -> np.ndarray:
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]


class DecisionTreeRegressor(_base.DatasetScoreMixin, RegressorMixin, _BaseTree):
    """A regression tree grown on quantile bins (Spark MLlib's DecisionTreeRegressor).

    criterion: "squared_error". Other parameters as DecisionTreeClassifier.
    """

    def __init__(self, *, criterion="squared_error", max_depth=5, min_samples_split=2,
                 min_samples_leaf=1, min_impurity_decrease=0.0, max_features=None, max_bins=32,
                 random_state=None):
        self.criterion = criterion
        self.max_depth = max_depth
        self.min_samples_split = min_samples_split
        self.min_samples_leaf = min_samples_leaf
        self.min_impurity_decrease = min_impurity_decrease
        self.max_features = max_features
        self.max_bins = max_bins
        self.random_state = random_state

    def fit(self, X, y=None, *, features=None, label=None):
        return self._fit(X, y, "regression", features, label)

    @_base.on_dataset
    def predict(self, X) -> np.ndarray:
        X = _tree_fit.predict_input(self, X, "predict", "trees_")
        return _tree_fit.forest_mean(self, X)[:, 0]
