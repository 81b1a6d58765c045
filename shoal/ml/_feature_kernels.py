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
