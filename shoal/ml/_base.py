"""What every shoal.ml estimator shares: the fitted check, predicting over a Dataset, persistence hooks."""
from __future__ import annotations

import numpy as np
from sklearn.exceptions import NotFittedError as _SklearnNotFittedError

from shoal.exceptions import ShoalError
from shoal.ml import _input


class NotFittedError(ShoalError, _SklearnNotFittedError):
    """predict/transform/score was called before fit."""


def check_fitted(estimator, attribute: str) -> None:
    if not hasattr(estimator, attribute):
        raise NotFittedError(
            f"This {type(estimator).__name__} instance is not fitted yet. Call 'fit' with "
            f"appropriate arguments before using this estimator.")


def _call_method(X, y, estimator, method):
    return getattr(estimator, method)(X)


def apply_to_dataset(estimator, ds, method: str, features=None) -> np.ndarray:
    """Run ``estimator.<method>`` on every block of a Dataset as tasks; rows come back in order."""
    names = features if features is not None else getattr(estimator, "feature_names_in_", None)
    dm = _input.as_design_matrix(ds, features=None if names is None else list(names),
                                 estimator=estimator)
    if dm.n_features != estimator.n_features_in_:
        raise _input.InvalidInputError(
            f"X has {dm.n_features} features, but {type(estimator).__name__} is expecting "
            f"{estimator.n_features_in_} features as input (argument X of {method}()).")
    parts = dm.map(_call_method, estimator, method)
    return np.concatenate(parts) if parts else np.empty(0)


class ShoalEstimatorMixin:
    """Adds ``save(path)``; ``shoal.ml.load(path)`` reads it back without unpickling code."""

    def save(self, path) -> None:
        from shoal.ml._persist import save
        save(self, path)


def fit_input(estimator, X, y, target, *, features=None, label=None, allow_nan=False, min_samples=1):
    """The one validation entry point of fit: returns the DesignMatrix and records input metadata."""
    dm = _input.as_design_matrix(X, y, features=features, label=label, target=target,
                                 estimator=estimator, allow_nan=allow_nan, min_samples=min_samples)
    estimator.n_features_in_ = dm.n_features
    if dm.feature_names_in_ is not None:
        estimator.feature_names_in_ = dm.feature_names_in_
    elif hasattr(estimator, "feature_names_in_"):
        del estimator.feature_names_in_
    return dm
