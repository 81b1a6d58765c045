"""The input layer of shoal.ml: any supported input becomes one distributed design matrix.

Contract (stable; every estimator, the tree models included, builds on it)
--------------------------------------------------------------------------

``as_design_matrix(X, y=None, *, features=None, label=None, target=None,
                   estimator="estimator", block_rows=None, executor=None,
                   min_samples=1, allow_nan=False) -> DesignMatrix``
(estimators call it through ``shoal.ml._base.fit_input(estimator, X, y, target, ...)``,
which also sets ``n_features_in_`` / ``feature_names_in_``)

    X: NumPy array-like (n, d), pandas or Polars DataFrame, pyarrow Table, or a shoal.data
       Dataset. For a DataFrame/Table/Dataset, ``features`` (column names; default:
       every column but the label) and ``label`` (a column name) pick the columns;
       ``y`` may also be given as a column name.
    target: None (unsupervised: y is ignored / must be absent), "regression"
       (y -> float64) or "classification" (y -> int64 codes into ``dm.classes``;
       fewer than two classes is an error).
    allow_nan: keep NaN in X (Imputer); infinity is still rejected.
    Raises InvalidInputError (a ShoalError and a ValueError) naming the argument
    or column: NaN/inf features, label of the wrong type, empty input, missing
    column, non-numeric feature column, X/y length mismatch.

    X may also be a DesignMatrix (a pipeline passing its blocks on): it is returned as is.

``DesignMatrix``
    blocks        list of block handles; each holds ``(X_block, y_block)`` with
                  X_block float64 C-contiguous (n_i, d) and y_block None,
                  float64 (regression) or int64 codes (classification). On the
                  cluster a handle is an ObjectRef (put once, read zero-copy by
                  tasks on every iteration); in-process it is the tuple itself.
    n_rows, n_features, block_rows (list of n_i), feature_names_in_ (ndarray of
    str, or None for unnamed input), classes (ndarray or None), executor.
    map(fn, *args)            -> [fn(X_block, y_block, *args) for each block]
    map_indexed(fn, *args)    -> [fn(X_block, y_block, block_index, *args) for each block]
    map_reduce(fn, *args, reduce=tree_sum, fan_in=None)
                              -> the per-block results folded with ``reduce``
                                 (binary, associative); on the cluster partial
                                 results are folded in tasks, ``fan_in`` at a time.
    map_blocks(fn, *args)     -> a new DesignMatrix of ``fn(X_block, y_block, *args) -> (X', y')``,
                                 its blocks left where the tasks made them
    collect()                 -> (X, y) gathered into the driver (small data, tests)
    fn and reduce must be module-level functions (they travel by reference); keep them in
    modules that do not import scikit-learn (as _kernels.py) so that workers start fast.
    Arguments that are large NumPy arrays are put in the object store once per call.

``resolve_fit_columns(X, y=None, *, features=None, label=None, estimator, supervised=False)
                    -> (y, features, label)``
    The one check of fit's signature ``fit(X, y=None, *, features=None, label=None)``, shared
    by every estimator, transformer and Pipeline (as_design_matrix calls it): column names
    against a table's columns (an error lists the available ones), the label required for a
    supervised estimator, names refused on unnamed arrays. See its docstring.

``check_predict_input(estimator, X, method="predict", features=None) -> np.ndarray | Dataset``
    Validates X at predict/transform time against ``estimator.n_features_in_``
    (and ``feature_names_in_``); the error names the method's argument ``X``.

Executors (shoal/ml/_executor.py, re-exported here): ``"local"`` maps in this process (a
thread pool over blocks; NumPy releases the GIL), ``"cluster"`` maps as shoal tasks.
``"auto"`` (the default, see ``set_executor``) uses the cluster for Datasets and for inputs
of at least ``CLUSTER_MIN_ELEMENTS`` values once shoal's core runtime is importable (and
not from inside a task), else local.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from shoal.exceptions import InvalidInputError, InvalidInputTypeError
# re-exported: the fit signature's column check is part of this layer's contract
from shoal.ml._columns import (_dataset_columns, _name_of, as_frame, is_table,  # noqa: F401
                               merge_input_columns, resolve_fit_columns, select_table, table_columns)
# re-exported: the executors are part of this layer's contract
from shoal.ml._executor import (DEFAULT_FAN_IN, ClusterExecutor, LocalExecutor,  # noqa: F401
                                _dataset_block_refs, _is_dataset, _num_workers, _shoal_core,
                                get_executor_mode, map_dataset_blocks, resolve_executor, set_executor,
                                tree_sum, use_executor)

DEFAULT_BLOCK_ROWS = 1 << 17        # 131072 rows: a 20-feature block is 20 MB
MIN_BLOCK_ROWS = 1 << 16
MAX_BLOCK_ROWS = 1 << 18

def _choose_block_rows(n_rows: int, executor, block_rows: int | None) -> int:
    if block_rows is not None:
        if int(block_rows) < 1:
            raise InvalidInputError(f"block_rows must be a positive integer, got {block_rows!r}")
        return int(block_rows)
    if isinstance(executor, LocalExecutor) and n_rows < 4 * MIN_BLOCK_ROWS:
        return max(n_rows, 1)
    # at least two blocks per worker for balance, blocks within [64k, 256k] rows
    per = -(-n_rows // (2 * _num_workers(executor)))
    return int(min(MAX_BLOCK_ROWS, max(MIN_BLOCK_ROWS, per)))


# ----------------------------------------------------------------------------------
# the design matrix

@dataclass
class DesignMatrix:
    """A fit's input as row blocks (X, y) in the object store or in memory, with the
    executor that maps functions over them; what every shoal.ml estimator fits on.

    Build one with ``as_design_matrix``; ``map``, ``map_indexed`` and
    ``map_reduce`` run a function on every block (as tasks on a cluster) and
    combine the results.
    """

    blocks: list
    block_rows: list
    n_features: int
    feature_names_in_: np.ndarray | None
    executor: Any
    classes: np.ndarray | None = None
    fan_in: int = DEFAULT_FAN_IN

    @property
    def n_rows(self) -> int:
        return int(sum(self.block_rows))

    @property
    def distributed(self) -> bool:
        return isinstance(self.executor, ClusterExecutor)

    def map(self, fn: Callable, *args) -> list:
        return self.executor.map(fn, self.blocks, args)

    def map_indexed(self, fn: Callable, *args) -> list:
        """Like map, with the block's position: ``fn(X_block, y_block, block_index, *args)``."""
        return self.executor.map(fn, self.blocks, args, indexed=True)

    def map_reduce(self, fn: Callable, *args, reduce: Callable = tree_sum, fan_in: int | None = None):
        return self.executor.map_reduce(fn, self.blocks, args, reduce, fan_in or self.fan_in)

    def map_blocks(self, fn: Callable, *args, target=None) -> "DesignMatrix":
        """A new DesignMatrix whose blocks are ``fn(X_block, y_block, *args) -> (X', y')``.

        On the cluster the new blocks stay in the object store (task results).
        """
        if isinstance(self.executor, ClusterExecutor):
            new_blocks = self.executor.submit(fn, self.blocks, args)
            sizes = self.executor.map(_block_shape, new_blocks, ())
        else:
            new_blocks = self.executor.map(fn, self.blocks, args)
            sizes = [_block_shape(X, y) for X, y in new_blocks]
        d = sizes[0][1] if sizes else self.n_features
        return DesignMatrix(new_blocks, [s[0] for s in sizes], d, None, self.executor, self.classes, self.fan_in)

    def collect(self) -> tuple[np.ndarray, np.ndarray | None]:
        """All rows gathered into the driver (for small data and tests)."""
        parts = self.executor.get_blocks(self.blocks)
        X = np.concatenate([p[0] for p in parts]) if parts else np.empty((0, self.n_features))
        ys = [p[1] for p in parts]
        y = None if not ys or ys[0] is None else np.concatenate(ys)
        return X, y


def _block_shape(X, y):
    return X.shape


# ----------------------------------------------------------------------------------
# vector columns: a row of a Dataset column may hold a whole feature vector

SPARSE_VECTOR_FIELDS = ("size", "indices", "values")


def sparse_vector_type():
    """Arrow type of a sparse vector column (Spark's SparseVector): size, indices, values per row."""
    import pyarrow as pa
    return pa.struct([("size", pa.int32()), ("indices", pa.list_(pa.int32())),
                      ("values", pa.list_(pa.float64()))])


def is_sparse_vector_type(arrow_type) -> bool:
    import pyarrow as pa
    return pa.types.is_struct(arrow_type) and \
        [arrow_type.field(i).name for i in range(arrow_type.num_fields)] == list(SPARSE_VECTOR_FIELDS)


def is_vector_type(arrow_type) -> bool:
    """True for Arrow column types holding one vector per row (tensor, list, sparse vector)."""
    import pyarrow as pa
    if isinstance(arrow_type, pa.FixedShapeTensorType):
        return True
    if pa.types.is_fixed_size_list(arrow_type) or pa.types.is_list(arrow_type) \
            or pa.types.is_large_list(arrow_type):
        return True
    return is_sparse_vector_type(arrow_type)


def _one_chunk(col):
    import pyarrow as pa
    if isinstance(col, pa.ChunkedArray):
        if col.num_chunks == 0:
            return pa.array([], type=col.type)
        return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
    return col


def sparse_vectors_to_csr(col):
    """A sparse vector column as a SciPy CSR matrix (rows in order)."""
    import pyarrow.compute as pc
    import scipy.sparse as sp
    col = _one_chunk(col)
    size, indices, values = col.flatten()   # children with the parent's offset applied
    n = len(col)
    width = int(pc.max(size).as_py() or 0) if n else 0
    lengths = pc.list_value_length(indices).to_numpy(zero_copy_only=False)
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    idx = indices.flatten().to_numpy(zero_copy_only=False)
    vals = values.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
    return sp.csr_matrix((vals, idx, indptr), shape=(n, width))


def csr_to_sparse_vectors(X):
    """A SciPy sparse matrix as a sparse vector column (the inverse of sparse_vectors_to_csr)."""
    import pyarrow as pa
    X = X.tocsr()
    n, width = X.shape
    offsets = pa.array(X.indptr.astype(np.int32))
    indices = pa.ListArray.from_arrays(offsets, pa.array(X.indices.astype(np.int32)))
    values = pa.ListArray.from_arrays(offsets, pa.array(X.data.astype(np.float64)))
    size = pa.array(np.full(n, width, dtype=np.int32))
    return pa.StructArray.from_arrays([size, indices, values], names=list(SPARSE_VECTOR_FIELDS))


def dense_to_vectors(X):
    """A 2-D array as a fixed-shape tensor column (one vector per row)."""
    import pyarrow as pa
    X = np.ascontiguousarray(X, dtype=np.float64)
    if X.shape[0] == 0:     # Arrow refuses an empty ndarray: build the empty column by type
        t = pa.fixed_shape_tensor(pa.float64(), X.shape[1:])
        storage = pa.array([], pa.list_(pa.float64(), int(np.prod(X.shape[1:]))))
        return pa.ExtensionArray.from_storage(t, storage)
    return pa.FixedShapeTensorArray.from_numpy_ndarray(X)


def column_to_matrix(col, name: str = "column") -> np.ndarray:
    """One Arrow column as a float64 matrix (n, width): scalars give width 1, vector columns
    (tensor, fixed-size or equal-length list, sparse vector) their length."""
    import pyarrow as pa
    import pyarrow.compute as pc
    col = _one_chunk(col)
    t = col.type
    n = len(col)
    if isinstance(t, pa.FixedShapeTensorType):
        if n == 0:
            return np.empty((0, int(np.prod(t.shape))))
        return col.to_numpy_ndarray().reshape(n, -1).astype(np.float64, copy=False)
    if is_sparse_vector_type(t):
        return sparse_vectors_to_csr(col).toarray()
    if pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t):
        if col.null_count:
            raise InvalidInputError(f"vector column {name!r} holds a missing (null) row; drop or "
                                    f"fill it first.")
        lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
        width = int(lengths[0]) if n else 0
        if n and (lengths != width).any():
            raise InvalidInputError(f"vector column {name!r} holds vectors of different lengths "
                                    f"({width} and {int(lengths[lengths != width][0])}); every row "
                                    f"needs the same length.")
        flat = col.flatten().to_numpy(zero_copy_only=False)
        if flat.dtype.kind not in "biuf":
            raise InvalidInputError(f"vector column {name!r} holds {flat.dtype} values; it needs numbers.")
        return flat.astype(np.float64, copy=False).reshape(n, width)
    values = col.to_numpy(zero_copy_only=False)
    if values.dtype.kind not in "biuf":
        raise InvalidInputError(
            f"feature column {name!r} has non-numeric dtype {values.dtype}; encode it first "
            f"(shoal.ml.StringIndexer / OneHotEncoder) or leave it out of features=.")
    return values.astype(np.float64).reshape(n, 1)


# ----------------------------------------------------------------------------------
# validation helpers

def _column_label(j: int, names) -> str:
    return f"column {names[j]!r} (feature {j})" if names is not None else f"feature column {j}"


def check_finite(X: np.ndarray, names=None, argument: str = "X") -> None:
    """Raise InvalidInputError naming the first column holding NaN or infinity."""
    if X.size == 0:
        return
    # a sum is one fast vectorized pass; only when it is not finite look for the column
    if np.isfinite(np.add.reduce(X, axis=None)):
        return
    bad = ~np.isfinite(X)
    cols = np.flatnonzero(bad.any(axis=0))
    if cols.size == 0:   # the sum overflowed but every value is finite
        return
    j = int(cols[0])
    kind = "NaN" if np.isnan(X[:, j]).any() else "infinity (inf)"
    raise InvalidInputError(
        f"{argument} contains {kind} in {_column_label(j, names)}; NaN and inf are not "
        f"supported: drop or impute those rows (shoal.ml.Imputer) first.")


def _to_float_matrix(X, argument: str, estimator) -> np.ndarray:
    import scipy.sparse as sp
    if sp.issparse(X):
        raise TypeError(f"{_name_of(estimator)} does not accept sparse {argument}: pass a dense "
                        f"array (X.toarray()) or a shoal.data Dataset.")
    arr = np.asarray(X)
    if np.iscomplexobj(arr):
        raise InvalidInputError(f"Complex data not supported in {argument} for {_name_of(estimator)}.")
    if arr.ndim == 1 or arr.ndim == 0:
        raise InvalidInputError(
            f"Expected 2D array for {argument}, got {arr.ndim}D array instead. Reshape your data "
            f"with X.reshape(-1, 1) for a single feature or X.reshape(1, -1) for a single sample.")
    if arr.ndim != 2:
        raise InvalidInputError(f"{argument} must be 2-dimensional, got shape {arr.shape}.")
    if arr.dtype.kind not in "biuf":
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError) as e:
            cls = InvalidInputTypeError if isinstance(e, TypeError) else InvalidInputError
            raise cls(
                f"{argument} must hold numbers; converting dtype {arr.dtype} to float64 failed: {e}. "
                f"Encode strings first (shoal.ml.StringIndexer / OneHotEncoder).") from None
    return np.ascontiguousarray(arr, dtype=np.float64)


def _frame_to_matrix(df, features, label, estimator):
    """pandas DataFrame -> (X float64, y or None, feature names)."""
    import pandas as pd
    cols = [str(c) for c in df.columns]
    for c in ([label] if label is not None else []) + list(features or []):
        if c not in df.columns:
            raise InvalidInputError(f"column {c!r} is missing from the input of {_name_of(estimator)}; "
                                    f"available columns: {cols}")
    if features is None:
        features = [c for c in df.columns if c != label]
    features = list(features)
    for c in features:
        s = df[c]
        if not (pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)):
            raise InvalidInputError(
                f"feature column {c!r} has non-numeric dtype {s.dtype}; encode it first "
                f"(shoal.ml.StringIndexer / OneHotEncoder) or leave it out of features=.")
    X = np.ascontiguousarray(df[features].to_numpy(dtype=np.float64, na_value=np.nan))
    y = df[label].to_numpy() if label is not None else None
    names = np.asarray([str(c) for c in features], dtype=object)
    if not all(isinstance(c, str) for c in features):
        names = None
    return X, y, names


def _prepare_y(y, target: str | None, n: int, estimator, label_name: str = "y"):
    """Validate a driver-side label array; returns (y_values, classes)."""
    if target is None:
        return None, None
    if y is None:
        raise InvalidInputError(
            f"{_name_of(estimator)} requires y to be passed, but the target y is None: pass the label "
            f"as y (or label='column' for named columns).")
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        import warnings
        from sklearn.exceptions import DataConversionWarning
        warnings.warn("A column-vector y was passed when a 1d array was expected. Please change the "
                      "shape of y to (n_samples,), for example using ravel().", DataConversionWarning,
                      stacklevel=4)
        y = y.ravel()
    if y.ndim != 1:
        raise InvalidInputError(f"{label_name} must be 1-dimensional, got shape {y.shape}.")
    if y.shape[0] != n:
        raise InvalidInputError(
            f"X and {label_name} have inconsistent numbers of samples: [{n}, {y.shape[0]}].")
    if target == "regression":
        if y.dtype.kind not in "biuf":
            try:
                y = y.astype(np.float64)
            except (TypeError, ValueError):
                raise InvalidInputError(
                    f"label {label_name} has dtype {y.dtype} but {_name_of(estimator)} is a regressor and "
                    f"needs numbers; pass a numeric label column.") from None
        y = np.ascontiguousarray(y, dtype=np.float64)
        if not np.isfinite(y).all():
            raise InvalidInputError(f"label {label_name} contains NaN or infinity; drop those rows first.")
        return y, None
    # classification
    classes, codes = _encode_labels(y, label_name, estimator)
    return codes, classes


def _encode_labels(y: np.ndarray, label_name: str, estimator):
    if y.dtype.kind == "f":
        if not np.isfinite(y).all():
            raise InvalidInputError(f"label {label_name} contains NaN or infinity; drop those rows first.")
        if not np.array_equal(y, np.round(y)):
            raise InvalidInputError(
                f"Unknown label type: continuous. label {label_name} holds non-integer floats but "
                f"{_name_of(estimator)} is a classifier; pass class labels (ints or strings), or use a regressor.")
    elif y.dtype.kind == "O":
        kinds = {type(v) for v in y[: min(len(y), 1000)]}
        if len(kinds) > 1 and not kinds <= {int, np.int64, float, np.float64}:
            raise InvalidInputError(
                f"label {label_name} mixes types {sorted(k.__name__ for k in kinds)}; use one label type.")
    elif y.dtype.kind not in "biuUS":
        raise InvalidInputError(f"label {label_name} has unsupported dtype {y.dtype} for a classifier.")
    if y.dtype.kind in "iu" and y.size and 0 <= y.min() and y.max() < 1 << 16:
        counts = np.bincount(y)
        classes = np.flatnonzero(counts).astype(y.dtype)
        lookup = np.cumsum(counts > 0) - 1
        codes = lookup[y].astype(np.int64, copy=False)   # already int64: no second copy
    else:
        try:
            classes, codes = np.unique(y, return_inverse=True)
        except TypeError:
            raise InvalidInputError(
                f"label {label_name} mixes value types (e.g. strings and None); give every row a "
                f"label of one type.") from None
        codes = codes.astype(np.int64, copy=False).ravel()
    return classes, codes


def _check_classes(classes, estimator):
    if classes is not None and len(classes) < 2:
        raise InvalidInputError(
            f"{_name_of(estimator)} needs samples of at least 2 classes in the data, but the data "
            f"contains only one class: {classes[0]!r}. Check the label column or the split.")


# ----------------------------------------------------------------------------------
# building the design matrix

def as_design_matrix(X, y=None, *, features=None, label=None, target: str | None = None,
                     estimator="estimator", block_rows: int | None = None,
                     executor: str | None = None, min_samples: int = 1,
                     allow_nan: bool = False) -> DesignMatrix:
    """Validate input and lay it out as blocks for distributed fitting (see module docstring)."""
    if target not in (None, "regression", "classification"):
        raise InvalidInputError(f"target must be None, 'regression' or 'classification', got {target!r}")
    if isinstance(X, DesignMatrix):
        return _reuse_design_matrix(X, target, estimator)
    if _is_dataset(X) and hasattr(X, "materialize"):
        # run the plan once: the column check and the block conversion reuse it
        X = X.materialize()
    y, features, label = resolve_fit_columns(X, y, features=features, label=label, estimator=estimator,
                                             supervised=target is not None)
    if _is_dataset(X):
        return _dataset_design_matrix(X, features, label, target, estimator, block_rows, executor,
                                      min_samples, allow_nan)

    names = None
    X = as_frame(X)
    if type(X).__module__.startswith("pandas") and hasattr(X, "columns"):
        X, y_col, names = _frame_to_matrix(X, features, label, estimator)
        if label is not None:
            y = y_col
    else:
        if label is not None or features is not None:
            raise InvalidInputError(
                "features= and label= name columns; they need a pandas DataFrame, a pyarrow Table or a "
                "shoal.data Dataset, not an unnamed array.")
        X = _to_float_matrix(X, "X", estimator)
    n, d = X.shape
    if n < min_samples:
        raise InvalidInputError(
            f"Found array with {n} sample(s) (shape={X.shape}) while a minimum of {min_samples} is "
            f"required by {_name_of(estimator)}: the input X is empty.")
    if d == 0:
        raise InvalidInputError(
            f"Found array with 0 feature(s) (shape={X.shape}) while a minimum of 1 is required by "
            f"{_name_of(estimator)}.")
    if allow_nan:
        if np.isinf(X).any():
            check_finite(np.where(np.isnan(X), 0.0, X), names, "X")
    else:
        check_finite(X, names, "X")
    y_vals, classes = _prepare_y(y, target, n, estimator, label or "y")
    if target == "classification":
        _check_classes(classes, estimator)

    ex = resolve_executor(executor, n * d, False)
    rows = _choose_block_rows(n, ex, block_rows)
    blocks, sizes = [], []
    for start in range(0, n, rows):
        Xb = X[start:start + rows]
        yb = None if y_vals is None else y_vals[start:start + rows]
        blocks.append(ex.put((Xb, yb)))
        sizes.append(Xb.shape[0])
    return DesignMatrix(blocks, sizes, d, names, ex, classes)


def _reuse_design_matrix(dm: DesignMatrix, target, estimator) -> DesignMatrix:
    """A DesignMatrix passed as X (a fused pipeline) is used as laid out; its label must fit."""
    if target == "classification" and dm.classes is None:
        raise InvalidInputError(f"{_name_of(estimator)} is a classifier but the design matrix holds no "
                                f"class labels; build it with target='classification'.")
    if target == "regression" and dm.classes is not None:
        raise InvalidInputError(f"{_name_of(estimator)} is a regressor but the design matrix holds class "
                                f"codes; build it with target='regression'.")
    return dm


def _arrow_block_to_design(table, features, label, target, allow_nan=False):
    """Runs in a task: one Arrow block of a Dataset -> ((X, y_raw), (n_rows, label classes or None))."""
    import pyarrow as pa
    if isinstance(table, pa.Table) and features is not None and any(
            is_vector_type(table.schema.field(c).type) for c in features if c in table.column_names):
        X, y = _arrow_vectors_to_matrix(table, features, label)
    else:
        if isinstance(table, pa.Table):
            df = table.to_pandas()
        else:  # a block may also arrive as a pandas frame or a dict of arrays
            import pandas as pd
            df = table if hasattr(table, "columns") else pd.DataFrame(table)
        X, y, _ = _frame_to_matrix(df, features, label, "Dataset block")
    check_finite(np.where(np.isnan(X), 0.0, X) if allow_nan else X,
                 features if features is not None and len(features) == X.shape[1] else None, "Dataset")
    if target == "regression":
        y, _ = _prepare_y(y, "regression", X.shape[0], "regressor", label)
        return (X, y), (X.shape[0], None)
    if target == "classification":
        y = np.asarray(y)
        if y.dtype.kind == "f" and not np.isfinite(y).all():
            raise InvalidInputError(f"label {label} contains NaN or infinity; drop those rows first.")
        if y.dtype.kind == "f" and not np.array_equal(y, np.round(y)):
            raise InvalidInputError(
                f"Unknown label type: continuous. label column {label!r} holds non-integer floats but "
                f"the estimator is a classifier; use a regressor or integer/string class labels.")
        return (X, y), (X.shape[0], np.unique(y))
    return (X, None), (X.shape[0], None)


def _arrow_vectors_to_matrix(table, features, label):
    """Feature columns (some holding vectors) of an Arrow block side by side, and the raw label."""
    for c in ([label] if label is not None else []) + list(features):
        if c not in table.column_names:
            raise InvalidInputError(f"column {c!r} is missing from the Dataset; available columns: "
                                    f"{table.column_names}. Give the model a Dataset holding the "
                                    f"columns it was fitted on.")
    parts = [column_to_matrix(table.column(c), c) for c in features]
    X = np.ascontiguousarray(np.hstack(parts)) if parts else np.empty((table.num_rows, 0))
    y = table.column(label).to_numpy(zero_copy_only=False) if label is not None else None
    return X, y


def _encode_block(X, y, classes):
    return X, np.searchsorted(classes, y).astype(np.int64)


def _split_pair(pair, i):
    return pair[i]


def _dataset_design_matrix(ds, features, label, target, estimator, block_rows, executor, min_samples,
                           allow_nan=False):
    core = _shoal_core()
    if core is None:
        raise InvalidInputError("a shoal.data Dataset needs shoal's core runtime; it is not importable")
    ex = ClusterExecutor(core)
    # the columns were checked by resolve_fit_columns (as_design_matrix)
    schema_names = _dataset_columns(ds)
    if schema_names is not None:
        if features is None:
            vector = _default_vector_column(ds)
            features = [vector] if vector is not None else [c for c in schema_names if c != label]
    features = None if features is None else list(features)
    convert = core.remote(_arrow_block_to_design)
    split = core.remote(_split_pair)
    pair_refs = [convert.remote(b, features, label, target, allow_nan) for b in _dataset_block_refs(ds)]
    blocks = [split.remote(p, 0) for p in pair_refs]
    metas = core.get([split.remote(p, 1) for p in pair_refs])
    sizes = [m[0] for m in metas]
    keep = [i for i, s in enumerate(sizes) if s > 0]
    blocks, metas, sizes = [blocks[i] for i in keep], [metas[i] for i in keep], [sizes[i] for i in keep]
    if sum(sizes) < min_samples:
        raise InvalidInputError(
            f"the Dataset given to {_name_of(estimator)} is empty (0 rows); a minimum of {min_samples} "
            f"sample(s) is required.")
    if features is None or any(_default_vector_column(ds, c) is not None for c in features):
        d = int(core.get(ex.submit(_block_shape, blocks[:1], ()))[0][1])
    else:
        d = len(features)
    classes = None
    if target == "classification":
        try:
            classes = np.unique(np.concatenate([m[1] for m in metas]))
        except TypeError:
            raise InvalidInputError(f"label column {label!r} mixes value types; use one label type.") from None
        _check_classes(classes, estimator)
        blocks = ex.submit(_encode_block, blocks, (classes,))
    names = np.asarray(features, dtype=object) if features is not None else None
    return DesignMatrix(blocks, sizes, d, names, ex, classes)


def _default_vector_column(ds, name: str = "features"):
    """``name`` if the Dataset has a vector column of that name (Spark's featuresCol), else None."""
    try:
        schema = ds.schema()
    except Exception:  # noqa: BLE001 - not a shoal Dataset with a known schema
        return None
    if schema is None or name not in schema.names:
        return None
    return name if is_vector_type(schema.field(name).type) else None


# ----------------------------------------------------------------------------------
# predict-time validation

def check_predict_input(estimator, X, method: str = "predict", features=None):
    """Validate X against the fitted estimator; returns a float64 ndarray (or the Dataset itself)."""
    if _is_dataset(X):
        return X
    names = None
    X = as_frame(X)
    if type(X).__module__.startswith("pandas") and hasattr(X, "columns"):
        fitted_names = getattr(estimator, "feature_names_in_", None)
        if features is None and fitted_names is not None:
            missing = [c for c in fitted_names if c not in X.columns]
            if missing:
                raise InvalidInputError(
                    f"column {missing[0]!r} seen by {_name_of(estimator)}.fit() is missing from X "
                    f"(argument X of {method}()); columns given: {[str(c) for c in X.columns]}")
            features = list(fitted_names)
        Xa, _, names = _frame_to_matrix(X, features, None, estimator)
    else:
        Xa = _to_float_matrix(X, "X", estimator)
    if Xa.shape[0] == 0:
        raise InvalidInputError(
            f"Found array with 0 sample(s) (shape={Xa.shape}) while a minimum of 1 is required: "
            f"X given to {_name_of(estimator)}.{method}() is empty.")
    expected = getattr(estimator, "n_features_in_", None)
    if expected is not None and Xa.shape[1] != expected:
        raise InvalidInputError(
            f"X has {Xa.shape[1]} features, but {_name_of(estimator)} is expecting {expected} features "
            f"as input (argument X of {method}()); pass the same columns as at fit time.")
    check_finite(Xa, names, "X")
    return Xa
