"""Map-side kernels of shoal.ml.neural_network: a block's loss and gradient.

NumPy only: they run in worker tasks and shard actors. The network's parameters travel
as one flat vector; ``unpack`` views it as per-layer (weights, biases).
"""
from __future__ import annotations

import numpy as np

CHUNK_ROWS = 1 << 13      # rows per forward/backward chunk: the activations stay in cache


def unpack(theta, layers):
    """Per-layer (W (n_in, n_out), b (n_out,)) views of the flat parameter vector."""
    out, at = [], 0
    for n_in, n_out in zip(layers[:-1], layers[1:]):
        W = theta[at:at + n_in * n_out].reshape(n_in, n_out)
        at += n_in * n_out
        out.append((W, theta[at:at + n_out]))
        at += n_out
    return out


def activate(Z, activation):
    if activation == "logistic":
        return 0.5 * (1.0 + np.tanh(0.5 * Z))
    if activation == "tanh":
        return np.tanh(Z)
    return np.maximum(Z, 0.0)           # relu


def _activation_grad(A, activation):
    """d activation / dZ written with the activation's output A."""
    if activation == "logistic":
        return A * (1.0 - A)
    if activation == "tanh":
        return 1.0 - A * A
    return (A > 0).astype(A.dtype)


def forward(X, params, activation):
    """Every layer's output; the last is the softmax probabilities."""
    outs = [X]
    for i, (W, b) in enumerate(params):
        Z = outs[-1] @ W + b
        if i < len(params) - 1:
            outs.append(activate(Z, activation))
        else:
            Z -= Z.max(axis=1, keepdims=True)
            np.exp(Z, out=Z)
            Z /= Z.sum(axis=1, keepdims=True)
            outs.append(Z)
    return outs


def mlp_loss_grad(X, y, theta, layers, activation):
    """Sum over the block's rows of the cross-entropy of the softmax output, and its gradient
    (flat, like theta), by backpropagation in row chunks."""
    params = unpack(theta, layers)
    grad = np.zeros_like(theta)
    grads = unpack(grad, layers)
    loss = 0.0
    for s in range(0, X.shape[0], CHUNK_ROWS):
        Xc, yc = X[s:s + CHUNK_ROWS], y[s:s + CHUNK_ROWS]
        outs = forward(Xc, params, activation)
        rows = np.arange(len(yc))
        P = outs[-1]
        loss -= float(np.log(np.maximum(P[rows, yc], 1e-300)).sum())
        delta = P.copy()
        delta[rows, yc] -= 1.0
        for i in range(len(params) - 1, -1, -1):
            gW, gb = grads[i]
            gW += outs[i].T @ delta
            gb += delta.sum(axis=0)
            if i:
                delta = (delta @ params[i][0].T) * _activation_grad(outs[i], activation)
    return loss, grad
