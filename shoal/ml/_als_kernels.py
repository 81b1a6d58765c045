"""Compiled kernel of ALS (Numba): the per-row normal equations, built and solved.

``solve_rows`` builds, for every row of a block (a user, or an item), the normal
equations of its least-squares problem from the rows of the other factor it rated
and solves them: Cholesky for the plain problem (as Spark's ``CholeskySolver``),
projected coordinate descent for the non-negative one (Spark's ``NNLSSolver``
solves the same problem). The rank is small (about 10), so each system is built
and solved in registers-sized loops rather than one LAPACK call per row.

Compiled once per machine and cached (see ``_tree_kernels``); releases the GIL.
"""
from __future__ import annotations

import numba
import numpy as np

NNLS_SWEEPS = 500       # coordinate-descent sweeps at most per non-negative solve
NNLS_TOL = 1e-12        # stop when no coordinate moved more than this (relative)


@numba.njit(cache=True, nogil=True)
def _cholesky_solve(A, b, out):
    """Solve A x = b for a symmetric positive (semi-)definite A in place (A is overwritten)."""
    k = A.shape[0]
    for j in range(k):
        s = A[j, j]
        for p in range(j):
            s -= A[j, p] * A[j, p]
        if s <= 1e-300:        # singular (no regularisation, too few ratings): a tiny ridge
            s = 1e-12 * (abs(A[j, j]) + 1.0)
        d = np.sqrt(s)
        A[j, j] = d
        for i in range(j + 1, k):
            t = A[i, j]
            for p in range(j):
                t -= A[i, p] * A[j, p]
            A[i, j] = t / d
    for i in range(k):          # L z = b
        t = b[i]
        for p in range(i):
            t -= A[i, p] * out[p]
        out[i] = t / A[i, i]
    for i in range(k - 1, -1, -1):   # L^T x = z
        t = out[i]
        for p in range(i + 1, k):
            t -= A[p, i] * out[p]
        out[i] = t / A[i, i]


@numba.njit(cache=True, nogil=True)
def _nnls(A, b, out):
    """min 1/2 x^T A x - b^T x subject to x >= 0, by projected coordinate descent."""
    k = A.shape[0]
    for i in range(k):
        out[i] = 0.0
    grad = -b.copy()
    for _ in range(NNLS_SWEEPS):
        moved = 0.0
        scale = 0.0
        for i in range(k):
            if A[i, i] <= 0.0:
                continue
            new = out[i] - grad[i] / A[i, i]
            if new < 0.0:
                new = 0.0
            step = new - out[i]
            if step != 0.0:
                for p in range(k):
                    grad[p] += A[p, i] * step
                out[i] = new
                moved = max(moved, abs(step))
            scale = max(scale, abs(new))
        if moved <= NNLS_TOL * (scale + 1e-30):
            break


@numba.njit(cache=True, nogil=True)
def solve_rows(indptr, cols, vals, Y, YtY, reg, implicit, alpha, nonnegative, out):
    """New factors of each row of a block, from the other side's factors ``Y``.

    Row ``u`` rated ``Y[cols[p]]`` with ``vals[p]`` for p in ``indptr[u]:indptr[u+1]``.
    Explicit: minimise sum (r - x.y)^2 + reg * n_u |x|^2. Implicit (Hu, Koren and
    Volinsky, as Spark): confidence 1 + alpha |r|, preference r > 0, the unobserved
    entries through ``YtY``; reg scales with the count of positive ratings.
    """
    n = indptr.shape[0] - 1
    k = Y.shape[1]
    A = np.empty((k, k))
    b = np.empty(k)
    x = np.empty(k)
    for u in range(n):
        if implicit:
            A[:, :] = YtY
        else:
            A[:, :] = 0.0
        b[:] = 0.0
        count = 0
        for p in range(indptr[u], indptr[u + 1]):
            y = Y[cols[p]]
            r = vals[p]
            if implicit:
                aw = alpha * abs(r)
                if r > 0.0:
                    bw = 1.0 + aw
                    count += 1
                else:
                    bw = 0.0
            else:
                aw = 1.0
                bw = r
                count += 1
            for i in range(k):
                yi = y[i]
                b[i] += bw * yi
                wi = aw * yi
                for j in range(i + 1):
                    A[i, j] += wi * y[j]
        lam = reg * count
        for i in range(k):
            A[i, i] += lam
            for j in range(i):
                A[j, i] = A[i, j]
        if nonnegative:
            _nnls(A, b, x)
        else:
            _cholesky_solve(A, b, x)
        for i in range(k):
            out[u, i] = x[i]

