"""Quantile binning and per-node histograms: the vectorized kernels of shoal's tree models.

Every feature is cut into at most ``max_bins`` bins once, from a sample of rows
drawn across all blocks (as Spark, LightGBM and scikit-learn's
HistGradientBoosting do); each block is then stored as a uint8 matrix. A split
"bin <= b goes left" is the same as "x <= edges[f, b] goes left" on raw data,
so fitted trees predict on float input without binning it.

A histogram holds, for each (frontier node, feature, bin), the sums of a few
per-row statistics (class counts, gradients, hessians). Per feature and
statistic it is one ``np.bincount`` over flat indices ``(node * B + bin) * C + class``,
over chunks of rows so memory stays bounded; bins are kept feature-major so
each feature's gather is a contiguous 1-D take.
"""
from __future__ import annotations

import numpy as np

MAX_BINS_LIMIT = 256          # bins are stored as uint8
_ROW_CHUNK = 1 << 16          # rows per bincount pass: ~10 MB of indices for 20 features


RANDOM_CHUNK_ROWS = 1 << 16     # random draws are made per chunk of global rows


def sample_block_rows(X, y, block_index: int, offsets: np.ndarray, sample: np.ndarray) -> np.ndarray:
    """The rows of one block whose global index is in ``sample`` (sorted), for the bin edges."""
    lo, hi = offsets[block_index], offsets[block_index + 1]
    a, b = np.searchsorted(sample, [lo, hi])
    return np.asarray(X)[sample[a:b] - lo]


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


def bin_edges(sample: np.ndarray, max_bins: int) -> np.ndarray:
    """Split points per feature, shape (n_features, max_bins - 1), padded with +inf.

    A feature with at most ``max_bins`` distinct values gets the midpoints between
    them (every value its own bin); otherwise the edges are quantiles of the sample.
    """
    n_features = sample.shape[1]
    edges = np.full((n_features, max_bins - 1), np.inf)
    qs = np.linspace(0.0, 1.0, max_bins + 1)[1:-1]
    for f in range(n_features):  # one sort per feature, vectorized within
        col = np.sort(sample[:, f])
        distinct = col[np.concatenate(([True], col[1:] != col[:-1]))]
        if distinct.size <= max_bins:
            cut = (distinct[:-1] + distinct[1:]) / 2.0
        else:
            cut = np.unique(np.quantile(col, qs, method="linear"))
            cut = cut[cut < distinct[-1]]   # an edge at the maximum would leave the last bin empty
        edges[f, :cut.size] = cut
    return edges


def bin_matrix(X: np.ndarray, edges: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Bin codes of X, feature-major: uint8 of shape (n_features, n).

    The code of x is the number of edges below it (``searchsorted(edges, x, "left")``),
    counted as a sum of comparisons: with at most 255 edges, one vectorized compare
    and add per edge over a cache-sized chunk of rows beats a binary search per value
    about threefold. X must be finite (fit input is validated).
    """
    n, d = X.shape
    if out is None:
        out = np.empty((d, n), dtype=np.uint8)
    n_edges = np.isfinite(edges).sum(axis=1)      # edges are sorted, +inf padded
    chunk = min(n, _BIN_CHUNK) or 1
    below = np.empty(chunk, dtype=bool)
    for s in range(0, n, chunk):
        XT = np.ascontiguousarray(X[s:s + chunk].T)    # (d, rows): each feature contiguous
        m = XT.shape[1]
        for f in range(d):
            o = out[f, s:s + m]
            o[:] = 0
            col, b = XT[f], below[:m]
            for e in edges[f, :n_edges[f]]:
                np.greater(col, e, out=b)
                o += b
    return out


_BIN_CHUNK = 1 << 14


def histograms(XbT: np.ndarray, rows: np.ndarray, slot: np.ndarray, n_slots: int, n_bins: int,
               channels: list, codes: np.ndarray | None = None, n_classes: int = 1,
               feats: np.ndarray | None = None) -> np.ndarray:
    """Per-(slot, feature, bin) sums of each channel over the given rows.

    XbT: uint8 bins, feature-major (n_features, n_total): one feature's column is
    contiguous, so gathering it for a set of rows is a fast 1-D take. rows: indices
    into the columns; slot: each row's frontier slot in [0, n_slots). channels:
    per-row weight arrays aligned with rows (``None`` means a count, weight 1).
    codes: per-row class codes folded into the index (one bincount covers every
    class). feats: (n_slots, k) feature ids per slot (random forests); None means
    every feature.
    Returns float64 (n_slots, k, n_bins, len(channels) * n_classes), statistics in
    the order (channel, class).
    """
    n_features, n_total = XbT.shape
    k = n_features if feats is None else feats.shape[1]
    per_slot = n_bins * n_classes
    width = n_slots * per_slot                       # one feature's histogram, all slots
    out = np.zeros((len(channels), k, width))
    itype = np.int64 if n_features * n_total >= 2**31 or width >= 2**31 else np.int32
    flat = XbT.reshape(-1)
    every_row = rows.shape[0] == n_total       # distinct indices: rows is arange(n_total)
    feat_cols = None if feats is None else feats.astype(itype) * n_total
    for start in range(0, rows.shape[0], _ROW_CHUNK):
        r = rows[start:start + _ROW_CHUNK].astype(itype, copy=False)
        s = slot[start:start + _ROW_CHUNK].astype(itype, copy=False)
        base = s * per_slot
        if n_classes > 1:
            base += codes[start:start + _ROW_CHUNK]
        chans = [None if ch is None else ch[start:start + _ROW_CHUNK] for ch in channels]
        for j in range(k):                           # one contiguous 1-D pass per feature
            if feats is None:
                b = XbT[j, start:start + _ROW_CHUNK] if every_row else XbT[j].take(r)
            else:
                col = feat_cols[:, j].take(s)
                col += r
                b = flat.take(col)
            if n_classes > 1:
                idx = np.multiply(b, n_classes, dtype=itype)
                idx += base
            else:
                idx = np.add(base, b, dtype=itype)
            for c, ch in enumerate(chans):
                out[c, j] += np.bincount(idx, ch, minlength=width)
    out = out.reshape(len(channels), k, n_slots, n_bins, n_classes)
    return np.ascontiguousarray(out.transpose(2, 1, 3, 0, 4)).reshape(
        n_slots, k, n_bins, len(channels) * n_classes)
