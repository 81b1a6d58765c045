"""Level-wise growth of many trees at once, driven from the driver.

Each pass over the data grows one level of every tree: the shards (which hold
the binned rows and each row's current node) return per-node histograms of
the open nodes, the driver sums them, picks every node's best split
vectorized over features and bins, and sends back only the splits. So a tree
of depth D costs D passes, and a forest of T trees still costs D passes.

When a node's histogram covers every feature, only the smaller child of each
split is histogrammed; its sibling is the parent minus it (LightGBM's
histogram subtraction), which halves the rows scanned below the root.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from shoal.ml._tree import Criterion, Tree, best_splits


@dataclass
class GrowParams:
    max_depth: int
    min_samples_leaf: float = 1.0
    min_samples_split: float = 2.0
    min_gain: float = 0.0            # a split must improve the criterion by more than this
    max_features: int | None = None  # features drawn per node (random forests); None: all


class _Nodes:
    """Growable node arrays of one tree (ids are assigned parents first)."""

    def __init__(self, n_outputs: int):
        self.n = 0
        self._cap = 64
        self.feature = np.full(self._cap, -1, np.int32)
        self.bin = np.zeros(self._cap, np.int32)
        self.threshold = np.zeros(self._cap)
        self.left = np.full(self._cap, -1, np.int32)
        self.right = np.full(self._cap, -1, np.int32)
        self.value = np.zeros((self._cap, n_outputs))
        self.weight = np.zeros(self._cap)
        self.gain = np.zeros(self._cap)
        self.depth = np.zeros(self._cap, np.int32)

    def add(self, value: np.ndarray, weight: np.ndarray, depth: int) -> np.ndarray:
        n = value.shape[0]
        while self.n + n > self._cap:
            self._grow()
        ids = np.arange(self.n, self.n + n)
        self.value[ids], self.weight[ids], self.depth[ids] = value, weight, depth
        self.n += n
        return ids

    def _grow(self):
        self._cap *= 2
        for name in ("feature", "bin", "threshold", "left", "right", "weight", "gain", "depth"):
            old = getattr(self, name)
            new = np.full(self._cap, -1 if name in ("feature", "left", "right") else 0, old.dtype)
            new[:old.shape[0]] = old
            setattr(self, name, new)
        v = np.zeros((self._cap, self.value.shape[1]))
        v[:self.value.shape[0]] = self.value
        self.value = v

    def tree(self) -> Tree:
        n = self.n
        return Tree(self.feature[:n].copy(), self.bin[:n].copy(), self.threshold[:n].copy(),
                    self.left[:n].copy(), self.right[:n].copy(), self.value[:n].copy(),
                    self.weight[:n].copy(), self.gain[:n].copy(), self.depth[:n].copy())


class _TreeFrontier:
    """The open nodes of one tree at the current level, and what the shards must do next."""

    def __init__(self, n_outputs: int):
        self.nodes = _Nodes(n_outputs)
        self.ids = None            # node ids of the open slots (None before the root exists)
        self.splits = None         # (feature, bin, left_slot, right_slot) for the previous level
        self.cmap = None           # slot -> computed index, or -1 if derived by subtraction
        self.derive = None         # (slots, parent_slot, sibling_compact) for derived slots
        self.parent_hist = None
        self.feats = None
        self.done = False

    def n_computed(self) -> int:
        if self.ids is None:
            return 1
        return int(self.cmap.max()) + 1 if self.cmap is not None else int(self.ids.shape[0])


def grow_trees(level: Callable, n_trees: int, crit: Criterion, edges: np.ndarray,
               params: GrowParams, rng: np.random.Generator) -> list[Tree]:
    """Grow ``n_trees`` trees level by level.

    ``level(requests)`` runs one pass: requests[t] is None (tree t is finished) or a
    tuple (splits, feats, cmap, n_computed) for tree t, and it returns, per tree, the summed
    histogram (n_computed_slots, k, n_bins, n_stats) of its open nodes.
    """
    n_features = edges.shape[0]
    k = params.max_features if params.max_features and params.max_features < n_features else None
    fronts = [_TreeFrontier(crit.n_outputs) for _ in range(n_trees)]
    for f in fronts:
        f.feats = _draw_features(rng, 1, n_features, k)
    depth = 0
    while True:
        requests = [None if f.done else (f.splits, f.feats, f.cmap, f.n_computed()) for f in fronts]
        if all(r is None for r in requests):
            break
        hists = level(requests)
        for f, h in zip(fronts, hists):
            if f.done:
                continue
            full = _full_histogram(f, h)
            _split_level(f, full, depth, crit, edges, params, rng, k)
        depth += 1
    return [f.nodes.tree() for f in fronts]


def _draw_features(rng, m: int, n_features: int, k: int | None):
    if k is None or m == 0:
        return None
    return np.sort(np.argsort(rng.random((m, n_features)), axis=1)[:, :k], axis=1).astype(np.int64)


def _full_histogram(f: _TreeFrontier, h: np.ndarray) -> np.ndarray:
    if f.cmap is None:
        return h
    full = np.empty((f.cmap.shape[0],) + h.shape[1:])
    computed = f.cmap >= 0
    full[computed] = h[f.cmap[computed]]
    slots, parent, sibling = f.derive
    if slots.size:
        full[slots] = f.parent_hist[parent] - h[sibling]
    return full


def _split_level(f: _TreeFrontier, hist: np.ndarray, depth: int, crit: Criterion,
                 edges: np.ndarray, params: GrowParams, rng, k):
    total = hist[:, 0].sum(axis=1)                    # (m, S)
    if f.ids is None:                                 # level 0: the root
        f.ids = f.nodes.add(crit.value(total), crit.count(total), 0)
        is_open = _is_open(crit, total, depth, params)
        if not is_open[0]:
            f.done = True
            return
    m = f.ids.shape[0]
    j, b, gain, left = best_splits(hist, crit, params.min_samples_leaf)
    split = np.isfinite(gain) & (gain > params.min_gain + 1e-10 * np.abs(crit.score(total)))
    feature = j if f.feats is None else f.feats[np.arange(m), j]
    sp = np.flatnonzero(split)
    n_sp = sp.size
    if n_sp == 0:
        f.done = True
        return
    left, right = left[sp], total[sp] - left[sp]
    child_stats = np.empty((2 * n_sp, left.shape[1]))
    child_stats[0::2], child_stats[1::2] = left, right
    child_ids = f.nodes.add(crit.value(child_stats), crit.count(child_stats), depth + 1)
    parent_ids = f.ids[sp]
    nd = f.nodes
    nd.feature[parent_ids] = feature[sp]
    nd.bin[parent_ids] = b[sp]
    nd.threshold[parent_ids] = edges[feature[sp], b[sp]]
    nd.left[parent_ids], nd.right[parent_ids] = child_ids[0::2], child_ids[1::2]
    nd.gain[parent_ids] = gain[sp]

    child_open = _is_open(crit, child_stats, depth + 1, params)
    next_slot = np.full(2 * n_sp, -1, np.int64)
    next_slot[child_open] = np.arange(int(child_open.sum()))
    left_slot = np.full(m, -1, np.int64)
    right_slot = np.full(m, -1, np.int64)
    left_slot[sp], right_slot[sp] = next_slot[0::2], next_slot[1::2]
    f.splits = (np.where(split, feature, -1).astype(np.int64), b.astype(np.int64), left_slot, right_slot)
    f.ids = child_ids[child_open]
    n_next = f.ids.shape[0]
    if n_next == 0:
        f.done = True
        return
    f.feats = _draw_features(rng, n_next, edges.shape[0], k)
    if k is not None:
        f.cmap = None
        return
    # histogram subtraction: compute the smaller child of each pair whose both children are open
    lo, ro = child_open[0::2], child_open[1::2]
    both = lo & ro
    cl, cr = crit.count(left), crit.count(right)
    derive_left = both & (cl > cr)                    # the larger child is derived
    derive_right = both & ~derive_left
    derived = np.zeros(2 * n_sp, bool)
    derived[0::2], derived[1::2] = derive_left, derive_right
    computed_child = child_open & ~derived
    cmap = np.full(n_next, -1, np.int64)
    cmap[next_slot[computed_child]] = np.arange(int(computed_child.sum()))
    sib = np.arange(2 * n_sp) ^ 1                      # the other child of the same pair
    dslots = next_slot[derived]
    f.derive = (dslots, sp[np.flatnonzero(derived) // 2], cmap[next_slot[sib[derived]]])
    f.parent_hist = hist
    f.cmap = cmap


def _is_open(crit: Criterion, stats: np.ndarray, depth: int, params: GrowParams) -> np.ndarray:
    if depth >= params.max_depth:
        return np.zeros(stats.shape[0], bool)
    return (crit.count(stats) >= params.min_samples_split) & ~crit.pure(stats)
