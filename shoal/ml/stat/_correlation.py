"""Correlation: Pearson and Spearman correlation matrices over per-block moments (Spark's Correlation)."""
from __future__ import annotations

import numpy as np

from shoal.exceptions import InvalidInputError
from shoal.ml._input import as_design_matrix
from shoal.ml.stat import _kernels as K

METHODS = ("pearson", "spearman")


def _rank_tables(dm):
    """Per column: its sorted distinct values and their average ranks over all rows."""
    parts = dm.map(K.distinct_counts)
    tables = []
    for j in range(dm.n_features):
        values = np.concatenate([p[j][0] for p in parts])
        counts = np.concatenate([p[j][1] for p in parts])
        values, inv = np.unique(values, return_inverse=True)
        counts = np.bincount(inv, weights=counts, minlength=len(values))
        before = np.cumsum(counts) - counts
        tables.append((values, before + (counts + 1) / 2.0))
    return tables


class Correlation:
    """The correlation matrix of a set of columns (Spark's ``Correlation.corr``).

    ``Correlation.corr(X, features=None, method="pearson")``: X a shoal.data Dataset, a
    pandas/Polars DataFrame, an Arrow Table (``features=`` the columns, or one vector
    column; default every column) or a 2-D array. Pearson: one pass of per-block means
    and centred cross products, merged pairwise. Spearman: the Pearson correlation of the
    columns' average ranks (ties share their mean rank, as Spark and SciPy); one pass
    counts each column's distinct values, the ranks are assigned block by block where
    the blocks live. Returns a (d, d) ndarray; a constant column gives NaN, as in Spark.
    """

    @staticmethod
    def corr(X, features=None, method="pearson"):
        """The (d, d) correlation matrix of X's feature columns by ``method``."""
        if method not in METHODS:
            raise InvalidInputError(f"Correlation method={method!r} must be one of {METHODS}")
        if isinstance(features, str):
            features = [features]
        dm = as_design_matrix(X, features=features, estimator="Correlation", min_samples=2)
        if method == "spearman":
            dm = dm.map_blocks(K.to_ranks, _rank_tables(dm))
        _, _, C = dm.map_reduce(K.moments, reduce=K.merge_moments)
        sd = np.sqrt(np.diag(C))
        with np.errstate(invalid="ignore", divide="ignore"):
            R = C / np.outer(sd, sd)
        R = np.clip(R, -1.0, 1.0)
        np.fill_diagonal(R, np.where(sd > 0, 1.0, np.nan))
        return R
