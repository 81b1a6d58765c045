"""Categorical features: OneHotEncoder, StringIndexer, VectorAssembler."""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from shoal.exceptions import InvalidInputError
from shoal.ml._base import ShoalEstimatorMixin, check_fitted, transform_dataset
from shoal.ml._input import (_is_dataset, column_to_matrix, dense_to_vectors, map_dataset_blocks,
                             merge_input_columns, resolve_fit_columns, select_table)


def _as_columns(X, estimator, fit: bool):
    """Any 2-D input (array, DataFrame, Arrow Table) -> (list of 1-D column arrays, names or None)."""
    import scipy.sparse as sp
    if sp.issparse(X):
        raise TypeError(f"{type(estimator).__name__} does not accept sparse input; pass a dense array.")
    if type(X).__module__.startswith("pyarrow"):
        X = X.to_pandas()
    if hasattr(X, "columns"):
        names = [str(c) for c in X.columns]
        cols = [X[c].to_numpy() for c in X.columns]
    else:
        arr = np.asarray(X)
        if arr.ndim != 2:
            raise InvalidInputError(f"Expected 2D array for X, got {arr.ndim}D array instead. Reshape your "
                                    f"data with X.reshape(-1, 1) for a single feature.")
        if np.iscomplexobj(arr):
            raise InvalidInputError("Complex data not supported in X")
        names = None
        cols = [arr[:, j] for j in range(arr.shape[1])]
    n = len(cols[0]) if cols else (X.shape[0] if hasattr(X, "shape") else 0)
    if not cols:
        raise InvalidInputError(f"Found array with 0 feature(s) (shape=({n}, 0)) while a minimum of 1 is "
                                f"required by {type(estimator).__name__}.")
    if n == 0:
        raise InvalidInputError(f"Found array with 0 sample(s) (shape=(0, {len(cols)})) while a minimum of 1 "
                                f"is required by {type(estimator).__name__}: X is empty.")
    for j, c in enumerate(cols):
        if c.dtype.kind == "f" and not np.isfinite(c).all():
            label = repr(names[j]) if names else str(j)
            raise InvalidInputError(f"column {label} of X contains NaN or infinity; impute or drop first.")
    if not fit:
        expected = estimator.n_features_in_
        if len(cols) != expected:
            raise InvalidInputError(f"X has {len(cols)} features, but {type(estimator).__name__} is expecting "
                                    f"{expected} features as input (argument X of transform()).")
    return cols, names


def _py(v):
    """A NumPy scalar as the plain Python value, for readable messages."""
    return v.item() if isinstance(v, np.generic) else v


def _sorted_unique(col):
    try:
        return np.unique(col)
    except TypeError:
        raise InvalidInputError("a column mixes value types (e.g. strings and numbers); use one type") from None


def _check_no_missing(col, label):
    if col.dtype.kind == "O" and any(v is None for v in col):
        raise InvalidInputError(f"column {label} holds None; impute or drop missing categories first.")


class OneHotEncoder(ShoalEstimatorMixin, TransformerMixin, BaseEstimator):
    """One indicator column per category of each input column (dense float64 output).

    handle_unknown: "error" (default) or "ignore" (all zeros). drop_last=True drops each
    column's last category (Spark's dropLast).

    On a Dataset, ``fit(ds, features=[...], label="y")`` finds the categories of the input
    columns (``input_cols`` or ``features=``; default: every column but the label) per block in tasks; ``transform(ds)`` lazily replaces each of them
    by its indicator columns ``<column>_<category>``; other columns pass through.
    """

    def __init__(self, *, handle_unknown="error", drop_last=False, input_cols=None):
        self.handle_unknown = handle_unknown
        self.drop_last = drop_last
        self.input_cols = input_cols

    def _own_input_columns(self):
        return self.input_cols

    def fit(self, X, y=None, *, features=None, label=None):
        if self.handle_unknown not in ("error", "ignore"):
            raise InvalidInputError(f"handle_unknown must be 'error' or 'ignore', got {self.handle_unknown!r}")
        X, features, label = _fit_columns(self, X, y, features, label)
        if _is_dataset(X):
            names = _dataset_input_cols(X, features, label, "OneHotEncoder")
            parts = map_dataset_blocks(X, _block_uniques, names)
            cats = [_sorted_unique(np.concatenate([p[0][j] for p in parts])) for j in range(len(names))]
        else:
            cols, names = _as_columns(select_table(X, features, label), self, fit=True)
            for j, c in enumerate(cols):
                _check_no_missing(c, repr(names[j]) if names else str(j))
            cats = [_sorted_unique(c) for c in cols]
        self.categories_ = cats
        self.n_features_in_ = len(cats)
        if names is not None:
            self.feature_names_in_ = np.asarray(names, dtype=object)
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        return self

    def transform(self, X):
        check_fitted(self, "categories_")
        if _is_dataset(X):
            return transform_dataset(self, X)     # lazy: indicator columns replace the inputs
        cols, names = _as_columns(X, self, fit=False)
        blocks = []
        for j, (c, cats) in enumerate(zip(cols, self.categories_)):
            try:
                pos = np.searchsorted(cats, c)
            except TypeError:
                raise InvalidInputError(f"column {j} of X has values of another type than at fit time") from None
            pos = np.minimum(pos, len(cats) - 1)
            known = cats[pos] == c
            if not known.all() and self.handle_unknown == "error":
                label = repr(names[j]) if names else str(j)
                raise InvalidInputError(
                    f"Found unknown categories [{_py(c[~known][0])!r}] in column {label} during transform; "
                    f"refit on data holding every category or set handle_unknown='ignore'.")
            width = len(cats) - (1 if self.drop_last else 0)
            out = np.zeros((len(c), width))
            rows = np.flatnonzero(known & (pos < width))
            out[rows, pos[rows]] = 1.0
            blocks.append(out)
        return np.hstack(blocks)

    def get_feature_names_out(self, input_features=None):
        check_fitted(self, "categories_")
        names = (input_features if input_features is not None else
                 getattr(self, "feature_names_in_", [f"x{j}" for j in range(self.n_features_in_)]))
        out = []
        for n, cats in zip(names, self.categories_):
            keep = cats[:-1] if self.drop_last else cats
            out.extend(f"{n}_{c}" for c in keep)
        return np.asarray(out, dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.categorical = True
        tags.input_tags.string = True
        return tags


def _block_uniques(table, cols):
    """Runs in a task: the sorted distinct values of each of ``cols`` in one block."""
    values = [table.column(c).to_numpy(zero_copy_only=False) for c in cols]
    for c, v in zip(cols, values):
        _check_no_missing(v, repr(c))
    return [_sorted_unique(v) for v in values], list(cols)


class StringIndexer(ShoalEstimatorMixin, TransformerMixin, BaseEstimator):
    """Encode labels as indices 0..k-1 ordered by ``string_order_type`` (Spark's StringIndexer).

    string_order_type: "frequencyDesc" (default: the most frequent label gets 0; ties by
    label), "frequencyAsc", "alphabetAsc", "alphabetDesc". handle_invalid for unseen labels:
    "error", "keep" (index k) or "skip" (drop the row). Fits one column (1-D input) or several.

    On a Dataset, ``fit(ds, label="y")`` counts labels per block in tasks and merges the counts;
    ``input_cols`` (or the string columns among ``features=``; default: every string column but
    the label) are indexed and
    ``transform(ds)`` lazily adds ``output_cols`` (default ``<column>_index``, float64).
    """

    def __init__(self, *, string_order_type="frequencyDesc", handle_invalid="error",
                 input_cols=None, output_cols=None):
        self.string_order_type = string_order_type
        self.handle_invalid = handle_invalid
        self.input_cols = input_cols
        self.output_cols = output_cols

    def _own_input_columns(self):
        return self.input_cols

    def _dataset_columns_io(self):
        return list(self.feature_names_in_), list(self.output_cols_)

    def _columns(self, X, fit):
        arr = X
        if not hasattr(X, "columns") and not type(X).__module__.startswith("pyarrow"):
            arr = np.asarray(X)
            if arr.ndim == 1:
                return [arr], None, True
        cols, names = _as_columns(arr, self, fit)
        return cols, names, False

    def fit(self, X, y=None, *, features=None, label=None):
        if self.string_order_type not in ("frequencyDesc", "frequencyAsc", "alphabetAsc", "alphabetDesc"):
            raise InvalidInputError(f"unknown string_order_type {self.string_order_type!r}")
        if self.handle_invalid not in ("error", "keep", "skip"):
            raise InvalidInputError(f"handle_invalid must be 'error', 'keep' or 'skip', got {self.handle_invalid!r}")
        routed = self.input_cols is None and features is not None
        X, features, label = _fit_columns(self, X, y, features, label)
        if _is_dataset(X):
            return self._fit_dataset(X, label, features, routed)
        cols, names, one_d = self._columns(select_table(X, features, label), fit=True)
        if len(cols[0]) == 0:
            raise InvalidInputError("StringIndexer got an empty input (0 rows)")
        counted = []
        for j, c in enumerate(cols):
            _check_no_missing(c, repr(names[j]) if names else str(j))
            counted.append(np.unique(c, return_counts=True))
        self._set_labels(counted)
        self._one_d = one_d
        self.n_features_in_ = len(cols)
        return self

    def _fit_dataset(self, ds, label, in_cols, routed):
        # columns from features= (not input_cols): index the string ones, the rest pass by
        in_cols = _dataset_input_cols(ds, in_cols, label, "StringIndexer", strings_only=True,
                                      filter_given=routed)
        parts = map_dataset_blocks(ds, _block_label_counts, in_cols)
        counted = []
        for j, c in enumerate(in_cols):
            values = [p[j][0] for p in parts if len(p[j][0])]
            if not values:
                raise InvalidInputError(f"StringIndexer got an empty Dataset (0 rows in column {c!r})")
            all_values = np.concatenate(values)
            all_counts = np.concatenate([p[j][1] for p in parts if len(p[j][0])])
            merged, inverse = np.unique(all_values, return_inverse=True)
            counted.append((merged, np.bincount(inverse.ravel(), weights=all_counts).astype(np.int64)))
        self._set_labels(counted)
        self._one_d = False
        self.n_features_in_ = len(in_cols)
        self.feature_names_in_ = np.asarray(in_cols, dtype=object)
        self.output_cols_ = _output_names(self.output_cols, in_cols, "_index", "StringIndexer")
        return self

    def _set_labels(self, counted):
        self.labels_ = []
        for values, counts in counted:
            if self.string_order_type == "frequencyDesc":
                order = np.lexsort((values, -counts))
            elif self.string_order_type == "frequencyAsc":
                order = np.lexsort((values, counts))
            elif self.string_order_type == "alphabetAsc":
                order = np.arange(len(values))
            else:
                order = np.arange(len(values))[::-1]
            self.labels_.append(values[order])

    def transform(self, X):
        check_fitted(self, "labels_")
        if _is_dataset(X):
            if not hasattr(self, "output_cols_"):
                raise InvalidInputError("StringIndexer was fitted on arrays; fit it on a Dataset to "
                                        "transform a Dataset by column name.")
            return X.map_batches(_index_table, batch_format="pyarrow", fn_args=(self,))
        cols, names, _ = self._columns(X, fit=False)
        out, keep = self._indices(cols, names)
        out = out[keep]
        return out[:, 0] if self._one_d else out

    def _indices(self, cols, names):
        """(indices as float64 (n, k), rows kept) for k input columns."""
        if len(cols) != self.n_features_in_:
            raise InvalidInputError(f"X has {len(cols)} features, but StringIndexer is expecting "
                                    f"{self.n_features_in_} features as input (argument X of transform()).")
        out = np.empty((len(cols[0]), len(cols)))
        keep = np.ones(len(cols[0]), dtype=bool)
        for j, (c, labels) in enumerate(zip(cols, self.labels_)):
            order = np.argsort(labels)
            sorted_labels = labels[order]
            pos = np.minimum(np.searchsorted(sorted_labels, c), len(labels) - 1)
            known = sorted_labels[pos] == c
            idx = order[pos].astype(np.float64)
            if not known.all():
                if self.handle_invalid == "error":
                    raise InvalidInputError(
                        f"unseen label {_py(c[~known][0])!r} in column {repr(names[j]) if names else j}; set "
                        f"handle_invalid='keep' or 'skip', or refit on data holding every label.")
                idx[~known] = len(labels)
                if self.handle_invalid == "skip":
                    keep &= known
            out[:, j] = idx
        return out, keep

    def inverse_transform(self, X):
        check_fitted(self, "labels_")
        idx = np.asarray(X).astype(np.int64)
        if self._one_d:
            return self.labels_[0][idx]
        return np.column_stack([labels[idx[:, j]] for j, labels in enumerate(self.labels_)])


class VectorAssembler(ShoalEstimatorMixin, TransformerMixin, BaseEstimator):
    """Gather named columns (scalars or fixed-length vectors per row) into one float64 matrix.

    handle_invalid: "error" (NaN names the column), "skip" (drop rows with NaN) or "keep".
    On a Dataset, ``transform`` lazily adds the vector column ``output_col`` (default
    "features", the column shoal.ml estimators read by default), one float64 vector per row.
    """

    def __init__(self, input_cols=None, *, handle_invalid="error", output_col="features"):
        self.input_cols = input_cols
        self.handle_invalid = handle_invalid
        self.output_col = output_col

    def fit(self, X=None, y=None, *, features=None, label=None):
        if X is not None:
            _, features, label = resolve_fit_columns(X, y, features=features, label=label, estimator=self)
        cols = merge_input_columns(self.input_cols, features, self)
        if X is not None and cols:
            resolve_fit_columns(X, None, features=cols, label=label, estimator=self,
                                features_param="input_cols=")
        if not cols:
            raise InvalidInputError("VectorAssembler needs the columns to gather: input_cols=[...] or "
                                    "fit(..., features=[...])")
        if self.handle_invalid not in ("error", "keep", "skip"):
            raise InvalidInputError(f"handle_invalid must be 'error', 'keep' or 'skip', got {self.handle_invalid!r}")
        self.n_features_in_ = len(cols)
        self.feature_names_in_ = np.asarray(cols, dtype=object)
        return self

    def _own_input_columns(self):
        return self.input_cols

    def _dataset_columns_io(self):
        return list(self.feature_names_in_), [self.output_col]

    def transform(self, X):
        if not hasattr(self, "n_features_in_"):
            self.fit()
        if _is_dataset(X):
            if not self.output_col:
                raise InvalidInputError("VectorAssembler needs output_col='<name>' to transform a Dataset")
            return X.map_batches(_assemble_table, batch_format="pyarrow", fn_args=(self,))
        if type(X).__module__.startswith("pyarrow"):
            X = X.to_pandas()
        if not (hasattr(X, "columns") or isinstance(X, dict)):
            raise InvalidInputError("VectorAssembler needs named columns: a DataFrame, an Arrow Table or a dict")
        parts = []
        for c in self.feature_names_in_:
            if c not in X:
                raise InvalidInputError(f"column {c!r} is missing from the input of VectorAssembler")
            v = X[c]
            v = v.to_numpy() if hasattr(v, "to_numpy") else np.asarray(v)
            if v.dtype.kind == "O":
                try:
                    v = np.stack([np.asarray(r, dtype=np.float64) for r in v])
                except (ValueError, TypeError):
                    raise InvalidInputError(f"column {c!r} holds values that are neither numbers nor "
                                            f"equal-length numeric vectors") from None
            elif v.dtype.kind not in "biuf":
                raise InvalidInputError(f"column {c!r} has non-numeric dtype {v.dtype}; index it first "
                                        f"(StringIndexer)")
            parts.append(v.astype(np.float64).reshape(len(v), -1))
        out, keep = self._assemble(parts)
        return out[keep]

    def _assemble(self, parts):
        """(the columns side by side, rows kept) after the handle_invalid check."""
        out = np.hstack(parts)
        keep = np.ones(out.shape[0], dtype=bool)
        bad = ~np.isfinite(out).all(axis=1)
        if bad.any():
            if self.handle_invalid == "error":
                col_idx = np.flatnonzero(~np.isfinite(out[bad][0]))[0]
                widths = np.cumsum([p.shape[1] for p in parts])
                name = self.feature_names_in_[int(np.searchsorted(widths, col_idx, side="right"))]
                raise InvalidInputError(f"column {name!r} holds NaN or infinity; set handle_invalid='skip' "
                                        f"or 'keep', or impute first.")
            if self.handle_invalid == "skip":
                keep = ~bad
        return out, keep


# ----------------------------------------------------------------------------------
# Dataset helpers (the block functions run in tasks)

def _fit_columns(estimator, X, y, features, label):
    """fit's arguments checked (resolve_fit_columns), the input columns merged with input_cols."""
    if _is_dataset(X):
        X = X.materialize()   # one run serves the schema look-up and the per-block pass
    _, features, label = resolve_fit_columns(X, y, features=features, label=label, estimator=estimator)
    if estimator.input_cols is not None:
        features = merge_input_columns(estimator.input_cols, features, estimator)
        resolve_fit_columns(X, None, features=features, label=label, estimator=estimator,
                            features_param="input_cols=")
    return X, features, label


def _dataset_input_cols(ds, input_cols, label, who, strings_only=False, filter_given=False):
    """The columns a transformer reads from a Dataset: ``input_cols`` (checked by
    resolve_fit_columns), the string ones among them (``filter_given``), or a default."""
    import pyarrow as pa
    schema = ds.schema()

    def is_string(f):
        return pa.types.is_string(f.type) or pa.types.is_large_string(f.type) or pa.types.is_dictionary(f.type)

    if input_cols is not None and not filter_given:
        return [input_cols] if isinstance(input_cols, str) else list(input_cols)
    candidates = list(input_cols) if input_cols is not None else [f.name for f in schema if f.name != label]
    cols = [c for c in candidates if not strings_only or is_string(schema.field(c))]
    if not cols:
        raise InvalidInputError(f"{who} found no {'string ' if strings_only else ''}column to fit among "
                                f"{candidates} (Dataset columns {schema.names}); pass input_cols=[...]")
    return cols


def _output_names(output_cols, in_cols, suffix, who):
    if output_cols is None:
        return [f"{c}{suffix}" for c in in_cols]
    out = [output_cols] if isinstance(output_cols, str) else list(output_cols)
    if len(out) != len(in_cols):
        raise InvalidInputError(f"{who} has {len(in_cols)} input columns but {len(out)} output_cols; "
                                f"give one output name per input column")
    return out


def _block_label_counts(table, cols):
    """Runs in a task: (distinct values, counts) of each column of one block."""
    out = []
    for c in cols:
        values = table.column(c).to_numpy(zero_copy_only=False)
        _check_no_missing(values, repr(c))
        out.append(np.unique(values, return_counts=True) if len(values) else
                   (values, np.zeros(0, dtype=np.int64)))
    return out


def _index_table(table, indexer):
    """Runs in a task: the block with the indexer's output columns added (rows dropped by 'skip')."""
    import pyarrow as pa
    if table.num_rows == 0:
        return _add_columns(table, indexer.output_cols_, [pa.array([], pa.float64())] * len(indexer.output_cols_))
    names = list(indexer.feature_names_in_)
    cols = [table.column(c).to_numpy(zero_copy_only=False) for c in names]
    out, keep = indexer._indices(cols, names)
    if not keep.all():
        table, out = table.filter(pa.array(keep)), out[keep]
    return _add_columns(table, indexer.output_cols_, [pa.array(out[:, j]) for j in range(out.shape[1])])


def _assemble_table(table, assembler):
    """Runs in a task: the block with the assembled vector column added."""
    import pyarrow as pa
    for c in assembler.feature_names_in_:
        if c not in table.column_names:
            raise InvalidInputError(f"column {c!r} is missing from the input of VectorAssembler; "
                                    f"available columns: {table.column_names}")
    parts = [column_to_matrix(table.column(c), c) for c in assembler.feature_names_in_]
    out, keep = assembler._assemble(parts)
    if not keep.all():
        table, out = table.filter(pa.array(keep)), out[keep]
    return _add_columns(table, [assembler.output_col], [dense_to_vectors(out)])


def _add_columns(table, names, arrays):
    """``table`` with each named column added, or replaced where it exists."""
    for name, array in zip(names, arrays):
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, array)
        else:
            table = table.append_column(name, array)
    return table
