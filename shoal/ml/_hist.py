"""Quantile binning and per-node histograms: the vectorized kernels of shoal's tree models.

Every feature is cut into at most ``max_bins`` bins once, from a sample of rows
drawn across all blocks (as Spark, LightGBM and scikit-learn's
HistGradientBoosting do); each block is then stored as a uint8 matrix. A split
"bin <= b goes left" is the same as "x <= edges[f, b] goes left" on raw data,
so fitted trees predict on float input without binning it.

A histogram holds, for each (frontier node, feature, bin), the sums of a few
per-row statistics (class counts, gradients, hessians). It is built with a
single ``np.bincount`` over flat indices ``((node * k + j) * B + bin) * C + class``
per statistic, over chunks of rows so memory stays bounded.
"""
from __future__ import annotations

import numpy as np

MAX_BINS_LIMIT = 256          # bins are stored as uint8
_ROW_CHUNK = 1 << 16          # rows per bincount pass: ~10 MB of indices for 20 features


def sample_block_rows(X, y, n_rows: int, seed: int) -> np.ndarray:
    """Up to ``n_rows`` rows of one block, drawn without replacement (a map-side task)."""
    if X.shape[0] <= n_rows:
        return np.asarray(X)
    rng = np.random.default_rng([seed, X.shape[0], 0x5A3])
    idx = np.sort(rng.choice(X.shape[0], n_rows, replace=False))
    return np.asarray(X)[idx]


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


def bin_matrix(X: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin codes of X, uint8 of shape (n, n_features), C order (row gathers are contiguous)."""
    out = np.empty(X.shape, dtype=np.uint8)
    for f in range(X.shape[1]):
        out[:, f] = np.searchsorted(edges[f], X[:, f], side="left")
    return out


def histograms(Xb: np.ndarray, rows: np.ndarray, slot: np.ndarray, n_slots: int, n_bins: int,
               channels: list, codes: np.ndarray | None = None, n_classes: int = 1,
               feats: np.ndarray | None = None) -> np.ndarray:
    """Per-(slot, feature, bin) sums of each channel over the given rows.

    Xb: uint8 bins (n_total, n_features). rows: indices into Xb; slot: each row's
    frontier slot in [0, n_slots). channels: per-row weight arrays aligned with rows
    (``None`` means a count, weight 1). codes: per-row class codes folded into the
    index (one bincount gives every class). feats: (n_slots, k) feature ids per slot
    (random forests); None means every feature.
    Returns float64 (n_slots, k, n_bins, n_classes * len(channels)), statistics in
    the order (channel, class).
    """
    n_features = Xb.shape[1]
    k = n_features if feats is None else feats.shape[1]
    width = n_slots * k * n_bins * n_classes
    out = np.zeros((len(channels), width))
    col_base = np.arange(k, dtype=np.intp) * (n_bins * n_classes)
    for start in range(0, rows.shape[0], _ROW_CHUNK):
        r = rows[start:start + _ROW_CHUNK]
        s = slot[start:start + _ROW_CHUNK].astype(np.intp)
        if feats is None:
            b = Xb[r]                                   # (n, F) contiguous row gather
        else:
            b = Xb[r[:, None], feats[s]]                # (n, k): each row's node features
        idx = b.astype(np.intp)
        if n_classes > 1:
            idx *= n_classes
            idx += codes[start:start + _ROW_CHUNK, None]
        idx += col_base
        idx += (s * (k * n_bins * n_classes))[:, None]
        flat = idx.ravel()
        for c, ch in enumerate(channels):
            if ch is None:
                out[c] += np.bincount(flat, minlength=width)
            else:
                w = ch[start:start + _ROW_CHUNK]
                out[c] += np.bincount(flat, np.broadcast_to(w[:, None], b.shape).ravel(), minlength=width)
    out = out.reshape(len(channels), n_slots, k, n_bins, n_classes)
    return np.ascontiguousarray(out.transpose(1, 2, 3, 0, 4)).reshape(
        n_slots, k, n_bins, len(channels) * n_classes)
