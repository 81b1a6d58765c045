"""Vector transformers (Spark's): VectorSlicer, ElementwiseProduct, DCT, Interaction, VectorIndexer.

Each reads numeric feature columns (scalars or vectors, such as VectorAssembler's "features")
and writes one vector: on arrays and DataFrames ``transform`` returns a matrix; on a Dataset
it lazily adds the vector column ``output_col`` (Spark's outputCol) block by block as tasks,
every other column kept. ``fit(X, y=None, *, features=None, label=None)`` as everywhere in
shoal.ml (``input_cols=`` names the columns in the constructor instead); VectorIndexer's
category counts are per-block distinct values merged in a tree of tasks.
"""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from shoal.exceptions import InvalidInputError
from shoal.ml._base import ShoalEstimatorMixin, check_fitted, fit_input
from shoal.ml._feature_kernels import block_distinct_capped, merge_distinct_capped, row_kron
from shoal.ml._input import (_arrow_vectors_to_matrix, _is_dataset, check_finite, check_predict_input,
                             column_to_matrix, dense_to_vectors, merge_input_columns)


def _column_widths(X, names, d):
    """The width of each input column: 1 for scalars, the vector length for vector columns."""
    if names is None or len(names) == d:
        return [1] * d
    first = X.take_batch(1, batch_format="pyarrow")
    return [column_to_matrix(first.column(c), c).shape[1] for c in names]


def _expanded_names(names, widths):
    """One name per feature: a scalar column's own name, ``<column>_<i>`` inside a vector."""
    out = []
    for n, w in zip(names, widths):
        out.extend([str(n)] if w == 1 else [f"{n}_{i}" for i in range(w)])
    return out


def vector_column(X):
    """A matrix as a vector column (fixed-shape tensors), zero rows included."""
    if X.shape[0]:
        return dense_to_vectors(X)
    import pyarrow as pa
    width = X.shape[1]
    storage = pa.array([], type=pa.list_(pa.float64(), width))
    return pa.ExtensionArray.from_storage(pa.fixed_shape_tensor(pa.float64(), [width]), storage)


def _vector_table(table, transformer, features):
    """Runs in a task: one block with ``transformer``'s output vector column added."""
    import pyarrow as pa
    X, _ = _arrow_vectors_to_matrix(table, features, None)
    check_finite(X, features if len(features) == X.shape[1] else None, "Dataset")
    if X.shape[0] == 0:
        out, keep = np.empty((0, transformer._n_out())), None
    else:
        out, keep = transformer._transform_rows(X)
    if keep is not None and not keep.all():
        table = table.filter(pa.array(keep))
    column = vector_column(out)
    name = transformer.output_col
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, column)
    return table.append_column(name, column)


class _VectorTransformer(ShoalEstimatorMixin, TransformerMixin, BaseEstimator):
    """Feature columns in, one vector out (see the module docstring)."""

    _fits_design_matrix = True

    def fit(self, X, y=None, *, features=None, label=None):
        """Check the parameters against the input and learn what there is to learn; returns self."""
        self._check_params()
        if _is_dataset(X):
            X = X.materialize()   # the widths look-up and the fit pass share one run
        features = merge_input_columns(getattr(self, "input_cols", None), features, self)
        dm = fit_input(self, X, y, None, features=features, label=label)
        names = getattr(self, "feature_names_in_", None)
        self.input_widths_ = _column_widths(X, names, dm.n_features)
        self._fit(dm)
        return self

    def _check_params(self):
        pass

    def _fit(self, dm):
        pass

    def _own_input_columns(self):
        return getattr(self, "input_cols", None)

    def _dataset_columns_io(self):
        return list(self.feature_names_in_), [self.output_col]

    def _feature_names(self):
        names = getattr(self, "feature_names_in_", None)
        if names is None:
            return [f"x{i}" for i in range(self.n_features_in_)]
        return _expanded_names(names, self.input_widths_)

    def _transform_rows(self, X):
        """(output matrix, rows kept or None) of a validated float64 matrix."""
        return self._transform(X), None

    def transform(self, X):
        """The output matrix of X; a Dataset gets the vector column ``output_col`` (lazily)."""
        check_fitted(self, "input_widths_")
        if _is_dataset(X):
            names = getattr(self, "feature_names_in_", None)
            if names is None:
                raise InvalidInputError(f"{type(self).__name__} was fitted on unnamed columns (an array); "
                                        f"fit it on the Dataset (or a DataFrame) to transform a Dataset.")
            return X.map_batches(_vector_table, batch_format="pyarrow", fn_args=(self, list(names)))
        out, keep = self._transform_rows(check_predict_input(self, X, "transform"))
        return out if keep is None else out[keep]


class VectorSlicer(_VectorTransformer):
    """A sub-vector of the features, picked by position and/or by name (Spark's VectorSlicer).

    Parameters: indices: positions in the feature vector (the input columns side by side; a
    vector column counts its length). names: feature names (a scalar column's name, or
    ``<column>_<i>`` for element i of a vector column; ``x<i>`` for arrays). The output holds
    the features of ``indices`` in the order given, then those of ``names``; at least one,
    none twice. input_cols, output_col ("sliced"): the Dataset columns.
    """

    def __init__(self, indices=None, names=None, *, input_cols=None, output_col="sliced"):
        self.indices = indices
        self.names = names
        self.input_cols = input_cols
        self.output_col = output_col

    def _fit(self, dm):
        indices = [] if self.indices is None else list(self.indices)
        names = [] if self.names is None else list(self.names)
        if not indices and not names:
            raise InvalidInputError("VectorSlicer selects nothing: give indices=[...] and/or names=[...]")
        d = dm.n_features
        bad = [i for i in indices if not isinstance(i, (int, np.integer)) or isinstance(i, bool)
               or not 0 <= i < d]
        if bad:
            raise InvalidInputError(f"VectorSlicer indices={indices}: {bad[0]!r} is not a position in "
                                    f"the {d} features (0 to {d - 1}).")
        known = self._feature_names()
        missing = [n for n in names if n not in known]
        if missing:
            raise InvalidInputError(f"VectorSlicer names={names}: {missing[0]!r} is not a feature name; "
                                    f"the features are {known[:20]}{' ...' if len(known) > 20 else ''}")
        picked = [int(i) for i in indices] + [known.index(n) for n in names]
        if len(set(picked)) != len(picked):
            raise InvalidInputError(f"VectorSlicer picks a feature twice (indices={indices}, names={names}); "
                                    f"name each feature once.")
        self.selected_ = np.asarray(picked, dtype=np.int64)

    def _n_out(self):
        return len(self.selected_)

    def _transform(self, X):
        return np.ascontiguousarray(X[:, self.selected_])

    def get_feature_names_out(self, input_features=None):
        """The names of the picked features, in output order."""
        check_fitted(self, "selected_")
        names = list(input_features) if input_features is not None else self._feature_names()
        return np.asarray([names[i] for i in self.selected_], dtype=object)


class ElementwiseProduct(_VectorTransformer):
    """Multiply every feature vector by ``scaling_vec`` element by element (the Hadamard product;
    Spark's ElementwiseProduct, ``scalingVec``). input_cols, output_col ("product")."""

    def __init__(self, scaling_vec=None, *, input_cols=None, output_col="product"):
        self.scaling_vec = scaling_vec
        self.input_cols = input_cols
        self.output_col = output_col

    def _check_params(self):
        if self.scaling_vec is None:
            raise InvalidInputError("ElementwiseProduct needs scaling_vec=[...], one factor per feature")
        v = np.asarray(self.scaling_vec, dtype=np.float64)
        if v.ndim != 1 or not np.isfinite(v).all():
            raise InvalidInputError(f"ElementwiseProduct scaling_vec must be a 1-D list of finite numbers, "
                                    f"got {self.scaling_vec!r}")
        return v

    def _fit(self, dm):
        v = self._check_params()
        if len(v) != dm.n_features:
            raise InvalidInputError(f"ElementwiseProduct scaling_vec has {len(v)} factors but the input has "
                                    f"{dm.n_features} features; give one factor per feature.")
        self.scaling_vec_ = v

    def _n_out(self):
        return len(self.scaling_vec_)

    def _transform(self, X):
        return X * self.scaling_vec_

    def get_feature_names_out(self, input_features=None):
        check_fitted(self, "scaling_vec_")
        return np.asarray(list(input_features) if input_features is not None else self._feature_names(),
                          dtype=object)


class DCT(_VectorTransformer):
    """The discrete cosine transform of each feature vector (Spark's DCT): DCT-II scaled to be
    orthonormal, ``scipy.fft.dct(x, type=2, norm="ortho")``; ``inverse=True`` gives its inverse
    (DCT-III, ``scipy.fft.idct(x, norm="ortho")``). input_cols, output_col ("dct")."""

    def __init__(self, *, inverse=False, input_cols=None, output_col="dct"):
        self.inverse = inverse
        self.input_cols = input_cols
        self.output_col = output_col

    def _check_params(self):
        if not isinstance(self.inverse, (bool, np.bool_)):
            raise InvalidInputError(f"DCT inverse={self.inverse!r} must be True or False")

    def _n_out(self):
        return self.n_features_in_

    def _transform(self, X):
        import scipy.fft
        fn = scipy.fft.idct if self.inverse else scipy.fft.dct
        return fn(X, type=2, norm="ortho", axis=1)

    def get_feature_names_out(self, input_features=None):
        check_fitted(self, "input_widths_")
        return np.asarray([f"dct{i}" for i in range(self.n_features_in_)], dtype=object)


class Interaction(_VectorTransformer):
    """The products of one feature from each input column, all combinations (Spark's Interaction).

    Input columns are numbers or vectors; the output has the product of their widths, the
    first column varying slowest: columns a = 2, v = [1, 2, 3], w = [8, 4, 5] give
    [16, 8, 10, 32, 16, 20, 48, 24, 30]. On an array each column is its own input column
    (the output is their product). String columns are not one-hot encoded here (Spark does
    so for nominal columns): encode them first (OneHotEncoder), or use RFormula's ``a:b``.
    input_cols, output_col ("interaction").
    """

    def __init__(self, *, input_cols=None, output_col="interaction"):
        self.input_cols = input_cols
        self.output_col = output_col

    def _n_out(self):
        return int(np.prod(self.input_widths_))

    def _transform(self, X):
        bounds = np.cumsum([0] + list(self.input_widths_))
        return row_kron([X[:, bounds[i]:bounds[i + 1]] for i in range(len(self.input_widths_))])

    def get_feature_names_out(self, input_features=None):
        check_fitted(self, "input_widths_")
        names = list(input_features) if input_features is not None else self._feature_names()
        bounds = np.cumsum([0] + list(self.input_widths_))
        groups = [names[bounds[i]:bounds[i + 1]] for i in range(len(self.input_widths_))]
        out = groups[0]
        for g in groups[1:]:
            out = [f"{a}:{b}" for a in out for b in g]
        return np.asarray(out, dtype=object)


class VectorIndexer(_VectorTransformer):
    """Find the categorical features of a vector and replace their values by category indices
    (Spark's VectorIndexer).

    A feature with at most ``max_categories`` distinct values (Spark's maxCategories, 20) is
    categorical: its values map to 0..k-1 in increasing order, except that 0.0, when present,
    always maps to 0 (keeping sparse vectors sparse), as Spark does. Other features pass
    unchanged. handle_invalid: a value not seen at fit in a categorical feature is an error
    ("error"), drops the row ("skip") or maps to index k ("keep"). input_cols, output_col
    ("indexed").

    Fitted: categorical_features_, category_values_ (the value of each index, per categorical
    feature), category_maps_ (Spark's categoryMaps, {feature: {value: index}}), num_features_. The distinct
    values are found per block and merged in a tree of tasks, a feature dropping out once it
    passes max_categories.
    """

    def __init__(self, max_categories=20, *, handle_invalid="error", input_cols=None,
                 output_col="indexed"):
        self.max_categories = max_categories
        self.handle_invalid = handle_invalid
        self.input_cols = input_cols
        self.output_col = output_col

    def _check_params(self):
        m = self.max_categories
        if not (isinstance(m, (int, np.integer)) and not isinstance(m, bool) and m >= 2):
            raise InvalidInputError(f"VectorIndexer max_categories={m!r} must be an int >= 2")
        if self.handle_invalid not in ("error", "skip", "keep"):
            raise InvalidInputError(f"VectorIndexer handle_invalid={self.handle_invalid!r} must be 'error', "
                                    f"'skip' or 'keep'")

    _persist_skip = ("_sorted",)

    def _fit(self, dm):
        values, _ = dm.map_reduce(block_distinct_capped, int(self.max_categories),
                                  reduce=merge_distinct_capped)
        cats, per = [], []
        for j, v in enumerate(values):
            if v is not None:
                cats.append(j)
                per.append(np.concatenate([[0.0], v[v != 0.0]]) if (v == 0.0).any() else v)
        self.categorical_features_ = np.asarray(cats, dtype=np.int64)
        self.category_values_ = per        # feature categorical_features_[i]: index k is value per[i][k]
        self.num_features_ = dm.n_features
        self._after_load()

    def _after_load(self):
        self._sorted = {}
        for j, v in zip(self.categorical_features_, self.category_values_):
            order = np.argsort(v, kind="stable")
            self._sorted[int(j)] = (np.asarray(v, dtype=np.float64)[order], order.astype(np.float64))

    @property
    def category_maps_(self):
        """Spark's categoryMaps: {feature index: {value: category index}} of the categorical features."""
        check_fitted(self, "category_values_")
        return {int(j): {float(x): i for i, x in enumerate(v)}
                for j, v in zip(self.categorical_features_, self.category_values_)}

    def _n_out(self):
        return self.num_features_

    def _tables(self):
        if not hasattr(self, "_sorted"):
            self._after_load()
        return self._sorted

    def _transform_rows(self, X):
        out = np.array(X, dtype=np.float64)
        keep = None
        names = self._feature_names()
        for j, (v, idx) in self._tables().items():
            col = X[:, j]
            pos = np.minimum(np.searchsorted(v, col), len(v) - 1)
            known = v[pos] == col
            out[:, j] = idx[pos]
            if not known.all():
                if self.handle_invalid == "error":
                    bad = float(col[~known][0])
                    raise InvalidInputError(
                        f"VectorIndexer: feature {names[j]!r} (index {j}) holds {bad!r}, a category not "
                        f"seen at fit; set handle_invalid='keep' or 'skip', or refit on data holding it.")
                out[~known, j] = len(v)
                if self.handle_invalid == "skip":
                    keep = known if keep is None else keep & known
        return out, keep

    def get_feature_names_out(self, input_features=None):
        check_fitted(self, "category_values_")
        return np.asarray(list(input_features) if input_features is not None else self._feature_names(),
                          dtype=object)
