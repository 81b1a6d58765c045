"""Map-side kernels of shoal.ml.stat: per-block moments, distinct values, contingency counts.

NumPy only: these run in worker tasks and shard actors."""
from __future__ import annotations

import numpy as np


def moments(X, y):
    """(rows, column means, centred cross-product matrix) of a block."""
    n = X.shape[0]
    if n == 0:
        return 0, np.zeros(X.shape[1]), np.zeros((X.shape[1], X.shape[1]))
    mean = X.mean(axis=0)
    Xc = X - mean
    return n, mean, Xc.T @ Xc


def merge_moments(a, b):
    """Two blocks' moments as one (Chan et al.'s pairwise update: no large offsets summed)."""
    na, ma, Ca = a
    nb, mb, Cb = b
    if na == 0:
        return b
    if nb == 0:
        return a
    n = na + nb
    delta = mb - ma
    return n, ma + delta * (nb / n), Ca + Cb + np.outer(delta, delta) * (na * nb / n)


def distinct_counts(X, y):
    """Per column: (distinct values, their counts) of a block."""
    return [np.unique(X[:, j], return_counts=True) for j in range(X.shape[1])]


def to_ranks(X, y, tables):
    """A block with every value replaced by its average rank in its column (ties share the
    mean of their positions, 1-based); tables: per column (sorted values, average ranks)."""
    R = np.empty_like(X)
    for j, (values, ranks) in enumerate(tables):
        R[:, j] = ranks[np.searchsorted(values, X[:, j])]
    return R, y


def contingency(X, y):
    """Per column: (distinct (value, label) pairs as two arrays, their counts) of a block."""
    out = []
    for j in range(X.shape[1]):
        pairs, counts = np.unique(np.c_[X[:, j], y], axis=0, return_counts=True)
        out.append((pairs[:, 0], pairs[:, 1], counts))
    return out


def summary(X, y):
    """(rows, moments, min, max, non-zeros, sum |x|, sum x^2) per column of a block."""
    n, d = X.shape
    if n == 0:
        return (0, np.zeros(d), np.zeros(d), np.full(d, np.inf), np.full(d, -np.inf),
                np.zeros(d), np.zeros(d), np.zeros(d))
    mean = X.mean(axis=0)
    m2 = ((X - mean) ** 2).sum(axis=0)
    return (n, mean, m2, X.min(axis=0), X.max(axis=0), (X != 0).sum(axis=0).astype(np.float64),
            np.abs(X).sum(axis=0), (X * X).sum(axis=0))


def merge_summary(a, b):
    """Two blocks' summaries as one."""
    if a[0] == 0:
        return b
    if b[0] == 0:
        return a
    na, ma, Ma = a[:3]
    nb, mb, Mb = b[:3]
    n = na + nb
    delta = mb - ma
    return (n, ma + delta * (nb / n), Ma + Mb + delta ** 2 * (na * nb / n),
            np.minimum(a[3], b[3]), np.maximum(a[4], b[4]), a[5] + b[5], a[6] + b[6], a[7] + b[7])
