"""PowerIterationClustering: Lin and Cohen's power iteration clustering (Spark's), W v over edge blocks."""
from __future__ import annotations

import numpy as np

from shoal.exceptions import InvalidInputError
from shoal.ml._executor import held_by_shards
from shoal.ml._input import as_design_matrix, is_table
from shoal.ml.clustering import _kernels as K

INIT_MODES = ("random", "degree")


class PowerIterationClustering:
    """Cluster the vertices of a similarity graph by power iteration (Spark's
    PowerIterationClustering; Lin and Cohen, ICML 2010).

    The similarities are edges (src, dst, weight): weight s_ij >= 0, symmetric (give each
    pair once, either way round; a pair given both ways adds up, and self loops are
    ignored, as in Spark). With W the similarities normalised by each vertex's degree,
    ``v <- W v / |W v|_1`` is iterated from a random or degree-proportional start until
    its change stops changing (``max_iter`` at most); the vertices' values in v are then
    clustered by k-means. The edges stay in blocks (tasks or shard actors); each
    iteration sends v to them and adds up their shares of W v.

    Parameters (Spark's names in snake case): k, max_iter, init_mode ("random" or
    "degree"), src_col, dst_col, weight_col (None: every edge weighs 1), random_state.

    As in Spark, it is not an estimator: ``assign_clusters(X)`` takes a shoal.data Dataset,
    a pandas/Polars DataFrame or Arrow Table with the edge columns, or an array of
    (src, dst[, weight]) rows with integer vertex ids (up to 2**53), and returns a pandas DataFrame
    (``id``, ``cluster``) sorted by id.
    """

    def __init__(self, k=2, *, max_iter=20, init_mode="random", src_col="src", dst_col="dst",
                 weight_col=None, random_state=None):
        self.k = k
        self.max_iter = max_iter
        self.init_mode = init_mode
        self.src_col = src_col
        self.dst_col = dst_col
        self.weight_col = weight_col
        self.random_state = random_state

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"PowerIterationClustering({args})"

    def _check_params(self):
        for name in ("k", "max_iter"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise InvalidInputError(f"PowerIterationClustering {name}={v!r} must be a positive int")
        if self.init_mode not in INIT_MODES:
            raise InvalidInputError(f"PowerIterationClustering init_mode={self.init_mode!r} must be one "
                                    f"of {INIT_MODES}")

    def _edges(self, X):
        cols = [self.src_col, self.dst_col] + ([self.weight_col] if self.weight_col else [])
        if is_table(X):
            return as_design_matrix(X, features=cols, estimator=self)
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] not in (2, 3):
            raise InvalidInputError(f"PowerIterationClustering.assign_clusters(X): X must be (n, 2) or "
                                    f"(n, 3) rows of (src, dst[, weight]), got shape {X.shape}; or give "
                                    f"a table with src_col/dst_col/weight_col columns")
        return as_design_matrix(X, estimator=self)

    def assign_clusters(self, X):
        """The cluster of every vertex of the similarity graph X: a pandas DataFrame (id, cluster)."""
        import pandas as pd
        from shoal.ml._kmeans import KMeans
        self._check_params()
        dm = self._edges(X)
        who = "PowerIterationClustering"
        ids = np.unique(np.concatenate(dm.map(K.edge_vertices)))
        if np.any(ids != np.round(ids)) or (len(ids) and np.abs(ids).max() > 2.0 ** 53):
            raise InvalidInputError(f"{who}: vertex ids in {self.src_col!r}/{self.dst_col!r} must be "
                                    f"integers (of at most 2**53 in size)")
        n = len(ids)
        if n < self.k:
            raise InvalidInputError(f"{who}: the graph has {n} vertices, fewer than k={self.k}")
        dm = dm.map_blocks(K.edges_to_indices, ids)
        with held_by_shards(dm) as held:
            degree = held.map_reduce(K.edge_degrees, n)
            if self.weight_col and (held.map_reduce(K.negative_weights) > 0):
                raise InvalidInputError(f"{who}: similarities in {self.weight_col!r} must be >= 0 "
                                        f"(Spark's rule); found a negative one")
            rng = np.random.default_rng(self.random_state)
            v = degree.copy() if self.init_mode == "degree" else rng.normal(size=n)
            v /= np.abs(v).sum()
            inv_degree = np.divide(1.0, degree, out=np.zeros(n), where=degree > 0)
            tol = max(1e-5 / n, 1e-8)
            delta = 0.0
            for _ in range(self.max_iter):
                w = held.map_reduce(K.edge_multiply, v) * inv_degree
                w /= max(np.abs(w).sum(), np.finfo(float).tiny)
                new_delta = float(np.abs(w - v).sum())
                v, prev, delta = w, delta, new_delta
                if abs(delta - prev) < tol:
                    break
        km = KMeans(self.k, random_state=0 if self.random_state is None else self.random_state)
        labels = km.fit(v[:, None]).labels_
        return pd.DataFrame({"id": ids.astype(np.int64), "cluster": labels.astype(np.int32)})

