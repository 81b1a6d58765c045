"""Summarizer: column statistics in one pass over the blocks (Spark's Summarizer)."""
from __future__ import annotations

import numpy as np

from shoal.exceptions import InvalidInputError
from shoal.ml._input import as_design_matrix
from shoal.ml.stat import _kernels as K

METRICS = ("mean", "sum", "variance", "std", "count", "num_nonzeros", "max", "min", "norm_l2",
           "norm_l1")


class Summarizer:
    """Per-column statistics (Spark's ``Summarizer``; its metric names in snake case):
    mean, sum, variance (unbiased, as Spark), std, count, num_nonzeros, max, min, norm_l2,
    norm_l1.

    ``Summarizer.summary(X, metrics=METRICS, features=None)``: X a shoal.data Dataset, a
    pandas/Polars DataFrame or Arrow Table (``features=`` the columns, or one vector column)
    or a 2-D array. One pass: each block's counts, means and centred sums of squares, minima,
    maxima and norms, merged pairwise. Returns a dict metric -> ndarray (one value per
    column; count is an int).
    """

    @staticmethod
    def summary(X, metrics=METRICS, features=None) -> dict:
        """The requested metrics of X's feature columns."""
        metrics = [metrics] if isinstance(metrics, str) else list(metrics)
        bad = [m for m in metrics if m not in METRICS]
        if bad or not metrics:
            raise InvalidInputError(f"Summarizer metrics {bad or metrics!r} are not among {list(METRICS)}")
        if isinstance(features, str):
            features = [features]
        dm = as_design_matrix(X, features=features, estimator="Summarizer")
        n, mean, m2, lo, hi, nnz, l1, sq = dm.map_reduce(K.summary, reduce=K.merge_summary)
        var = m2 / (n - 1) if n > 1 else np.zeros_like(m2)
        values = {"mean": mean, "sum": mean * n, "variance": var, "std": np.sqrt(var), "count": int(n),
                  "num_nonzeros": nnz, "max": hi, "min": lo, "norm_l2": np.sqrt(sq), "norm_l1": l1}
        return {m: values[m] for m in metrics}
