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
    """Adds ``save(path)``; ``shoal.ml.load(path)`` reads it back without unpickling code.

    ``_fits_design_matrix``: fit accepts a DesignMatrix (a fused Pipeline hands one over).
    A transformer whose ``_can_block_transform()`` is true gives, once fitted, a NumPy-only
    block kernel and its arguments ``_block_transform() -> (fn, args)``, ``fn(X, y, *args)
    -> (X', y)``: a Pipeline then transforms blocks where they live.
    """

    _fits_design_matrix = False

    def _can_block_transform(self) -> bool:
        return False

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


def _transform_batch(batch, estimator, in_cols, out_cols, method):
    """Runs in a task: replace a batch's input columns by the estimator's output columns."""
    import pandas as pd
    import pyarrow as pa
    df = batch.to_pandas() if isinstance(batch, pa.Table) else pd.DataFrame(batch)
    out = getattr(estimator, method)(df[list(in_cols)])
    out = np.asarray(out)
    if out.ndim == 1:
        out = out[:, None]
    rest = df.drop(columns=[c for c in in_cols if c not in out_cols])
    if out.shape[0] != len(df):   # the transformer dropped rows (handle_invalid="skip")
        rest = rest[estimator._rows_kept(df[list(in_cols)])].reset_index(drop=True)
    for j, c in enumerate(out_cols):
        rest[c] = out[:, j]
    return rest


def transform_dataset(estimator, ds, method: str = "transform"):
    """A lazy Dataset transform: the estimator's output columns replace its input columns.

    Other columns (the label, ids) pass through unchanged. Output columns are named by
    ``get_feature_names_out()`` (for one-to-one transformers: the input names).
    """
    names = getattr(estimator, "feature_names_in_", None)
    if names is None:
        raise _input.InvalidInputError(
            f"{type(estimator).__name__} was fitted on unnamed columns; fit it on the Dataset (or a "
            f"DataFrame) to transform a Dataset by column name.")
    out_cols = [str(c) for c in estimator.get_feature_names_out()]
    return ds.map_batches(_transform_batch, batch_format="pandas",
                          fn_args=(estimator, list(names), out_cols, method))


def _block_score(table, estimator, features, label, classifier):
    """Runs in a task: (sum of hits or squared errors, sum y, sum y^2, rows) for one block."""
    import pyarrow as pa
    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table) if hasattr(table, "columns") else pa.table(table)
    if label not in table.column_names:
        raise _input.InvalidInputError(f"label column {label!r} is missing from the Dataset")
    if table.num_rows == 0:
        return 0.0, 0.0, 0.0, 0
    # vector columns (VectorAssembler's "features") expand to their width, as at fit time
    X, t = _input._arrow_vectors_to_matrix(table, list(features), label)
    _input.check_finite(X, None, "Dataset")
    pred = estimator.predict(X)
    if classifier:
        return float((pred == t).sum()), 0.0, 0.0, len(t)
    t = t.astype(np.float64)
    e = t - pred
    return float(e @ e), float(t.sum()), float(t @ t), len(t)


class DatasetScoreMixin:
    """``score(ds, "label")`` on a Dataset: accuracy or R^2 from per-block sums computed in tasks."""

    def score(self, X, y=None, sample_weight=None):
        if not _input._is_dataset(X):
            return super().score(X, y, sample_weight=sample_weight)
        from sklearn.base import is_classifier
        if not isinstance(y, str):
            raise _input.InvalidInputError("score on a Dataset takes the label's column name as y")
        names = getattr(self, "feature_names_in_", None)
        if names is None:
            raise _input.InvalidInputError(f"{type(self).__name__} was fitted on unnamed columns; fit it on "
                                           f"the Dataset to score a Dataset")
        parts = _input.map_dataset_blocks(X, _block_score, self, list(names), y, is_classifier(self))
        a, st, stt, n = (sum(p[i] for p in parts) for i in range(4))
        if n == 0:
            raise _input.InvalidInputError("score got an empty Dataset")
        if is_classifier(self):
            return a / n
        sst = stt - st * st / n
        return 1.0 - a / sst if sst > 0 else (1.0 if a == 0 else 0.0)
