"""Compiled per-document E step of shoal's LDA (Numba).

The variational update of one document is a short loop over its topics and distinct terms,
run up to max_doc_update_iter times; in NumPy every round pays a dozen array calls (and
scikit-learn's version a Cython digamma), so one compiled loop per block is what makes the
E step cheap. Compiled once per machine and cached (see ``shoal.ml._tree_kernels``);
releases the GIL.
"""
from __future__ import annotations

import math

import numba
import numpy as np

EPS = float(np.finfo(np.float64).eps)


@numba.njit(cache=True, nogil=True)
def digamma1(x):
    """digamma(x) for x > 0: recurrence up to 7, then the asymptotic series (~1e-12)."""
    r = 0.0
    while x < 7.0:
        r -= 1.0 / x
        x += 1.0
    inv = 1.0 / x
    inv2 = inv * inv
    return r + math.log(x) - 0.5 * inv - inv2 * (1.0 / 12 - inv2 * (1.0 / 120 - inv2 * (
        1.0 / 252 - inv2 * (1.0 / 240 - inv2 / 132))))


@numba.njit(cache=True, nogil=True)
def _exp_dirichlet(g, e):
    s = 0.0
    for t in range(g.shape[0]):
        s += g[t]
    ds = digamma1(s)
    for t in range(g.shape[0]):
        e[t] = math.exp(digamma1(g[t]) - ds)


@numba.njit(cache=True, nogil=True)
def doc_topics(indptr, indices, data, lo, hi, exp_tw, alpha, max_iter, tol, gamma, stats, want_stats):
    """Update gamma[i] (document lo + i) in place; add the statistics into stats if asked.

    gamma_d = alpha + e_d * ((cnt / (e_d @ B)) @ B^T), e_d = exp(E[log theta_d]), until the
    mean absolute change is under tol (scikit-learn's ``_update_doc_distribution``)."""
    k = exp_tw.shape[0]
    e = np.empty(k)
    last = np.empty(k)
    for i in range(hi - lo):
        a, b = indptr[lo + i], indptr[lo + i + 1]
        if a == b:
            continue
        m = b - a
        norm = np.empty(m)
        g = gamma[i]
        _exp_dirichlet(g, e)
        for _ in range(max_iter):
            for t in range(k):
                last[t] = g[t]
            for j in range(m):
                w = indices[a + j]
                s = 0.0
                for t in range(k):
                    s += e[t] * exp_tw[t, w]
                norm[j] = data[a + j] / (s + EPS)
            change = 0.0
            for t in range(k):
                s = 0.0
                for j in range(m):
                    s += norm[j] * exp_tw[t, indices[a + j]]
                g[t] = e[t] * s + alpha
                change += abs(g[t] - last[t])
            _exp_dirichlet(g, e)
            if change / k < tol:
                break
        if want_stats:
            for j in range(m):
                w = indices[a + j]
                s = 0.0
                for t in range(k):
                    s += e[t] * exp_tw[t, w]
                c = data[a + j] / (s + EPS)
                for t in range(k):
                    stats[t, w] += e[t] * c
