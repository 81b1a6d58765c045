"""Locality-sensitive hashing: MinHashLSH (Jaccard distance) and BucketedRandomProjectionLSH
(Euclidean distance), Spark's models with Spark's API in snake case.

``fit`` learns the hash functions (random, from ``seed``); ``transform`` adds the hash column
(one value per hash table); ``approx_nearest_neighbors(dataset, key, k)`` and
``approx_similarity_join(dataset_a, dataset_b, threshold)`` find close rows by their hashes:

- nearest neighbours: one task per block keeps its rows that share a bucket with the key in
  some hash table (Spark's single probe), at most k of them, nearest first; the driver
  merges those k-row lists. Fewer than k rows come back when fewer collide with the key, as
  in Spark.
- similarity join: one task per block hashes it (the hash matrices stay in the object
  store), then one task per pair of blocks (a of dataset_a, b of dataset_b) matches their
  hash values table by table (a sort-merge join), drops repeated pairs, computes the exact
  distance and keeps the pairs closer than the threshold. Every pair of rows belongs to
  exactly one pair of blocks, so no pair is found twice and the output blocks stay in the
  object store as a Dataset.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, TransformerMixin

from shoal.exceptions import InvalidInputError
from shoal.ml import _lsh_kernels as K
from shoal.ml._base import ShoalEstimatorMixin, check_fitted
from shoal.ml._columns import as_frame, is_table, resolve_fit_columns
from shoal.ml._executor import _dataset_block_refs, _is_dataset, _shoal_core
from shoal.ml._input import dense_to_vectors


def _as_arrow(X, who):
    """An in-memory table (pandas, Polars, Arrow) as a pyarrow Table."""
    import pyarrow as pa
    if hasattr(X, "column_names") and hasattr(X, "schema"):
        return X
    frame = as_frame(X)
    if not hasattr(frame, "columns"):
        raise InvalidInputError(f"{who} takes a shoal.data Dataset, a pandas/Polars DataFrame or an "
                                f"Arrow Table with a vector column, got {type(X).__name__}")
    table = pa.Table.from_pandas(frame, preserve_index=False)
    return table


def _array_table(X, column, estimator, method="fit"):
    """A 2-D array or SciPy sparse matrix as a one-column Arrow table of vectors (validated
    as scikit-learn validates X; at transform time against the fitted width)."""
    import pyarrow as pa

    from shoal.ml._input import _to_float_matrix, check_predict_input, csr_to_sparse_vectors
    if sp.issparse(X):
        X = sp.csr_matrix(X, dtype=np.float64)
        width = getattr(estimator, "n_features_in_", None)
        if method != "fit" and width is not None and X.shape[1] != width:
            raise InvalidInputError(f"X has {X.shape[1]} features, but {type(estimator).__name__} is "
                                    f"expecting {width} features as input (argument X of {method}())")
        return pa.table({column: csr_to_sparse_vectors(X)})
    if method == "fit":
        X = _to_float_matrix(X, "X", estimator)
        if X.shape[0] == 0 or X.shape[1] == 0:
            raise InvalidInputError(f"Found array with {X.shape[0]} sample(s) and {X.shape[1]} feature(s) "
                                    f"(shape={X.shape}) while a minimum of 1 is required by "
                                    f"{type(estimator).__name__}.")
    else:
        X = check_predict_input(estimator, X, method)
    return pa.table({column: dense_to_vectors(X)})


def _check_int(who, name, value, low=1):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
        raise InvalidInputError(f"{who} {name}={value!r} must be an int >= {low}")


class _LSH(ShoalEstimatorMixin, TransformerMixin, BaseEstimator):
    """What both LSH models share (see the module docstring)."""

    def _column(self) -> str:
        return getattr(self, "input_col_", self.input_col)

    def _dataset_columns_io(self):
        return [self._column()], [self.output_col]

    def _own_input_columns(self):
        return None

    def fit(self, X, y=None, *, features=None, label=None):
        """Learn the hash functions for the vectors of ``input_col`` (or the one column that
        features= names); X may also be a 2-D array or SciPy sparse matrix. Returns self."""
        who = type(self).__name__
        self._check_params()
        if X is not None and is_table(X):
            _, features, _ = resolve_fit_columns(X, y, features=features, label=label, estimator=self)
        if features is not None:
            if len(features) != 1:
                raise InvalidInputError(f"{who} reads one vector column, but features= names "
                                        f"{len(features)}: {features}; pass one column.")
            self.input_col_ = features[0]
        elif hasattr(self, "input_col_"):
            del self.input_col_
        column = self._column()
        if _is_dataset(X):
            X = X.materialize()
            parts = _map_blocks(X, K.block_width, column, who)
            n = sum(p[0] for p in parts)
            width = max((p[1] for p in parts), default=0)
        else:
            table = _as_arrow(X, who) if is_table(X) else _array_table(X, column, self)
            n, width = K.block_width(table, column, who)
        if n == 0 or width == 0:
            raise InvalidInputError(f"{who}.fit() got no vectors in column {column!r} ({n} rows of "
                                    f"width {width})")
        self.n_features_in_ = int(width)
        self._make_hash_functions(np.random.default_rng(self.seed))
        return self

    def _spec(self):
        raise NotImplementedError

    def _input_table(self, X, what):
        """(Arrow table, "dataset" | "pandas" | "arrow" | "array") of a non-Dataset input."""
        if is_table(X):
            kind = "arrow" if hasattr(X, "column_names") else "pandas"
            return _as_arrow(X, f"{type(self).__name__}.{what}"), kind
        return _array_table(X, self._column(), self, what), "array"

    def transform(self, X):
        """The hashes of ``input_col``: a Dataset or table gets ``output_col`` (a vector of
        num_hash_tables values per row: Spark's array of one-value vectors); an array gives
        the (n, num_hash_tables) hash matrix."""
        check_fitted(self, "n_features_in_")
        args = (self._column(), self.output_col, self._spec(), self.n_features_in_, type(self).__name__)
        if _is_dataset(X):
            return X.map_batches(K.hash_table, batch_format="pyarrow", fn_args=args)
        table, kind = self._input_table(X, "transform")
        if kind == "array":
            return K.hashes(K.block_vectors(table, args[0], args[4], args[3]), args[2], args[0])
        return _returned(K.hash_table(table, *args), kind)

    def approx_nearest_neighbors(self, dataset, key, num_nearest_neighbors, dist_col="distCol"):
        """The at most ``num_nearest_neighbors`` rows of ``dataset`` nearest to ``key`` among
        those that share a bucket with it in some hash table, nearest first, with the hash
        column and ``dist_col`` added (Spark's approxNearestNeighbors). ``dataset``: a shoal.data
        Dataset (gives a Dataset), a pandas DataFrame or an Arrow Table (the same kind back)."""
        check_fitted(self, "n_features_in_")
        who = f"{type(self).__name__}.approx_nearest_neighbors()"
        _check_int(who, "num_nearest_neighbors", num_nearest_neighbors)
        key = self._key(key, who)
        key_hash = K.hashes(key, self._spec(), "key")[0]
        args = (self._column(), self.output_col, self._spec(), self.n_features_in_, who, key, key_hash,
                int(num_nearest_neighbors), dist_col)
        if _is_dataset(dataset):
            parts, kind = _map_blocks(dataset, K.probe_block, *args), "dataset"
        else:
            table, kind = self._input_table(dataset, "approx_nearest_neighbors")
            parts = [K.probe_block(table, *args)]
        import pyarrow as pa
        merged = pa.concat_tables(parts, promote_options="default") if parts else None
        if merged is None:
            raise InvalidInputError(f"{who} got an empty dataset")
        order = np.argsort(merged.column(dist_col).to_numpy(), kind="stable")[:int(num_nearest_neighbors)]
        return _returned(merged.take(pa.array(order, pa.int64())), kind)

    def approx_similarity_join(self, dataset_a, dataset_b, threshold, dist_col="distCol"):
        """The pairs of rows, one of each dataset, that share a bucket in some hash table and
        whose distance is below ``threshold``: columns ``datasetA`` and ``datasetB`` (the
        rows, as structs) and ``dist_col`` (Spark's approxSimilarityJoin). Two Datasets give a
        Dataset, computed block pair by block pair as tasks; pandas/Arrow tables give the same
        kind back."""
        check_fitted(self, "n_features_in_")
        who = f"{type(self).__name__}.approx_similarity_join()"
        if not (np.isscalar(threshold) and not isinstance(threshold, (str, bool))
                and np.isfinite(threshold) and threshold >= 0):
            raise InvalidInputError(f"{who} threshold={threshold!r} must be a finite number >= 0")
        if not isinstance(dist_col, str) or dist_col in ("datasetA", "datasetB"):
            raise InvalidInputError(f"{who} dist_col={dist_col!r} must be a column name other than "
                                    f"datasetA and datasetB")
        spec, width, column = self._spec(), self.n_features_in_, self._column()
        if _is_dataset(dataset_a) != _is_dataset(dataset_b):
            raise InvalidInputError(f"{who} takes two shoal.data Datasets or two in-memory tables, got "
                                    f"{type(dataset_a).__name__} and {type(dataset_b).__name__}")
        if not _is_dataset(dataset_a):
            table_a, kind = self._input_table(dataset_a, "approx_similarity_join")
            table_b, _ = self._input_table(dataset_b, "approx_similarity_join")
            HA = K.block_hashes(table_a, column, spec, width, f"{who} (dataset_a)")
            HB = K.block_hashes(table_b, column, spec, width, f"{who} (dataset_b)")
            return _returned(K.join_blocks(table_a, table_b, HA, HB, column, spec, width, float(threshold),
                                           dist_col), kind)
        import shoal.data as sd
        core = _shoal_core()
        refs_a = _dataset_block_refs(dataset_a.materialize())
        refs_b = _dataset_block_refs(dataset_b.materialize())
        hash_task, join_task = core.remote(K.block_hashes), core.remote(K.join_blocks)
        ha = [hash_task.remote(r, column, spec, width, f"{who} (dataset_a)") for r in refs_a]
        hb = [hash_task.remote(r, column, spec, width, f"{who} (dataset_b)") for r in refs_b]
        out = [join_task.remote(ra, rb, a, b, column, spec, width, float(threshold), dist_col)
               for ra, a in zip(refs_a, ha) for rb, b in zip(refs_b, hb)]
        return sd.from_block_refs(out)     # reads each block's metadata: a failed task raises here

    def _key(self, key, who):
        """The key as a 1-row matrix of the fitted width."""
        if sp.issparse(key):
            key = sp.csr_matrix(key, dtype=np.float64)
        else:
            key = np.asarray(key, dtype=np.float64).reshape(1, -1)
            if not np.isfinite(key).all():
                raise InvalidInputError(f"{who}: the key holds NaN or infinity")
        if key.shape != (1, self.n_features_in_):
            raise InvalidInputError(f"{who}: the key has {key.shape[-1]} entries, but the model was "
                                    f"fitted on vectors of {self.n_features_in_}")
        return key

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags


def _map_blocks(ds, fn, *args):
    from shoal.ml._executor import map_dataset_blocks
    return map_dataset_blocks(ds, fn, *args)


def _returned(table, kind):
    import shoal.data as sd
    if kind == "dataset":
        return sd.from_arrow(table)
    return table.to_pandas() if kind == "pandas" else table


class MinHashLSH(_LSH):
    """MinHash for the Jaccard distance of sets (Spark's MinHashLSH): a row is the set of the
    non-zero indices of its vector (binary vectors; every row needs at least one).

    Each hash table t has h_t(x) = min over x's non-zero indices j of ((1 + j) a_t + b_t)
    mod 2038074743 with random a_t, b_t (Spark's formula and prime). Parameters:
    num_hash_tables (1; more tables find more of the close pairs, OR-amplification), seed,
    input_col ("features"; a sparse or dense vector column) and output_col ("hashes").
    Fitted: coefficients_ ((num_hash_tables, 2): a_t, b_t), n_features_in_ (the width).
    """

    def __init__(self, *, num_hash_tables=1, seed=None, input_col="features", output_col="hashes"):
        self.num_hash_tables = num_hash_tables
        self.seed = seed
        self.input_col = input_col
        self.output_col = output_col

    def _check_params(self):
        _check_int("MinHashLSH", "num_hash_tables", self.num_hash_tables)

    def _make_hash_functions(self, rng):
        if self.n_features_in_ >= K.HASH_PRIME:
            raise InvalidInputError(f"MinHashLSH takes vectors of fewer than {K.HASH_PRIME} entries, "
                                    f"got {self.n_features_in_}")
        L = int(self.num_hash_tables)
        self.coefficients_ = np.column_stack([rng.integers(1, K.HASH_PRIME, L),
                                              rng.integers(0, K.HASH_PRIME - 1, L)]).astype(np.int64)

    def _spec(self):
        return ("minhash", self.coefficients_[:, 0], self.coefficients_[:, 1])


class BucketedRandomProjectionLSH(_LSH):
    """Bucketed random projections for the Euclidean distance (Spark's
    BucketedRandomProjectionLSH): h_t(x) = floor(x . r_t / bucket_length) for random unit
    vectors r_t.

    Parameters: bucket_length (required, > 0: larger buckets put more pairs together;
    about the distance of interest is a good start), num_hash_tables (1), seed, input_col
    ("features"; a dense or sparse vector column) and output_col ("hashes"). Fitted:
    rand_unit_vectors_ ((num_hash_tables, n_features_in_)).
    """

    def __init__(self, bucket_length=None, *, num_hash_tables=1, seed=None, input_col="features",
                 output_col="hashes"):
        self.bucket_length = bucket_length
        self.num_hash_tables = num_hash_tables
        self.seed = seed
        self.input_col = input_col
        self.output_col = output_col

    def _check_params(self):
        _check_int("BucketedRandomProjectionLSH", "num_hash_tables", self.num_hash_tables)
        b = self.bucket_length
        if b is None or not (np.isscalar(b) and not isinstance(b, (str, bool)) and np.isfinite(b) and b > 0):
            raise InvalidInputError(f"BucketedRandomProjectionLSH bucket_length={b!r} must be a number "
                                    f"> 0 (Spark requires it too); try about the distance of interest")

    def _make_hash_functions(self, rng):
        R = rng.standard_normal((int(self.num_hash_tables), self.n_features_in_))
        self.rand_unit_vectors_ = R / np.linalg.norm(R, axis=1, keepdims=True)

    def _spec(self):
        return ("brp", self.rand_unit_vectors_, float(self.bucket_length))
