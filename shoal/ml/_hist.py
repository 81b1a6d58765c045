"""Quantile binning of shoal's tree models: the bin edges, and each row's bin codes.

Every feature is cut into at most ``max_bins`` bins once, from a sample of rows
drawn across all blocks (as Spark, LightGBM and scikit-learn's
HistGradientBoosting do); each block is then stored as a uint8 matrix. A split
"bin <= b goes left" is the same as "x <= edges[f, b] goes left" on raw data,
so fitted trees predict on float input without binning it.

The histograms that trees are grown from are summed over these codes by the
compiled kernels in ``_tree_kernels``.
"""
from __future__ import annotations

import numpy as np

MAX_BINS_LIMIT = 256          # bins are stored as uint8


RANDOM_CHUNK_ROWS = 1 << 16     # random draws are made per chunk of global rows


def sample_block_rows(X, y, block_index: int, offsets: np.ndarray, sample: np.ndarray) -> np.ndarray:
    """The rows of one block whose global index is in ``sample`` (sorted), for the bin edges,
    feature-major (n_features, rows): the edges sort each feature's values."""
    lo, hi = offsets[block_index], offsets[block_index + 1]
    a, b = np.searchsorted(sample, [lo, hi])
    return np.ascontiguousarray(np.asarray(X)[sample[a:b] - lo].T)


def row_randoms(draw, key: list, offset: int, n: int) -> np.ndarray:
    """Per-row random values for global rows [offset, offset + n), independent of block layout.

    ``draw(rng, size)`` is called on chunks of ``RANDOM_CHUNK_ROWS`` global rows, each with a
    generator seeded by (key, chunk), so any split of the rows into blocks sees the same values.
    """
    first, last = offset // RANDOM_CHUNK_ROWS, (offset + n - 1) // RANDOM_CHUNK_ROWS
    parts = [draw(np.random.default_rng(list(key) + [c]), RANDOM_CHUNK_ROWS)
             for c in range(first, last + 1)]
    start = offset - first * RANDOM_CHUNK_ROWS
    return np.concatenate(parts)[start:start + n]


def bin_edges(sample: np.ndarray, max_bins: int, feature_major: bool = False) -> np.ndarray:
    """Split points per feature, shape (n_features, max_bins - 1), padded with +inf.

    A feature with at most ``max_bins`` distinct values gets the midpoints between
    them (every value its own bin); otherwise the edges are quantiles of the sample.
    sample: (rows, n_features), or (n_features, rows) with ``feature_major``.
    """
    n_features = sample.shape[0 if feature_major else 1]
    edges = np.full((n_features, max_bins - 1), np.inf)
    qs = np.linspace(0.0, 1.0, max_bins + 1)[1:-1]
    cols = np.sort(sample if feature_major else np.ascontiguousarray(sample.T), axis=1)
    for f in range(n_features):
        col = cols[f]
        distinct = col[np.concatenate(([True], col[1:] != col[:-1]))]
        if distinct.size <= max_bins:
            cut = (distinct[:-1] + distinct[1:]) / 2.0
        else:
            cut = np.unique(_sorted_quantiles(col, qs))
            cut = cut[cut < distinct[-1]]   # an edge at the maximum would leave the last bin empty
        edges[f, :cut.size] = cut
    return edges


def _sorted_quantiles(col: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """``np.quantile(col, qs, method="linear")`` of a sorted column, read off it directly:
    np.quantile would partition the column again, which costs more than the sort."""
    at = qs * (col.shape[0] - 1)
    lo = np.floor(at).astype(np.int64)
    hi = np.minimum(lo + 1, col.shape[0] - 1)
    t = at - lo
    a, b = col[lo], col[hi]
    diff = b - a
    out = a + diff * t           # numpy's interpolation, so the same values
    np.subtract(b, diff * (1.0 - t), out=out, where=t >= 0.5)
    return out


def bin_matrix(X: np.ndarray, edges: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Bin codes of X, row-major: uint8 of shape (n, n_features).

    The code of x is the number of edges below it (``searchsorted(edges, x, "left")``),
    counted by a compiled kernel (``_tree_kernels.bin_rows``). X must be finite (fit input
    is validated).
    """
    from shoal.ml._tree_kernels import bin_rows
    X = np.ascontiguousarray(X, dtype=np.float64)
    if out is None:
        out = np.empty(X.shape, dtype=np.uint8)
    bin_rows(X, np.ascontiguousarray(edges, dtype=np.float64), out)
    return out
