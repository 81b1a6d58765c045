"""Fitted trees as flat arrays, split criteria, and vectorized prediction.

A tree is a handful of parallel arrays (``feature``, ``threshold``, ``left``,
``right``, ``value`` ...), node 0 the root, ``feature == -1`` a leaf. A forest
packs its trees into one set of arrays so that prediction walks every tree for
a chunk of rows at once: one gather per depth, no Python loop over rows or trees.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_PREDICT_CHUNK = 1 << 15


@dataclass
class Tree:
    feature: np.ndarray     # int32 (n_nodes,), -1 for a leaf
    bin: np.ndarray         # int32, split "bin <= bin goes left"
    threshold: np.ndarray   # float64, split "x <= threshold goes left"
    left: np.ndarray        # int32 child ids (-1 for a leaf)
    right: np.ndarray
    value: np.ndarray       # float64 (n_nodes, n_outputs)
    weight: np.ndarray      # float64 weighted samples reaching the node
    gain: np.ndarray        # float64 weighted impurity decrease of the node's split
    depth: np.ndarray       # int32 depth of the node (root 0)

    @property
    def n_nodes(self) -> int:
        return int(self.feature.shape[0])

    @property
    def max_depth(self) -> int:
        return int(self.depth.max()) if self.depth.size else 0

    def feature_importances(self, n_features: int) -> np.ndarray:
        imp = np.bincount(self.feature[self.feature >= 0],
                          self.gain[self.feature >= 0], minlength=n_features)
        total = imp.sum()
        return imp / total if total > 0 else imp


class PackedForest:
    """Several trees in one set of arrays, for vectorized prediction."""

    def __init__(self, trees: list[Tree]):
        sizes = np.array([t.n_nodes for t in trees], dtype=np.int64)
        self.roots = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)
        off = np.repeat(self.roots, sizes)
        self.feature = np.concatenate([t.feature for t in trees]).astype(np.int64)
        is_split = self.feature >= 0
        self.left = np.where(is_split, np.concatenate([t.left for t in trees]) + off, -1)
        self.right = np.where(is_split, np.concatenate([t.right for t in trees]) + off, -1)
        self.threshold = np.concatenate([t.threshold for t in trees])
        self.bin = np.concatenate([t.bin for t in trees]).astype(np.int64)
        self.value = np.concatenate([t.value for t in trees])
        self.depth = max((t.max_depth for t in trees), default=0)
        self.safe_feature = np.maximum(self.feature, 0)

    def apply(self, X: np.ndarray, binned: bool = False) -> np.ndarray:
        """Leaf index (into the packed arrays) of every row in every tree: (n, n_trees)."""
        out = np.empty((X.shape[0], self.roots.shape[0]), dtype=np.int64)
        thr = self.bin if binned else self.threshold
        for start in range(0, X.shape[0], _PREDICT_CHUNK):
            Xc = X[start:start + _PREDICT_CHUNK]
            rows = np.arange(Xc.shape[0])[:, None]
            node = np.broadcast_to(self.roots, (Xc.shape[0], self.roots.shape[0])).copy()
            for _ in range(self.depth):
                xv = Xc[rows, self.safe_feature[node]]
                nxt = np.where(xv <= thr[node], self.left[node], self.right[node])
                node = np.where(nxt >= 0, nxt, node)
            out[start:start + _PREDICT_CHUNK] = node
        return out

    def sum_values(self, X: np.ndarray, binned: bool = False) -> np.ndarray:
        """Sum over trees of each row's leaf value: (n, n_outputs)."""
        leaves = self.apply(X, binned)
        out = np.zeros((X.shape[0], self.value.shape[1]))
        for t in range(leaves.shape[1]):   # one vectorized gather per tree
            out += self.value[leaves[:, t]]
        return out


# ------------------------------------------------------------------------------------
# criteria: score(stats) such that a split's gain is score(left) + score(right) - score(parent)

class Criterion:
    """Turns histogram statistics (..., n_stats) into node values, counts and split gains."""

    n_stats: int
    n_outputs: int

    def score(self, s: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def count(self, s: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def value(self, s: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def pure(self, s: np.ndarray) -> np.ndarray:
        return np.zeros(s.shape[:-1], dtype=bool)

    def valid(self, left: np.ndarray, right: np.ndarray, min_leaf: float) -> np.ndarray:
        return (self.count(left) >= min_leaf) & (self.count(right) >= min_leaf)


class Gini(Criterion):
    """Class counts per node; gain = weighted decrease of Gini impurity."""

    def __init__(self, n_classes: int):
        self.n_stats = self.n_outputs = n_classes

    def score(self, s):
        w = s.sum(-1)
        return np.divide((s * s).sum(-1), w, out=np.zeros_like(w), where=w > 0)

    def count(self, s):
        return s.sum(-1)

    def value(self, s):
        w = s.sum(-1, keepdims=True)
        return np.divide(s, w, out=np.zeros_like(s), where=w > 0)

    def pure(self, s):
        return s.max(-1) >= s.sum(-1) * (1 - 1e-12)


class Entropy(Gini):
    """Class counts per node; gain = weighted decrease of entropy (information gain)."""

    def score(self, s):
        w = s.sum(-1)
        slog = np.where(s > 0, s * np.log(np.where(s > 0, s, 1.0)), 0.0).sum(-1)
        return slog - np.where(w > 0, w * np.log(np.where(w > 0, w, 1.0)), 0.0)


class Variance(Criterion):
    """Stats (weight, weighted sum of y - offset); gain = weighted decrease of variance.

    The gain S_L^2/W_L + S_R^2/W_R - S^2/W cancels catastrophically when the targets sit
    far from 0 (y = 1e7 + noise left no split at all), so the shards sum y less an offset
    near its mean, and a node's value adds the offset back.
    """

    n_stats = 2
    n_outputs = 1

    def __init__(self, offset: float = 0.0):
        self.offset = float(offset)

    def score(self, s):
        w = s[..., 0]
        return np.divide(s[..., 1] ** 2, w, out=np.zeros_like(w), where=w > 0)

    def count(self, s):
        return s[..., 0]

    def value(self, s):
        w = s[..., :1]
        return np.divide(s[..., 1:2], w, out=np.zeros_like(w), where=w > 0) + self.offset


class Newton(Criterion):
    """Stats (gradient, hessian[, count]); second-order gain G^2/(H + l2) as in XGBoost/LightGBM.

    Without a count channel the hessian stands in for the count (exact for squared
    error, where every hessian is 1).
    """

    n_outputs = 1

    def __init__(self, l2: float = 0.0, with_count: bool = False, min_hessian: float = 1e-3):
        self.l2, self.with_count, self.min_hessian = l2, with_count, min_hessian
        self.n_stats = 3 if with_count else 2

    def score(self, s):
        h = s[..., 1] + self.l2
        return np.divide(s[..., 0] ** 2, h, out=np.zeros_like(h), where=h > 0)

    def count(self, s):
        return s[..., 2] if self.with_count else s[..., 1]

    def value(self, s):
        h = s[..., 1:2] + self.l2
        return -np.divide(s[..., 0:1], h, out=np.zeros_like(h), where=h > 0)

    def valid(self, left, right, min_leaf):
        ok = super().valid(left, right, min_leaf)
        return ok & (left[..., 1] >= self.min_hessian) & (right[..., 1] >= self.min_hessian)


def best_splits(hist: np.ndarray, crit: Criterion, min_leaf: float):
    """Best (feature slot, bin, gain, left stats) per node of a histogram (m, k, B, S), vectorized.

    Returns (j, b, gain, left) with j/b/gain of shape (m,) and left (m, S); gain is
    -inf where no split satisfies ``min_leaf``.
    """
    m, k, B, S = hist.shape
    cum = np.cumsum(hist[:, :, :-1, :], axis=2)          # left stats for "bin <= b"
    total = hist[:, :1, :, :].sum(axis=2)                  # (m, 1, S), the same for every feature
    right = total[:, :, None, :] - cum
    gain = crit.score(cum) + crit.score(right) - crit.score(total)[:, :, None]
    gain = np.where(crit.valid(cum, right, min_leaf), gain, -np.inf).reshape(m, k * (B - 1))
    best = np.argmax(gain, axis=1)
    j, b = np.divmod(best, B - 1)
    rows = np.arange(m)
    return j, b, gain[rows, best], cum[rows, j, b]
