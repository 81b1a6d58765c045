"""FeatureHasher: several columns (numeric, string, boolean) hashed into one sparse vector.

Spark's FeatureHasher, bit for bit: MurmurHash3 (x86, 32-bit) with seed 42 of the UTF-8
bytes, the index the hash modulo ``num_features`` (non-negative). A numeric column adds its
value at the index of its name; a string or boolean column (or a numeric one named in
``categorical_cols``) adds 1.0 at the index of ``"<column>=<value>"``; nulls add nothing.
scikit-learn's FeatureHasher hashes the same way (names, "name=value" for strings) but with
seed 0 and, by default, alternating signs, so its indices differ from Spark's and these.
"""
from __future__ import annotations

import decimal
import math

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, TransformerMixin

from shoal.exceptions import InvalidInputError
from shoal.ml._base import ShoalEstimatorMixin
from shoal.ml._input import (_is_dataset, as_frame, csr_to_sparse_vectors, is_table, merge_input_columns,
                             resolve_fit_columns)

SEED = 42


def _hash(term: str) -> int:
    from sklearn.utils import murmurhash3_32
    return murmurhash3_32(term.encode("utf-8"), seed=SEED)


def java_double_string(v: float) -> str:
    """A float as Java's Double.toString writes it ("2.0", "1.0E7", "NaN"), as Spark hashes it."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"
    a = abs(v)
    if a == 0 or 1e-3 <= a < 1e7:
        return repr(float(v))
    sign, digits, exp = decimal.Decimal(repr(float(v))).normalize().as_tuple()
    text = "".join(map(str, digits))
    e = exp + len(text) - 1
    mantissa = text[0] + "." + (text[1:] or "0")
    return f"{'-' if sign else ''}{mantissa}E{e}"


def _category_string(v, kind: str) -> str:
    if kind == "bool":
        return "true" if v else "false"
    if kind == "float":
        return java_double_string(float(v))
    return str(v)


def _hash_columns(table, columns, categorical, width):
    """One Arrow table's columns hashed: a CSR matrix (rows, width)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    n = table.num_rows
    rows, cols, vals = [], [], []
    for name in columns:
        if name not in table.column_names:
            raise InvalidInputError(f"column {name!r} (an input column of FeatureHasher) is missing; "
                                    f"available columns: {table.column_names}")
        col = table.column(name)
        col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        t = col.type
        if pa.types.is_dictionary(t):
            col, t = col.cast(t.value_type), t.value_type
        valid = ~np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        numeric = pa.types.is_integer(t) or pa.types.is_floating(t)
        if numeric and name not in categorical:
            idx = _hash(name) % width
            v = col.to_numpy(zero_copy_only=False).astype(np.float64)
            r = np.flatnonzero(valid)
            rows.append(r)
            cols.append(np.full(len(r), idx, dtype=np.int64))
            vals.append(v[r])
            continue
        if pa.types.is_boolean(t):
            kind = "bool"
        elif pa.types.is_floating(t):
            kind = "float"
        elif numeric or pa.types.is_string(t) or pa.types.is_large_string(t):
            kind = "str"
        else:
            raise InvalidInputError(f"FeatureHasher hashes numbers, strings and booleans, but column "
                                    f"{name!r} is {t}; drop it from the input columns or convert it.")
        encoded = pc.dictionary_encode(col)
        distinct = encoded.dictionary.to_pylist()
        buckets = np.array([_hash(f"{name}={_category_string(d, kind)}") % width for d in distinct],
                           dtype=np.int64)
        r = np.flatnonzero(valid)
        codes = encoded.indices.to_numpy(zero_copy_only=False)
        rows.append(r)
        cols.append(buckets[codes[r].astype(np.int64)] if len(distinct) else np.zeros(0, np.int64))
        vals.append(np.ones(len(r)))
    if not rows:
        return sp.csr_matrix((n, width))
    X = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(n, width))      # colliding features add up, as in Spark
    X.sort_indices()
    return X


def _hash_table(table, hasher, columns, categorical):
    """Runs in a task: the block with the hashed sparse vector column added."""
    X = _hash_columns(table, columns, categorical, int(hasher.num_features))
    column = csr_to_sparse_vectors(X)
    name = hasher.output_col
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, column)
    return table.append_column(name, column)


class FeatureHasher(ShoalEstimatorMixin, TransformerMixin, BaseEstimator):
    """Hash numeric, string and boolean columns into one sparse vector (Spark's FeatureHasher).

    Parameters (Spark's names): num_features (2**18): the vector width. input_cols: the
    columns to hash (or fit's ``features=``; default every column but the label).
    categorical_cols: numeric columns to hash as categories (``"<column>=<value>"``, 1.0)
    rather than as values. output_col ("features"): the Dataset column written.

    No fitting is needed: transform takes a Dataset (adds the sparse vector column), a pandas
    or Polars DataFrame or an Arrow Table (returns a SciPy CSR matrix), or a 2-D array (its
    columns are named x0, x1, ...; a column of numbers gives values, one of strings or
    booleans categories).
    """

    def __init__(self, num_features=1 << 18, *, input_cols=None, categorical_cols=None,
                 output_col="features"):
        self.num_features = num_features
        self.input_cols = input_cols
        self.categorical_cols = categorical_cols
        self.output_col = output_col

    def _check(self):
        w = self.num_features
        if not (isinstance(w, (int, np.integer)) and not isinstance(w, bool) and w >= 1):
            raise InvalidInputError(f"FeatureHasher num_features={w!r} must be a positive int")
        cats = self.categorical_cols
        if cats is not None and (isinstance(cats, str) or not all(isinstance(c, str) for c in cats)):
            raise InvalidInputError(f"FeatureHasher categorical_cols={cats!r} must be a list of column names")
        return frozenset(cats or ())

    def fit(self, X=None, y=None, *, features=None, label=None):
        """Nothing to learn: records the input columns and checks the parameters; returns self."""
        self._check()
        if X is not None:
            if _is_dataset(X):
                X = X.materialize()
            _, features, label = resolve_fit_columns(X, y, features=features, label=label, estimator=self)
        features = merge_input_columns(self.input_cols, features, self)
        if X is not None and features is not None:
            resolve_fit_columns(X, None, features=features, label=label, estimator=self,
                                features_param="input_cols=")
        if features is None and X is not None and is_table(X):
            cols = X.columns() if _is_dataset(X) else [str(c) for c in as_frame(X).columns]
            features = [c for c in cols if c != label]
        if X is not None and not is_table(X):
            self.n_features_in_ = _array_table(X).num_columns
            if hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
        if features is not None:
            self.feature_names_in_ = np.asarray(features, dtype=object)
            self.n_features_in_ = len(features)
        return self

    def _own_input_columns(self):
        return self.input_cols

    def _dataset_columns_io(self):
        return list(self.feature_names_in_), [self.output_col]

    def _columns_for(self, names):
        fitted = getattr(self, "feature_names_in_", None)
        if fitted is not None:
            return [str(c) for c in fitted]
        if self.input_cols is not None:
            return [self.input_cols] if isinstance(self.input_cols, str) else list(self.input_cols)
        return names

    def transform(self, X):
        """Hashed features: CSR (rows, num_features); a Dataset gets the sparse vector column."""
        import pyarrow as pa
        categorical = self._check()
        if _is_dataset(X):
            columns = self._columns_for(None)
            if columns is None:
                columns = X.columns()
            return X.map_batches(_hash_table, batch_format="pyarrow", fn_args=(self, columns, categorical))
        if is_table(X):
            frame = as_frame(X)
            table = pa.Table.from_pandas(frame, preserve_index=False)
        else:
            table = _array_table(X)
            expected = getattr(self, "n_features_in_", table.num_columns)
            if table.num_columns != expected:
                raise InvalidInputError(f"X has {table.num_columns} features, but FeatureHasher is expecting "
                                        f"{expected} features as input (argument X of transform()).")
        if table.num_rows == 0:
            raise InvalidInputError("the input of FeatureHasher is empty (0 rows)")
        return _hash_columns(table, self._columns_for(table.column_names), categorical,
                             int(self.num_features))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.input_tags.string = True
        return tags


def _array_table(X):
    """A 2-D array as an Arrow table of columns x0, x1, ..., checked as scikit-learn checks X."""
    import pyarrow as pa
    import scipy.sparse as sparse
    if sparse.issparse(X):
        raise TypeError("FeatureHasher does not accept sparse input: pass a dense array or a table.")
    arr = np.asarray(X)
    if arr.ndim != 2:
        raise InvalidInputError(f"Expected 2D array for X, got {arr.ndim}D array instead. Reshape your data "
                                f"with X.reshape(-1, 1) for a single feature.")
    if np.iscomplexobj(arr):
        raise InvalidInputError("Complex data not supported in X given to FeatureHasher.")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InvalidInputError(f"Found array with {arr.shape[0]} sample(s) and {arr.shape[1]} feature(s) "
                                f"(shape={arr.shape}) while a minimum of 1 is required by FeatureHasher.")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        j = int(np.flatnonzero(~np.isfinite(arr).all(axis=0))[0])
        kind = "NaN" if np.isnan(arr[:, j]).any() else "infinity (inf)"
        raise InvalidInputError(f"X contains {kind} in column x{j}; an array's missing values cannot be told "
                                f"from numbers: give a table with nulls, or drop or impute them.")
    return pa.table({f"x{j}": _array_column(arr[:, j]) for j in range(arr.shape[1])})


def _array_column(values):
    """One column of a NumPy array as Arrow: numbers as they are, anything else as strings."""
    import pandas as pd
    import pyarrow as pa
    if values.dtype.kind in "biuf":
        return pa.array(values)
    kind = pd.api.types.infer_dtype(values, skipna=True)     # an object column's cells, by type
    if kind in ("floating", "integer", "mixed-integer-float"):
        return pa.array(pd.to_numeric(pd.Series(values)).to_numpy(dtype=np.float64), from_pandas=True)  # None: null
    if kind == "boolean":
        return pa.array(values.tolist(), type=pa.bool_())
    return pa.array([None if v is None else str(v) for v in values])
