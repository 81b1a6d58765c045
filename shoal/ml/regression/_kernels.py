"""Map-side kernels of shoal.ml.regression: what one block contributes to a pass.

NumPy only (no SciPy or scikit-learn): these run in worker tasks and shard actors. Every
kernel takes the block as ``(X, y, ...)`` (the DesignMatrix convention).
"""
from __future__ import annotations

import numpy as np

# ----------------------------------------------------------------------- isotonic regression


def isotonic_aggregate(X, y, feature_index):
    """The block's rows pooled by distinct feature value: (x sorted, sum of weights, sum of y).

    Rows with the same x get the same isotonic fit, so these sums are all a fit needs."""
    x = X[:, feature_index]
    xs, inverse = np.unique(x, return_inverse=True)
    return xs, np.bincount(inverse, minlength=len(xs)).astype(np.float64), \
        np.bincount(inverse, weights=y.astype(np.float64), minlength=len(xs))


def isotonic_merge(a, b):
    """Two blocks' aggregates as one (the fold of isotonic_aggregate)."""
    xs, inverse = np.unique(np.concatenate([a[0], b[0]]), return_inverse=True)
    w = np.bincount(inverse, weights=np.concatenate([a[1], b[1]]), minlength=len(xs))
    s = np.bincount(inverse, weights=np.concatenate([a[2], b[2]]), minlength=len(xs))
    return xs, w, s
