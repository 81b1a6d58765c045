"""Compiled EM pass of shoal's GaussianMixture (Numba): log-densities, responsibilities and
the sufficient statistics of a block in one pass over its rows.

NumPy needs about ten passes over (n, k, d) temporaries per EM step (the whitened rows, their
squares, the log-sum-exp, the responsibilities, the weighted outer products). Here rows go
through in tiles of ``_TILE``, transposed so that every inner loop runs along the tile's
rows: the whitening by each component's triangular precision factor, the log-sum-exp and
the moment sums (sum r, sum r x, sum r x x^T on the lower triangle) all vectorise, and the
tile stays in cache between them. Only k x d x d numbers leave a block.

The precision factors are scikit-learn's ``precisions_cholesky_``: upper triangular for
"full" (precision = P P^T, so z_j = sum_{i <= j} x_i P_ij), inverse standard deviations for
"diag". Rows are shifted by ``shift`` first (the fit's first guess of the mean): the second
moments then carry no large offset.

Compiled once per machine and cached (see ``_tree_kernels``); the kernels release the GIL,
so the threads of a local fit run them side by side.
"""
from __future__ import annotations

import numba
import numpy as np

_NEGLIGIBLE = -50.0
_TILE = 256        # rows per tile: (d + 2k) x 256 doubles stay in L1/L2 for d, k up to ~20

# reassoc: the per-tile sums vectorise (a different summation order, not less accurate);
# contract: fused multiply-adds. No finite-math flags: a row's density may be -inf.
_jit = numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})


@_jit
def _load_tile(X, s, m, shift, Xt):
    d = X.shape[1]
    for t in range(m):
        for i in range(d):
            Xt[i, t] = X[s + t, i] - shift[i]


@_jit
def _log_dens_full(Xt, m, P, b, const, L, z):
    """L[c, t] = const[c] - |P_c^T x_t - b_c|^2 / 2 for the tile's m rows."""
    k, d = b.shape
    for c in range(k):
        for t in range(m):
            L[c, t] = 0.0
        for j in range(d):
            bj = b[c, j]
            for t in range(m):
                z[t] = -bj
            for i in range(j + 1):
                p = P[c, i, j]
                for t in range(m):
                    z[t] += p * Xt[i, t]
            for t in range(m):
                L[c, t] += z[t] * z[t]
        cc = const[c]
        for t in range(m):
            L[c, t] = cc - 0.5 * L[c, t]


@_jit
def _log_dens_diag(Xt, m, means, prec, const, L):
    k, d = means.shape
    for c in range(k):
        for t in range(m):
            L[c, t] = 0.0
        for i in range(d):
            mu = means[c, i]
            p = prec[c, i]
            for t in range(m):
                v = (Xt[i, t] - mu) * p
                L[c, t] += v * v
        cc = const[c]
        for t in range(m):
            L[c, t] = cc - 0.5 * L[c, t]


@_jit
def _normalise(L, m, k):
    """Responsibilities in place of the log-densities; returns the tile's summed log-likelihood."""
    total = 0.0
    for t in range(m):
        mx = L[0, t]
        for c in range(1, k):
            if L[c, t] > mx:
                mx = L[c, t]
        if not np.isfinite(mx):
            mx = 0.0
        acc = 0.0
        for c in range(k):
            v = L[c, t] - mx
            # e^-50 = 2e-22 is below a rounding error of the sum (>= 1: its largest term is
            # e^0), so it changes neither the log-likelihood nor the other responsibilities;
            # its own (< 2e-22) becomes 0. On separated components most terms are such, and
            # their exp was most of the pass's time
            e = np.exp(v) if v > _NEGLIGIBLE else 0.0
            L[c, t] = e
            acc += e
        total += np.log(acc) + mx
        inv = 1.0 / acc        # one exp per row and component: r = e^(l - max) / sum
        for c in range(k):
            L[c, t] *= inv
    return total


@_jit
def _add_moments(Xt, m, R, full, nk, s1, s2, w):
    """nk[c] += sum r, s1[c] += sum r x, s2[c] += sum r x x^T (lower triangle) or r x^2."""
    k = R.shape[0]
    d = Xt.shape[0]
    for c in range(k):
        acc = 0.0
        for t in range(m):
            acc += R[c, t]
        nk[c] += acc
        for a in range(d):
            acc = 0.0
            for t in range(m):
                w[t] = R[c, t] * Xt[a, t]
                acc += w[t]
            s1[c, a] += acc
            if full:
                for bb in range(a + 1):
                    acc = 0.0
                    for t in range(m):
                        acc += w[t] * Xt[bb, t]
                    s2[c, a, bb] += acc
            else:
                acc = 0.0
                for t in range(m):
                    acc += w[t] * Xt[a, t]
                s2[c, 0, a] += acc


@_jit
def e_step(X, shift, full, P, b, const, nk, s1, s2):
    """One EM pass over the rows of X: adds to nk, s1, s2 (s2 (k, d, d): the lower triangle for
    "full", row 0 holding sum r x^2 for "diag") and returns the summed log-likelihood.

    full: P (k, d, d) upper-triangular precision factors, b[c] = mean_c @ P[c];
    diag: P (k, 1, d) inverse standard deviations, b the means. const[c]: log weight + log
    det of P[c] - d log(2 pi) / 2."""
    n, d = X.shape
    k = b.shape[0]
    Xt = np.empty((d, _TILE))
    L = np.empty((k, _TILE))
    z = np.empty(_TILE)
    total = 0.0
    for s in range(0, n, _TILE):
        m = min(_TILE, n - s)
        _load_tile(X, s, m, shift, Xt)
        if full:
            _log_dens_full(Xt, m, P, b, const, L, z)
        else:
            _log_dens_diag(Xt, m, b, P[:, 0, :], const, L)
        total += _normalise(L, m, k)
        _add_moments(Xt, m, L, full, nk, s1, s2, z)
    return total


@_jit
def hard_moments(X, shift, labels, k, full, nk, s1, s2):
    """The moments of rows each wholly given to one component (labels[i] in 0..k-1)."""
    n, d = X.shape
    x = np.empty(d)
    for r in range(n):
        c = labels[r]
        nk[c] += 1.0
        for a in range(d):
            x[a] = X[r, a] - shift[a]
        for a in range(d):
            s1[c, a] += x[a]
            if full:
                for bb in range(a + 1):
                    s2[c, a, bb] += x[a] * x[bb]
            else:
                s2[c, 0, a] += x[a] * x[a]
