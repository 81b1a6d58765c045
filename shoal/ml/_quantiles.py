"""A mergeable per-column quantile sketch: each block contributes at most SKETCH_SIZE weighted points.

Exact while a block has at most SKETCH_SIZE rows (the merged sketch then holds every value);
beyond that each point stands for an equal share of its block's ranks (rank error ~ 1/SKETCH_SIZE,
Spark's approxQuantile default is 0.001). NaN entries are ignored.
"""
from __future__ import annotations

import numpy as np

SKETCH_SIZE = 1024


def block_sketch(X, y=None):
    """(values (m x d), weights (m x d), exact) summarising the non-NaN values of each column."""
    S = np.sort(X, axis=0)                       # NaN sort last
    counts = (~np.isnan(X)).sum(axis=0)
    n = X.shape[0]
    if n <= SKETCH_SIZE:
        return S, (~np.isnan(S)).astype(np.float64), True
    m = SKETCH_SIZE
    idx = np.floor((np.arange(m)[:, None] + 0.5) * counts[None, :] / m).astype(np.int64)
    idx = np.minimum(idx, np.maximum(counts - 1, 0)[None, :])
    values = np.take_along_axis(S, idx, axis=0)
    weights = np.broadcast_to(counts / m, (m, X.shape[1])).copy()
    weights[:, counts == 0] = 0.0
    return values, weights, False


def merge_sketches(a, b):
    return np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]]), a[2] and b[2]


def sketch_quantiles(sketch, q):
    """Quantile(s) ``q`` of each column: shape (d,) for a scalar q, (len(q), d) otherwise.

    An exact sketch interpolates linearly (NumPy's default, so medians match np.median);
    an approximate one returns the first point whose cumulative weight reaches q.
    Columns without values give NaN.
    """
    values, weights, exact = sketch
    qs = np.atleast_1d(np.asarray(q, dtype=np.float64))
    out = np.full((len(qs), values.shape[1]), np.nan)
    for j in range(values.shape[1]):
        keep = weights[:, j] > 0
        v = values[keep, j]
        if v.size == 0:
            continue
        if exact:
            out[:, j] = np.quantile(v, qs)
            continue
        order = np.argsort(v, kind="stable")
        v, w = v[order], weights[keep, j][order]
        cum = np.cumsum(w)
        pos = np.searchsorted(cum, qs * cum[-1], side="left")
        out[:, j] = v[np.minimum(pos, len(v) - 1)]
    return out[0] if np.ndim(q) == 0 else out
