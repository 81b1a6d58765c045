"""Map-side kernels: the functions shoal.ml runs on each block inside worker tasks.

They import only NumPy (never SciPy or scikit-learn), so a worker loads them fast, and each
returns small partial results that the driver folds (see _input.DesignMatrix.map_reduce).
"""
from __future__ import annotations

import numpy as np

from shoal.ml._quantiles import block_sketch
from shoal.ml._stats import CHUNK_ROWS, class_sums


def expit(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))      # the logistic sigmoid without overflow


def log_expit(z):
    return -np.logaddexp(0.0, -z)


def logsumexp(Z, axis):
    m = Z.max(axis=axis, keepdims=True)
    return (np.log(np.exp(Z - m).sum(axis=axis, keepdims=True)) + m).squeeze(axis)

# ----------------------------------------------------------------------------------
# linear


def _logistic_block(X, y, W, n_classes, fit_intercept):
    """Sum over the block of the log-loss and its gradient with respect to W ((d+1) x K).

    Rows go through in cache-sized chunks: the temporaries stay small and hot.
    """
    d = X.shape[1]
    loss = 0.0
    grad = np.zeros_like(W)
    yf = y.astype(np.float64) if n_classes == 2 else None
    for s in range(0, X.shape[0], CHUNK_ROWS):
        Xc, yc = X[s:s + CHUNK_ROWS], y[s:s + CHUNK_ROWS]
        Z = Xc @ W[:d]
        if fit_intercept:
            Z += W[d]
        if n_classes == 2:
            z = Z[:, 0]
            # one exp and one log per row: with e = exp(-|z|) and q = 1 + e,
            # log(1 + e^z) = max(z, 0) + log(q) and sigmoid(z) = 1/q (z >= 0) or e/q.
            # log(q) rather than log1p(e): half the cost, and its error (at most an ulp of
            # q, i.e. 2e-16 absolute per row) is float64 rounding of the loss itself.
            e = np.abs(z)
            np.negative(e, out=e)
            np.exp(e, out=e)
            q = e + 1.0
            yfc = yf[s:s + CHUNK_ROWS]
            loss += float(np.maximum(z, 0.0).sum() + np.log(q).sum() - yfc @ z)
            np.reciprocal(q, out=q)
            r = np.where(z >= 0, q, e * q)
            r -= yfc
            R = r[:, None]
        else:
            lse = logsumexp(Z, axis=1)
            rows = np.arange(len(yc))
            loss += float(lse.sum() - Z[rows, yc].sum())
            R = np.exp(Z - lse[:, None])
            R[rows, yc] -= 1.0
        grad[:d] += Xc.T @ R
        if fit_intercept:
            grad[d] += R.sum(axis=0)
    return loss, grad


def _sqhinge_block(X, y, W, n_classes, intercept_scaling):
    """Sum of squared hinge losses (one-vs-rest) and gradient; the intercept is a constant
    feature of value ``intercept_scaling`` (0: no intercept)."""
    d = X.shape[1]
    loss = 0.0
    grad = np.zeros_like(W)
    for s in range(0, X.shape[0], CHUNK_ROWS):
        Xc, yc = X[s:s + CHUNK_ROWS], y[s:s + CHUNK_ROWS]
        Z = Xc @ W[:d]
        if intercept_scaling:
            Z += intercept_scaling * W[d]
        if n_classes == 2:
            S = np.where(yc == 1, 1.0, -1.0)[:, None]
        else:
            S = np.full(Z.shape, -1.0)
            S[np.arange(len(yc)), yc] = 1.0
        M = np.maximum(1.0 - S * Z, 0.0)
        loss += float(np.einsum("ij,ij->", M, M))
        R = -2.0 * S * M
        grad[:d] += Xc.T @ R
        if intercept_scaling:
            grad[d] += intercept_scaling * R.sum(axis=0)
    return loss, grad


def _block_class_sums(X, y, k):
    return np.bincount(y, minlength=k).astype(np.float64), class_sums(X, y, k)


def _block_class_ssq(X, y, theta):
    k = theta.shape[0]
    out = np.zeros_like(theta)
    for s in range(0, X.shape[0], CHUNK_ROWS):
        codes = y[s:s + CHUNK_ROWS]
        D = X[s:s + CHUNK_ROWS] - theta[codes]
        out += class_sums(D * D, codes, k)
    return out


def _block_binary_class_sums(X, y, k, threshold):
    return np.bincount(y, minlength=k).astype(np.float64), class_sums((X > threshold).astype(np.float64), y, k)


def _block_min(X, y):
    return float(X.min())

# ----------------------------------------------------------------------------------
# kmeans


def _partial_dist_T(X, C2, C_sq):
    """(k, n): |c|^2 - 2 c.x for every center and row (|x - c|^2 less |x|^2, same ranking).

    The transposed layout makes the minimum a reduction over k contiguous rows.
    """
    DT = C2 @ X.T
    DT += C_sq[:, None]
    return DT


_POWERS = 2.0 ** np.arange(52, -1, -1)     # 2^52 .. 2^0: exact sums of distinct powers in float64


def _argmin_rows(DT):
    """(min over rows, arg-min over rows) of a (k, n) array, ties to the lowest row like argmin.

    NumPy's argmin over axis 0 copies the array and runs k-long loops per column; here the
    minimum is a contiguous reduction and the arg-min is read from a bit code: row j of the
    equality mask weighs 2^(k-1-j), so the highest set bit of the (exact, k <= 53) sum is the
    first minimal row, and frexp's exponent gives it.
    """
    k = DT.shape[0]
    mn = DT.min(axis=0)
    if k == 1:
        return mn, np.zeros(DT.shape[1], dtype=np.intp)
    if k > 53:
        return mn, DT.argmin(axis=0)
    code = _POWERS[53 - k:] @ np.equal(DT, mn).astype(np.float64)
    return mn, k - np.frexp(code)[1]


def _min_sq_dist(X, C, C_sq):
    """Squared distance of each row to its nearest center, and that center's index."""
    mn, idx = _argmin_rows(_partial_dist_T(X, -2.0 * C, C_sq))
    mn += np.einsum("ij,ij->i", X, X)
    return np.maximum(mn, 0.0), idx


def _block_sample(X, y, index, C, oversampling, cost, seed):
    """k-means|| step: keep each row with probability min(1, l * d^2(x, C) / cost)."""
    rng = np.random.default_rng([seed, index])
    C2, C_sq = -2.0 * C, np.einsum("ij,ij->i", C, C)
    picked = []
    for s in range(0, X.shape[0], CHUNK_ROWS):
        Xc = X[s:s + CHUNK_ROWS]
        d2 = _partial_dist_T(Xc, C2, C_sq).min(axis=0)    # the distance only: no arg-min
        d2 += np.einsum("ij,ij->i", Xc, Xc)
        keep = rng.random(Xc.shape[0]) < oversampling * np.maximum(d2, 0.0) / cost
        picked.append(Xc[keep])
    return np.concatenate(picked) if picked else np.empty((0, X.shape[1]))


def _block_uniform_rows(X, y, index, fractions, seed):
    rng = np.random.default_rng([seed, index])
    return X[rng.random(X.shape[0]) < fractions[index]]


def _block_moments_and_rows(X, y, index, fraction, seed):
    """One pass for KMeans: (count, mean, M2) per feature and a uniform sample of rows."""
    n = X.shape[0]
    mean = X.mean(axis=0)
    M2 = np.zeros(X.shape[1])
    for s in range(0, n, CHUNK_ROWS):
        D = X[s:s + CHUNK_ROWS] - mean
        M2 += np.einsum("ij,ij->j", D, D)
    rng = np.random.default_rng([seed, index])
    return (n, mean, M2), X[rng.random(n) < fraction]


def _block_lloyd(X, y, C):
    """Per-cluster sums and counts of one block against centers C (one Lloyd step's map side)."""
    from shoal.ml._kmeans_kernels import lloyd_block     # Numba loads on first use only
    k, d = C.shape
    sums, counts = np.zeros((k, d)), np.zeros(k)
    lloyd_block(np.ascontiguousarray(X, dtype=np.float64), np.ascontiguousarray(-2.0 * C.T),
                np.einsum("ij,ij->i", C, C), sums, counts)
    return sums, counts


def _block_labels(X, y, C):
    C_sq = np.einsum("ij,ij->i", C, C)
    out = [_min_sq_dist(X[s:s + CHUNK_ROWS], C, C_sq) for s in range(0, X.shape[0], CHUNK_ROWS)]
    return np.concatenate([o[1] for o in out]), float(sum(o[0].sum() for o in out))


# ----------------------------------------------------------------------------------
# scalers


def _block_min_max(X, y):
    return X.min(axis=0), X.max(axis=0)


def _merge_min_max(a, b):
    return np.minimum(a[0], b[0]), np.maximum(a[1], b[1])


def _block_max_abs(X, y):
    return np.abs(X).max(axis=0)


def _block_nan_sums(X, y, missing):
    mask = _missing_mask(X, missing)
    return np.where(mask, 0.0, X).sum(axis=0), (~mask).sum(axis=0)


def _missing_mask(X, missing):
    return np.isnan(X) if np.isnan(missing) else (X == missing) | np.isnan(X)


def _block_value_counts(X, y, missing):
    """Per column: (values, counts) of the non-missing entries of one block."""
    out = []
    mask = _missing_mask(X, missing)
    for j in range(X.shape[1]):
        v, c = np.unique(X[~mask[:, j], j], return_counts=True)
        out.append((v, c))
    return out


def _merge_value_counts(a, b):
    merged = []
    for (va, ca), (vb, cb) in zip(a, b):
        v, inv = np.unique(np.concatenate([va, vb]), return_inverse=True)
        merged.append((v, np.bincount(inv, weights=np.concatenate([ca, cb]).astype(np.float64))))
    return merged


def _block_sketch_missing(X, y, missing):
    if not np.isnan(missing):
        X = np.where(X == missing, np.nan, X)
    return block_sketch(X)



# ----------------------------------------------------------------------------------
# fused pipeline transforms (blocks stay in the object store)

def _affine_block(X, y, mul, add):
    """X * mul + add, column-wise."""
    out = np.multiply(X, mul)
    out += add
    return out, y


def _linear_map_block(X, y, M, add):
    """X @ M + add (a projection such as PCA's)."""
    out = X @ M
    out += add
    return out, y
