"""Map-side kernels of shoal.ml.factorization: a block's loss and gradient.

NumPy only: they run in worker tasks and shard actors. The model travels as one flat
vector theta = [intercept, linear weights (d), factors (d x k, row-major)].
"""
from __future__ import annotations

import numpy as np

CHUNK_ROWS = 1 << 14


def unpack(theta, d, k):
    """(intercept, linear weights (d,), factors (d, k)) views of theta."""
    return theta[0], theta[1:1 + d], theta[1 + d:].reshape(d, k)


def fm_predict(X, theta, k):
    """w0 + X w + sum_{i<j} <v_i, v_j> x_i x_j, the pairwise term computed in O(n d k) as
    0.5 * sum_f ((X V)_f^2 - (X^2)(V^2)_f)."""
    w0, w, V = unpack(theta, X.shape[1], k)
    Z = X @ V
    return w0 + X @ w + 0.5 * ((Z * Z).sum(axis=1) - ((X * X) @ (V * V)).sum(axis=1)), Z


def fm_loss_grad(X, y, theta, k, kind):
    """Sum over the block of the loss (0.5 squared error for "regression", log-loss of
    labels 0/1 for "classification") and its gradient with respect to theta."""
    d = X.shape[1]
    grad = np.zeros_like(theta)
    g0, gw, gV = grad[:1], grad[1:1 + d], grad[1 + d:].reshape(d, k)
    V = theta[1 + d:].reshape(d, k)
    loss = 0.0
    for s in range(0, X.shape[0], CHUNK_ROWS):
        Xc, yc = X[s:s + CHUNK_ROWS], y[s:s + CHUNK_ROWS].astype(np.float64)
        pred, Z = fm_predict(Xc, theta, k)
        if kind == "regression":
            r = pred - yc
            loss += 0.5 * float(r @ r)
        else:
            # log(1 + e^p) - y p, and its derivative sigmoid(p) - y, without overflow
            loss += float(np.logaddexp(0.0, pred).sum() - yc @ pred)
            r = 0.5 * (1.0 + np.tanh(0.5 * pred)) - yc
        g0 += r.sum()
        gw += Xc.T @ r
        gV += Xc.T @ (r[:, None] * Z) - V * ((Xc * Xc).T @ r)[:, None]
    return loss, grad
