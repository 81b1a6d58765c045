"""What every shoal.ml estimator shares: the fitted check, predicting over a Dataset, persistence hooks."""
from __future__ import annotations

import functools

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


# the column a predict-like method appends to a Dataset (Spark's predictionCol and friends)
PREDICTION_COLUMNS = {"predict": "prediction", "predict_proba": "probability",
                      "predict_log_proba": "log_probability", "decision_function": "raw_prediction"}


def on_dataset(method):
    """Decorate a predict-like method (predict, predict_proba, predict_log_proba,
    decision_function): on a Dataset it returns the Dataset with the result appended as the
    column ``PREDICTION_COLUMNS[name]`` (see predict_dataset); on anything else it runs as is."""
    name = method.__name__

    @functools.wraps(method)
    def wrapper(self, X, *args, **kwargs):
        if _input._is_dataset(X):
            return predict_dataset(self, X, name)
        return method(self, X, *args, **kwargs)
    return wrapper


def predict_dataset(estimator, ds, method: str = "predict"):
    """A lazy Dataset: ``ds`` with ``estimator.<method>`` of its fitted feature columns appended
    as ``PREDICTION_COLUMNS[method]`` ("prediction", "probability" ...); one task per block,
    rows in order, every other column kept. 2-D results (probabilities) become one vector
    column. A missing feature column is reported, with the available ones, when blocks run."""
    if not hasattr(estimator, "n_features_in_"):
        check_fitted(estimator, "n_features_in_")
    names = getattr(estimator, "feature_names_in_", None)
    if names is None:
        raise _input.InvalidInputError(
            f"{type(estimator).__name__} was fitted on unnamed columns (an array), so it cannot find "
            f"its features in a Dataset by name; fit it on the Dataset (or a DataFrame) with "
            f"features=[...].")
    return ds.map_batches(_predict_batch, batch_format="pyarrow",
                          fn_args=(estimator, list(names), method, PREDICTION_COLUMNS[method]))


def dataset_predictions(estimator, ds, method: str = "predict") -> np.ndarray:
    """``estimator.<method>`` over a Dataset gathered as one array (for scorers)."""
    return predict_dataset(estimator, ds, method).to_numpy(PREDICTION_COLUMNS[method])


def _predict_batch(table, estimator, features, method, column):
    """Runs in a task: one block with the estimator's output column appended."""
    import pyarrow as pa
    X, _ = _input._arrow_vectors_to_matrix(table, features, None)
    _input.check_finite(X, features if len(features) == X.shape[1] else None, "Dataset")
    if X.shape[0] == 0:   # an empty block still gets the column, of the type the others get
        out = np.asarray(getattr(estimator, method)(np.zeros((1, estimator.n_features_in_))))[:0]
    else:
        out = np.asarray(getattr(estimator, method)(X))
    values = pa.array(out) if out.ndim == 1 else _input.dense_to_vectors(out)
    if column in table.column_names:
        return table.set_column(table.column_names.index(column), column, values)
    return table.append_column(column, values)


class ShoalEstimatorMixin:
    """What every shoal.ml estimator and transformer shares, the fit signature first.

    One signature (checked by ``shoal.ml._columns.resolve_fit_columns``, the one place)::

        est.fit(X, y=None, *, features=None, label=None)

    - X a shoal.data Dataset, pandas/Polars DataFrame or Arrow Table: ``features=`` names the
      input columns (default: every column but the label, or a vector column ``"features"``
      if there is one) and ``label=`` the label column (``y="column"`` means the same). A
      supervised estimator without a label, or a name not among the columns, is an
      InvalidInputError that lists the available columns.
    - X a NumPy array: y is the label array, as in scikit-learn.
    - On a Dataset, ``predict``/``predict_proba``/``decision_function`` return the Dataset
      with a ``prediction``/``probability``/``raw_prediction`` column appended, and
      ``transform`` returns the Dataset with the output columns in place of the inputs (lazy:
      blocks are processed by tasks when consumed). On arrays they return arrays.
    - ``Pipeline.fit(ds, features=..., label=...)`` routes both through its steps: each step
      reads the columns the previous one wrote.

    Also: ``save(path)`` (``shoal.ml.load(path)`` reads it back without unpickling code);
    ``_fits_design_matrix``: fit accepts a DesignMatrix (a fused Pipeline hands one over).
    A transformer whose ``_can_block_transform()`` is true gives, once fitted, a NumPy-only
    block kernel and its arguments ``_block_transform() -> (fn, args)``, ``fn(X, y, *args)
    -> (X', y)``: a Pipeline then transforms blocks where they live.
    """

    _fits_design_matrix = False

    def _can_block_transform(self) -> bool:
        return False

    def _own_input_columns(self):
        """The input columns this transformer's constructor names (``input_cols=``), or None;
        a Pipeline routes ``features=`` only to steps that name none."""
        return None

    def _dataset_columns_io(self) -> tuple[list, list]:
        """(columns read, columns written) by ``transform`` on a Dataset, once fitted: how a
        Pipeline follows ``features=`` from step to step."""
        return list(self.feature_names_in_), [str(c) for c in self.get_feature_names_out()]

    def save(self, path) -> None:
        from shoal.ml._persist import save
        save(self, path)


def fit_input(estimator, X, y, target, *, features=None, label=None, allow_nan=False, min_samples=1):
    """The one validation entry point of fit: returns the DesignMatrix and records input metadata.

    X, y, features, label are fit's arguments (see ShoalEstimatorMixin for the contract);
    target is None (unsupervised), "regression" or "classification".
    """
    dm = _input.as_design_matrix(X, y, features=features, label=label, target=target,
                                 estimator=estimator, allow_nan=allow_nan, min_samples=min_samples)
    estimator.n_features_in_ = dm.n_features
    if dm.feature_names_in_ is not None:
        estimator.feature_names_in_ = dm.feature_names_in_
    elif hasattr(estimator, "feature_names_in_"):
        del estimator.feature_names_in_
    return dm


def _transform_batch(table, estimator, in_cols, out_cols, method):
    """Runs in a task: replace a block's input columns by the estimator's output columns.

    Arrow in and out: the other columns (label, ids, token lists, vectors) pass untouched."""
    import pyarrow as pa
    df = table.select(list(in_cols)).to_pandas()
    if table.num_rows == 0:
        out = np.empty((0, len(out_cols)))
    else:
        out = np.asarray(getattr(estimator, method)(df))
    if out.ndim == 1:
        out = out[:, None]
    if out.shape[0] != table.num_rows:   # the transformer dropped rows (handle_invalid="skip")
        table = table.filter(pa.array(estimator._rows_kept(df)))
    table = table.drop_columns([c for c in in_cols if c not in out_cols])
    for j, c in enumerate(out_cols):
        values = pa.array(out[:, j])
        if c in table.column_names:
            table = table.set_column(table.column_names.index(c), c, values)
        else:
            table = table.append_column(c, values)
    return table


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
    return ds.map_batches(_transform_batch, batch_format="pyarrow",
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
    """``score(ds, label="y")`` (or ``score(ds, "y")``) on a Dataset: accuracy or R^2 from per-block sums computed in tasks."""

    def score(self, X, y=None, sample_weight=None, *, label=None):
        if not _input._is_dataset(X):
            if label is not None:
                y, _, label = _input.resolve_fit_columns(X, y, label=label, estimator=self,
                                                         method="score")
                X = _input.as_frame(X)
                X, y = X.drop(columns=[label]), X[label].to_numpy()
            return super().score(X, y, sample_weight=sample_weight)
        from sklearn.base import is_classifier
        y, _, label = _input.resolve_fit_columns(X, y, label=label, estimator=self, supervised=True,
                                                 method="score")
        y = label
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
