"""Per-block statistics shared by several estimators (map side) and their driver-side folds."""
from __future__ import annotations

import numpy as np

CHUNK_ROWS = 1 << 14   # rows per chunk inside a block: a centered copy stays in cache


def block_sums(X, y):
    return X.sum(axis=0), (0.0 if y is None else float(y.sum())), X.shape[0]


def block_gram(X, y, mu, ybar):
    """X^T X, X^T y and y^T y of one block, centered on (mu, ybar) unless mu is None."""
    d = X.shape[1]
    G = np.zeros((d, d))
    b = np.zeros(d)
    yy = 0.0
    for s in range(0, X.shape[0], CHUNK_ROWS):
        Xc = X[s:s + CHUNK_ROWS]
        if mu is not None:
            Xc = Xc - mu
        G += Xc.T @ Xc
        if y is not None:
            yc = y[s:s + CHUNK_ROWS]
            if mu is not None:
                yc = yc - ybar
            b += Xc.T @ yc
            yy += float(yc @ yc)
    return G, b, yy


def block_centered_gram(X, y):
    """(n, x_mean, y_mean, centered X^T X, centered X^T y, centered y^T y) of one block."""
    n = X.shape[0]
    mu = X.mean(axis=0)
    ybar = float(y.mean()) if y is not None else 0.0
    G, b, yy = block_gram(X, y, mu, ybar)
    return n, mu, ybar, G, b, yy


def merge_centered_gram(a, c):
    """Combine two blocks' centered statistics exactly (the covariance form of Chan et al.)."""
    na, ma, ya, Ga, ba, yya = a
    nc, mc, yc, Gc, bc, yyc = c
    if na == 0:
        return c
    if nc == 0:
        return a
    n = na + nc
    f = na * nc / n
    dx, dy = mc - ma, yc - ya
    return (n, ma + dx * (nc / n), ya + dy * (nc / n), Ga + Gc + f * np.outer(dx, dx),
            ba + bc + f * dx * dy, yya + yyc + f * dy * dy)


def gram_stats(dm, center: bool):
    """(G, b, yy, n, x_mean, y_mean) over a DesignMatrix in one pass.

    Centered: each block centers on its own mean and the merge adds the between-block terms,
    so there is no cancellation however far the data sits from the origin.
    """
    if center:
        n, mu, ybar, G, b, yy = dm.map_reduce(block_centered_gram, reduce=merge_centered_gram)
        return G, b, yy, n, mu, ybar
    G, b, yy = dm.map_reduce(block_gram, None, None)
    return G, b, yy, dm.n_rows, np.zeros(dm.n_features), 0.0


def block_moments(X, y):
    """(count, mean, M2) per feature of one block, for Chan et al.'s parallel variance."""
    n = X.shape[0]
    mean = X.mean(axis=0)
    M2 = np.zeros(X.shape[1])
    for s in range(0, n, CHUNK_ROWS):
        D = X[s:s + CHUNK_ROWS] - mean
        M2 += np.einsum("ij,ij->j", D, D)
    return n, mean, M2


def merge_moments(a, b):
    na, ma, Sa = a
    nb, mb, Sb = b
    if na == 0:
        return b
    if nb == 0:
        return a
    n = na + nb
    delta = mb - ma
    return n, ma + delta * (nb / n), Sa + Sb + delta * delta * (na * nb / n)


def class_sums(X, codes, k):
    """(k x d) sums of X's rows per class code: one pass over X through a sparse indicator."""
    import scipy.sparse as sp
    n = codes.shape[0]
    indicator = sp.csr_matrix((np.ones(n), codes, np.arange(n + 1)), shape=(n, k))
    return np.asarray(indicator.T @ X)


# ------------------------------------------------------------------ sample weights ---
# A block reads its slice of the weights ``w`` (put in the object store once per call)
# by its index and the row offsets of the blocks.

def check_sample_weight(sample_weight, n: int, estimator: str) -> np.ndarray | None:
    """None, or the weights as float64 after the checks scikit-learn makes (named in errors)."""
    from shoal.exceptions import InvalidInputError
    if sample_weight is None:
        return None
    if isinstance(sample_weight, str):
        raise InvalidInputError(
            f"sample_weight of {estimator}.fit takes an array of one weight per row, got the "
            f"string {sample_weight!r}; for a Dataset, take the column out first "
            f"(ds.to_numpy({sample_weight!r})) and drop it from the features.")
    w = np.asarray(sample_weight, dtype=np.float64)
    if w.ndim == 0:
        w = np.full(n, float(w))
    if w.shape != (n,):
        raise InvalidInputError(f"sample_weight of {estimator}.fit has shape {w.shape}; it needs one "
                                f"weight per row of X, shape ({n},).")
    if not np.isfinite(w).all() or (w < 0).any():
        raise InvalidInputError(f"sample_weight of {estimator}.fit holds negative, NaN or infinite "
                                f"values; weights must be finite and >= 0.")
    if w.sum() <= 0:
        raise InvalidInputError(f"sample_weight of {estimator}.fit: every weight is zero (they sum to "
                                f"0); at least one row needs a positive weight.")
    return w


def block_offsets(dm) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(dm.block_rows)]).astype(np.int64)


def block_weighted_moments(X, y, index, w, offsets):
    """(weight sum, weighted mean, weighted M2) per feature of one block."""
    wb = w[offsets[index]:offsets[index + 1]]
    total = float(wb.sum())
    if total == 0.0:
        return 0.0, np.zeros(X.shape[1]), np.zeros(X.shape[1])
    mean = (wb @ X) / total
    M2 = np.zeros(X.shape[1])
    for s in range(0, X.shape[0], CHUNK_ROWS):
        D = X[s:s + CHUNK_ROWS] - mean
        M2 += wb[s:s + CHUNK_ROWS] @ (D * D)
    return total, mean, M2


def block_weighted_class_sums(X, y, index, w, offsets, k):
    """(weight per class, weighted feature sums per class) of one block."""
    wb = w[offsets[index]:offsets[index + 1]]
    return np.bincount(y, weights=wb, minlength=k), class_sums(X * wb[:, None], y, k)


def block_weighted_class_ssq(X, y, index, w, offsets, theta):
    """Weighted squared deviations from each row's class mean, summed per class."""
    wb = w[offsets[index]:offsets[index + 1]]
    k = theta.shape[0]
    out = np.zeros_like(theta)
    for s in range(0, X.shape[0], CHUNK_ROWS):
        codes = y[s:s + CHUNK_ROWS]
        D = X[s:s + CHUNK_ROWS] - theta[codes]
        out += class_sums(D * D * wb[s:s + CHUNK_ROWS, None], codes, k)
    return out


def fold(parts, reduce):
    """Fold per-block results on the driver (a handful of small statistics)."""
    from functools import reduce as _reduce
    return _reduce(reduce, parts)
