"""Compiled inner loops of shoal's tree models (Numba): binning, one level's histograms, leaves.

Every loop here visits each row once and does a few operations per (row, feature), which
NumPy can only express as a gather, a flat-index build and a bincount per feature, each a
full pass over memory. Compiled, a level of every tree is one pass over the rows: move each
row to its child, drop it if the child is a leaf, and add its statistics to its node's
histogram, all features at once (the binned row is 20-odd contiguous bytes).

The functions are compiled once per machine and cached (``cache=True``: beside this file,
or in Numba's cache folder in the user's home when the package folder is read-only); a
process loads the cached machine code when it first calls one. They release the GIL.
Arrays come in with fixed dtypes (the callers in ``_hist`` and ``_hist_shards`` convert),
so a kernel has at most two compiled signatures: float32 or float64 per-row statistics
(a regression forest's are float64), a read-only block or a writable array to bin.
"""
from __future__ import annotations

import numba
import numpy as np

_jit = numba.njit(cache=True, nogil=True)


@_jit
def bin_rows(X, edges, out):
    """out[i, f] = the number of edges[f] below X[i, f] (edges sorted, padded with +inf).

    Up to 64 edges a count of all comparisons (vectorized, no branch on the data: 50 ms
    for 8M values with 31 edges, against 240 ms for a binary search); above, a binary search.
    """
    n, d = X.shape
    width = edges.shape[1]
    if width <= 64:
        for i in range(n):
            for f in range(d):
                x = X[i, f]
                c = 0
                for e in range(width):
                    c += edges[f, e] < x
                out[i, f] = c
        return
    for i in range(n):
        for f in range(d):
            x = X[i, f]
            lo, hi = 0, width
            while lo < hi:
                mid = (lo + hi) >> 1
                if edges[f, mid] < x:
                    lo = mid + 1
                else:
                    hi = mid
            out[i, f] = lo


@_jit
def level_pass(Xb, rows, slot, W, codes, m, split_feature, split_bin, child, cmap, feats,
               hist, n_classes):
    """One level of one tree over its m live rows; returns how many rows stay live.

    Xb: binned rows (n, d) uint8. rows/slot/W/codes: per live row its row index, its open
    node's slot, its statistics (m, C), float32 (float64 for a regression forest), and its
    class code (empty without classes);
    the first m entries are live. split_feature/split_bin/child: the previous level's
    splits per slot (feature -1: the node became a leaf; child[s] = (left slot, right
    slot), -1 a leaf); empty at the first level. A row is moved to its child's slot and
    compacted to the front, or dropped when its node closed. cmap: slot -> histogram
    index, -1 for a slot whose histogram is derived. feats: feature ids per histogram
    index (k per node, random forests), empty for all features.
    hist[h, j, bin, c * n_classes + code] += W[row, c] (float64 sums), zeroed by the caller.

    Each kind of sum has a loop of its own (boosting's pairs, a forest's weighted class
    counts, anything else), which moves the rows in the same pass, so a row's bytes are
    read once per level; indices are unsigned, so no access checks for a negative index.
    With one loop for every kind and signed indices it ran 2-4x slower.
    """
    moved = split_feature.shape[0] > 0
    childf = child.reshape(-1)
    flat = hist.reshape(-1)
    n_bins = hist.shape[2]
    if W.shape[1] == 2 and n_classes == 1 and feats.shape[0] == 0:
        return _pass_pairs(Xb, rows, slot, W, m, moved, split_feature, split_bin, childf,
                           cmap, flat.view(np.complex128), n_bins)
    if W.shape[1] == 1 and feats.shape[0] > 0:
        return _pass_weighted(Xb, rows, slot, W, codes, m, moved, split_feature, split_bin,
                              childf, cmap, feats, flat, n_bins, n_classes)
    return _pass_any(Xb, rows, slot, W, codes, m, moved, split_feature, split_bin, childf,
                     cmap, feats, flat, hist.shape[1], n_bins, n_classes)


@numba.njit(inline="always")
def _child(Xb, r, s, split_feature, split_bin, childf):
    """The slot row r moves to from slot s, or -1 (its node or its child is a leaf)."""
    su = np.uintp(s)
    f = split_feature[su]
    if f < 0:
        return -1
    go_right = np.uintp(Xb[r, np.uintp(f)] > split_bin[su])     # no branch on the data
    return childf[np.uintp(2) * su + go_right]


# In the passes below every index is unsigned (np.uintp) and no row or slice is taken as a
# view: with signed indices Numba checks each access for a negative index, and that (with
# the views) made these loops 1.5-2x slower. Each pass spells out its own move-and-compact
# block: written once as a shared helper (inlined or called) it made a forest level that
# moves rows 1.3-1.5x slower, and a boosting level 4-5x slower as a called function.

@_jit
def _pass_pairs(Xb, rows, slot, W, m, moved, split_feature, split_bin, childf, cmap, hc, n_bins):
    """Boosting: a (gradient, hessian) pair is added as one complex128 (the bytes of two
    float64 sums), one 16-byte add per (row, feature) instead of two: about 18% faster."""
    d = np.uintp(Xb.shape[1])
    nb = np.uintp(n_bins)
    live = 0
    for i in range(m):
        iu = np.uintp(i)
        r = np.uintp(rows[iu])
        s = slot[iu]
        if moved:
            s = _child(Xb, r, s, split_feature, split_bin, childf)
            if s < 0:
                continue
            lu = np.uintp(live)
            slot[lu] = s
            if live != i:       # compact once a row was dropped
                rows[lu] = rows[iu]
                W[lu, 0] = W[iu, 0]
                W[lu, 1] = W[iu, 1]
        h = cmap[np.uintp(s)]
        if h >= 0:
            lu = np.uintp(live)
            w = complex(W[lu, 0], W[lu, 1])
            base = np.uintp(h) * d * nb
            for f in range(d):
                hc[base + np.uintp(Xb[r, np.uintp(f)])] += w
                base += nb
        live += 1
    return live


@_jit
def _pass_weighted(Xb, rows, slot, W, codes, m, moved, split_feature, split_bin, childf, cmap,
                   feats, flat, n_bins, n_classes):
    """Random forests: one statistic (the row's weight), per class, over each node's features."""
    k = np.uintp(feats.shape[1])
    nb = np.uintp(n_bins)
    nc = np.uintp(n_classes)
    classed = codes.shape[0] > 0
    live = 0
    for i in range(m):
        iu = np.uintp(i)
        r = np.uintp(rows[iu])
        s = slot[iu]
        if moved:
            s = _child(Xb, r, s, split_feature, split_bin, childf)
            if s < 0:
                continue
            lu = np.uintp(live)
            slot[lu] = s
            if live != i:
                rows[lu] = rows[iu]
                W[lu, 0] = W[iu, 0]
                if classed:
                    codes[lu] = codes[iu]
        h = cmap[np.uintp(s)]
        if h >= 0:
            lu = np.uintp(live)
            hu = np.uintp(h)
            w = np.float64(W[lu, 0])
            code = np.uintp(codes[lu]) if classed else np.uintp(0)
            base = hu * k * nb
            for j in range(k):
                f = np.uintp(feats[hu, np.uintp(j)])
                flat[(base + np.uintp(Xb[r, f])) * nc + code] += w
                base += nb
        live += 1
    return live


@_jit
def _pass_any(Xb, rows, slot, W, codes, m, moved, split_feature, split_bin, childf, cmap, feats,
              flat, k, n_bins, n_classes):
    """Any number of statistics and classes, all features or a subset per node."""
    n_stats = np.uintp(W.shape[1])
    nc = np.uintp(n_classes)
    nb = np.uintp(n_bins)
    ku = np.uintp(k)
    width = n_stats * nc
    some_feats = feats.shape[0] > 0
    classed = codes.shape[0] > 0
    live = 0
    for i in range(m):
        iu = np.uintp(i)
        r = np.uintp(rows[iu])
        s = slot[iu]
        if moved:
            s = _child(Xb, r, s, split_feature, split_bin, childf)
            if s < 0:
                continue
            lu = np.uintp(live)
            slot[lu] = s
            if live != i:
                rows[lu] = rows[iu]
                for c in range(n_stats):
                    W[lu, np.uintp(c)] = W[iu, np.uintp(c)]
                if classed:
                    codes[lu] = codes[iu]
        h = cmap[np.uintp(s)]
        if h >= 0:
            lu = np.uintp(live)
            hu = np.uintp(h)
            code = np.uintp(codes[lu]) if classed else np.uintp(0)
            base = hu * ku * nb
            for j in range(ku):
                f = np.uintp(feats[hu, np.uintp(j)]) if some_feats else np.uintp(j)
                at = (base + np.uintp(Xb[r, f])) * width + code
                for c in range(n_stats):
                    flat[at + np.uintp(c) * nc] += W[lu, np.uintp(c)]
                base += nb
        live += 1
    return live


@_jit
def add_tree(Xb, feature, bin_, child, depth, value, scale, raw, col):
    """raw[i, col] += scale * value of row i's leaf. The tree is walked ``depth`` steps down
    the binned rows, one step for all rows at a time (independent loads, no branch on the
    data): child[2 * node + (bin > bin_[node])] is the next node, a leaf its own child."""
    n = Xb.shape[0]
    node = np.zeros(n, np.int32)
    for _ in range(depth):  # noqa: B007
        for i in range(n):
            v = node[i]
            node[i] = child[2 * v + np.intp(Xb[i, feature[v]] > bin_[v])]
    for i in range(n):
        raw[i, col] += scale * value[node[i]]


@_jit
def binary_gradients(raw, y, rows, W):
    """Logistic loss at raw[rows, 0]: W[:, 0] = p - y, W[:, 1] = p (1 - p) (W float32)."""
    for i in range(rows.shape[0]):
        r = rows[i]
        p = 1.0 / (1.0 + np.exp(-raw[r, 0]))
        W[i, 0] = p - y[r]
        W[i, 1] = p * (1.0 - p)
