"""IndexToString: category indices back to their labels (Spark's IndexToString, the inverse of
StringIndexer)."""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from shoal.exceptions import InvalidInputError
from shoal.ml._base import ShoalEstimatorMixin
from shoal.ml._input import _is_dataset
from shoal.ml._text import _add_column, _check_column, _OneColumn


def _labels_of(labels):
    """The label list of ``labels``: a list of strings, or a fitted one-column StringIndexer."""
    if labels is None:
        raise InvalidInputError("IndexToString needs labels=[...] (index i -> labels[i]) or a fitted "
                                "StringIndexer as labels=; Spark reads them from column metadata, which "
                                "shoal's columns do not carry.")
    fitted = getattr(labels, "labels_", None)
    if fitted is not None:
        if len(fitted) != 1:
            raise InvalidInputError(f"IndexToString labels= is a StringIndexer of {len(fitted)} columns; "
                                    f"pass the labels of one: labels=indexer.labels_[j].tolist()")
        return [str(v) for v in fitted[0]]
    if isinstance(labels, str) or not hasattr(labels, "__iter__"):
        raise InvalidInputError(f"IndexToString labels={labels!r} must be a list of strings")
    return [str(v) for v in labels]


def _strings(indices, labels, column):
    """Each index's label; an index that is not one of 0..len(labels)-1 is an error naming it."""
    x = np.asarray(indices)
    if x.dtype.kind not in "biuf":
        raise InvalidInputError(f"IndexToString reads numeric indices, but {column} holds {x.dtype} values")
    x = x.astype(np.float64)
    bad = ~np.isfinite(x) | (x != np.round(x)) | (x < 0) | (x >= len(labels))
    if bad.any():
        raise InvalidInputError(f"Unseen index {float(x[bad][0])!r} in {column}: the labels cover indices 0 to "
                                f"{len(labels) - 1}; pass the labels the indexer was fitted with.")
    table = np.asarray(labels, dtype=object)
    return table[x.astype(np.int64)]


def _index_table(table, transformer, labels):
    """Runs in a task: the block with the label column added."""
    import pyarrow as pa
    column = transformer._column()
    _check_column(table, column, "IndexToString")
    col = table.column(column)
    if col.null_count:
        raise InvalidInputError(f"column {column!r} holds a null index; drop or fill it before IndexToString")
    out = _strings(col.to_numpy(zero_copy_only=False), labels, f"column {column!r}")
    return _add_column(table, transformer.output_col, pa.array(out.tolist(), type=pa.string()))


class IndexToString(_OneColumn, ShoalEstimatorMixin, TransformerMixin, BaseEstimator):
    """Map a column of indices to their labels (Spark's IndexToString): index i becomes
    ``labels[i]``.

    labels: the label list (StringIndexer's ``labels_[0]``), or the fitted one-column
    StringIndexer itself. input_col ("prediction"), output_col ("original"): the Dataset columns
    (or the one column fit's ``features=`` names). Arrays: a 1-D array (or one column) of
    indices gives an object array of labels. An index outside the labels is an error, as in
    Spark ("Unseen index").
    """

    def __init__(self, *, labels=None, input_col="prediction", output_col="original"):
        self.labels = labels
        self.input_col = input_col
        self.output_col = output_col

    def fit(self, X=None, y=None, *, features=None, label=None):
        """Nothing to learn: records the input column (features=) and checks the labels."""
        self._fit_column(X, y, features, label)
        _labels_of(self.labels)
        return self

    def transform(self, X):
        """The labels of X's indices; a Dataset gets the string column ``output_col``."""
        labels = _labels_of(self.labels)
        if _is_dataset(X):
            return X.map_batches(_index_table, batch_format="pyarrow", fn_args=(self, labels))
        X = self._documents_of(X)
        if type(X).__module__.startswith("pyarrow"):
            X = X.to_pandas()
        if hasattr(X, "columns"):
            if X.shape[1] != 1:
                raise InvalidInputError(f"IndexToString reads one column of indices, got {X.shape[1]} "
                                        f"columns; name it with input_col= or features=.")
            X = X.iloc[:, 0].to_numpy()
        x = np.asarray(X)
        if x.ndim == 2 and x.shape[1] == 1:
            x = x[:, 0]
        if x.ndim != 1:
            raise InvalidInputError(f"IndexToString reads one column of indices, got shape {x.shape}")
        return _strings(x, labels, "X")

    def inverse_transform(self, X):
        """Labels back to their indices (float64), StringIndexer's transform."""
        labels = _labels_of(self.labels)
        lookup = {v: float(i) for i, v in enumerate(labels)}
        values = np.asarray(X, dtype=object).ravel()
        unknown = [v for v in values if v not in lookup]
        if unknown:
            raise InvalidInputError(f"IndexToString.inverse_transform: {unknown[0]!r} is not among the labels")
        return np.array([lookup[v] for v in values])

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.input_tags.two_d_array = False
        return tags
