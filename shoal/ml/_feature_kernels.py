"""Map-side kernels of the vector transformers (VectorIndexer, RobustScaler, TargetEncoder):
per-block statistics and their merges. No scikit-learn import, so workers start fast."""
from __future__ import annotations

import numpy as np


def block_distinct_capped(X, y, cap):
    """Per column: the sorted distinct values of one block, or None past ``cap`` of them
    (that column is continuous: no need to carry its values further)."""
    out = []
    for j in range(X.shape[1]):
        v = np.unique(X[:, j])
        out.append(v if len(v) <= cap else None)
    return out, cap


def merge_distinct_capped(a, b):
    """Union of two blocks' distinct values per column, None once past the cap."""
    (va, cap), (vb, _) = a, b
    out = []
    for x, z in zip(va, vb):
        if x is None or z is None:
            out.append(None)
            continue
        u = np.union1d(x, z)
        out.append(u if len(u) <= cap else None)
    return out, cap


def row_kron(parts):
    """The row-wise Kronecker product of a list of (n, k_i) matrices: the first varies slowest."""
    out = parts[0]
    for p in parts[1:]:
        out = (out[:, :, None] * p[:, None, :]).reshape(out.shape[0], -1)
    return out


def binarize_block(X, y, threshold):
    """Binarizer's fused-pipeline kernel: 1.0 above the threshold, else 0.0."""
    return (X > threshold).astype(np.float64), y


def category_target_stats(columns, y):
    """Per column (distinct values, count, sum of y, sum of y^2) and the totals (n, sum, sum^2):
    one block's share of TargetEncoder's statistics. Each column is a NumPy array."""
    y = np.asarray(y, dtype=np.float64)
    y2 = y * y
    per = []
    for col in columns:
        values, inverse = np.unique(col, return_inverse=True)
        inverse = inverse.ravel()
        k = len(values)
        per.append((values, np.bincount(inverse, minlength=k).astype(np.float64),
                    np.bincount(inverse, weights=y, minlength=k), np.bincount(inverse, weights=y2, minlength=k)))
    return per, (float(len(y)), float(y.sum()), float(y2.sum()))


def merge_category_target_stats(parts):
    """The blocks' category_target_stats summed by category (on the driver); a part may carry
    more items after its (per column, totals) pair."""
    n_cols = len(parts[0][0])
    merged = []
    for j in range(n_cols):
        values = np.concatenate([p[0][j][0] for p in parts])
        u, inverse = np.unique(values, return_inverse=True)
        inverse = inverse.ravel()
        merged.append((u,) + tuple(np.bincount(inverse, weights=np.concatenate([p[0][j][i] for p in parts]),
                                               minlength=len(u)) for i in (1, 2, 3)))
    totals = tuple(sum(p[1][i] for p in parts) for i in range(3))
    return merged, totals
