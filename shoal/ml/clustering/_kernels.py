"""Map-side kernels of shoal.ml.clustering: what one block contributes to a pass.

NumPy only (no scikit-learn; the GaussianMixture and LDA E steps call their Numba loops,
loaded on first use): these run in worker tasks and shard actors, which import this module
and nothing heavier. Every kernel takes the block as ``(X, y, ...)`` (the
DesignMatrix convention) and returns sums that add across blocks (``tree_sum``).
"""
from __future__ import annotations

import numpy as np

LOG_2PI = float(np.log(2.0 * np.pi))


# ----------------------------------------------------------------------- Gaussian mixtures

def gaussian_log_prob(X, means, prec_chol, covariance_type):
    """log N(x | mean_k, cov_k) for every row and component, (n, k).

    prec_chol: the Cholesky factors of the precisions, (k, d, d) for "full", or the inverse
    standard deviations (k, d) for "diag" (scikit-learn's ``precisions_cholesky_``)."""
    n, d = X.shape
    k = means.shape[0]
    if covariance_type == "full":
        # one product for every component (d x k*d): a k-times wider matrix keeps BLAS
        # busy where k skinny (d x d) products spend their time starting threads
        P = prec_chol.transpose(1, 0, 2).reshape(d, k * d)
        Z = (X @ P).reshape(n, k, d) - np.einsum("kd,kde->ke", means, prec_chol)[None]
        maha = np.einsum("nkd,nkd->nk", Z, Z)
        log_det = np.log(np.diagonal(prec_chol, axis1=1, axis2=2)).sum(axis=1)
    else:
        prec = prec_chol ** 2
        maha = ((means ** 2 * prec).sum(axis=1) - 2.0 * X @ (means * prec).T + (X * X) @ prec.T)
        log_det = np.log(prec_chol).sum(axis=1)
    return -0.5 * (d * LOG_2PI + maha) + log_det


def weighted_log_prob(X, shift, log_weights, means, prec_chol, covariance_type):
    """log (w_k N(x | ...)) per row and component, the rows shifted by ``shift`` first
    (the model's means are stored relative to it: sums of squares stay well conditioned)."""
    return gaussian_log_prob(X - shift, means, prec_chol, covariance_type) + log_weights


def log_sum_exp(a):
    m = a.max(axis=1)
    m = np.where(np.isfinite(m), m, 0.0)
    return np.log(np.exp(a - m[:, None]).sum(axis=1)) + m


def _moment_sums(Xc, R, covariance_type):
    """(sum r, sum r x, sum r x x^T or sum r x^2) per component."""
    nk = R.sum(axis=0)
    s1 = R.T @ Xc
    if covariance_type == "full":
        n, d = Xc.shape
        k = R.shape[1]
        s2 = ((Xc[:, None, :] * R[:, :, None]).reshape(n, k * d).T @ Xc).reshape(k, d, d)
    else:
        s2 = R.T @ (Xc * Xc)
    return nk, s1, s2


def _empty_moments(k, d, covariance_type):
    return np.zeros(k), np.zeros((k, d)), np.zeros((k, d, d) if covariance_type == "full" else (k, 1, d))


def _finished_moments(nk, s1, s2, covariance_type):
    """The compiled kernels' sums as the protocol's: s2 symmetric (k, d, d) or (k, d)."""
    if covariance_type == "full":
        low = np.tril(s2)
        return nk, s1, low + np.tril(s2, -1).transpose(0, 2, 1)
    return nk, s1, s2[:, 0, :]


def e_step_terms(log_weights, means, prec_chol, covariance_type):
    """What the compiled E step needs besides the rows: (P, b, const) (see _gmm_kernels)."""
    k, d = means.shape
    if covariance_type == "full":
        P = np.ascontiguousarray(prec_chol, dtype=np.float64)
        b = np.einsum("kd,kde->ke", means, P)
        log_det = np.log(np.diagonal(P, axis1=1, axis2=2)).sum(axis=1)
    else:
        P = np.ascontiguousarray(prec_chol, dtype=np.float64).reshape(k, 1, d)
        b = np.ascontiguousarray(means, dtype=np.float64)
        log_det = np.log(prec_chol).sum(axis=1)
    return P, b, np.asarray(log_weights + log_det - 0.5 * d * LOG_2PI, dtype=np.float64)


def gmm_e_step(X, y, shift, log_weights, means, prec_chol, covariance_type):
    """One E step on a block: (sum of log-likelihoods, sum r, sum r x, second moments), in one
    compiled pass over the rows (``_gmm_kernels.e_step``)."""
    from shoal.ml.clustering._gmm_kernels import e_step     # Numba loads on first use only
    k, d = means.shape
    P, b, const = e_step_terms(log_weights, means, prec_chol, covariance_type)
    nk, s1, s2 = _empty_moments(k, d, covariance_type)
    total = e_step(np.ascontiguousarray(X, dtype=np.float64), np.asarray(shift, dtype=np.float64),
                   covariance_type == "full", P, b, const, nk, s1, s2)
    return (float(total),) + _finished_moments(nk, s1, s2, covariance_type)


def gmm_column_sums(X, y):
    """(sum of the rows, number of rows) of a block."""
    return X.sum(axis=0), float(X.shape[0])


def gmm_sample_rows(X, y, index, fraction, seed):
    """Each row of a block kept with probability ``fraction`` (a draw fixed by the seed and
    the block's position)."""
    rng = np.random.default_rng([seed, index, 1])
    return X[rng.random(X.shape[0]) < fraction]


def gmm_hard_init(X, y, shift, centers, covariance_type):
    """Moments of a block with every row given wholly to its nearest center (k-means init)."""
    from shoal.ml.clustering._gmm_kernels import hard_moments
    Xc = X - shift
    C = centers - shift
    k, d = C.shape
    labels = np.empty(X.shape[0], dtype=np.int64)
    c_sq = (C * C).sum(axis=1)
    for s in range(0, X.shape[0], 8192):     # the (rows x k) distances in cache-sized pieces
        labels[s:s + 8192] = (c_sq - 2.0 * Xc[s:s + 8192] @ C.T).argmin(axis=1)
    nk, s1, s2 = _empty_moments(k, d, covariance_type)
    hard_moments(np.ascontiguousarray(X, dtype=np.float64), np.asarray(shift, dtype=np.float64), labels,
                 k, covariance_type == "full", nk, s1, s2)
    return (0.0,) + _finished_moments(nk, s1, s2, covariance_type)


def gmm_random_init(X, y, index, shift, k, seed, covariance_type):
    """Moments of a block under uniformly drawn, normalised responsibilities (scikit-learn's
    "random" init); the draw depends on the seed and the block's position only."""
    rng = np.random.default_rng([seed, index])
    R = rng.uniform(size=(X.shape[0], k))
    R /= R.sum(axis=1, keepdims=True)
    return (0.0,) + _moment_sums(X - shift, R, covariance_type)


def gmm_labels(X, y, shift, log_weights, means, prec_chol, covariance_type):
    """(most likely component per row, sum of log-likelihoods) of a block."""
    lp = weighted_log_prob(X, shift, log_weights, means, prec_chol, covariance_type)
    return lp.argmax(axis=1), float(log_sum_exp(lp).sum())


# ----------------------------------------------------------------------- bisecting k-means

def descend(X, centers, left, right):
    """The leaf of a bisecting tree each row falls into: from the root, go to the nearer child.

    centers (m, d) per node; left/right (m,) child node ids, -1 at leaves."""
    node = np.zeros(X.shape[0], dtype=np.int64)
    while True:
        idx = np.nonzero(left[node] >= 0)[0]
        if len(idx) == 0:
            return node
        at = node[idx]
        Xi = X[idx]
        dl = ((Xi - centers[left[at]]) ** 2).sum(axis=1)
        dr = ((Xi - centers[right[at]]) ** 2).sum(axis=1)
        node[idx] = np.where(dr < dl, right[at], left[at])


def bisect_leaf_stats(X, y, index, centers, left, right, n_sample, seed):
    """(count, sum, sum of squared norms) per node for the rows at each leaf, and up to
    ``n_sample`` uniformly drawn rows per leaf (to seed its split): a dict leaf -> rows."""
    m, d = centers.shape
    leaf = descend(X, centers, left, right)
    count = np.bincount(leaf, minlength=m).astype(np.float64)
    sums = np.zeros((m, d))
    np.add.at(sums, leaf, X)
    sq = np.bincount(leaf, weights=np.einsum("ij,ij->i", X, X), minlength=m)
    rng = np.random.default_rng([seed, index])
    order = rng.permutation(X.shape[0])
    samples = {}
    by_leaf = leaf[order]
    for node in np.unique(leaf):
        samples[int(node)] = X[order[by_leaf == node][:n_sample]]
    return count, sums, sq, samples


def bisect_lloyd(X, y, centers, left, right, split_of, children):
    """One Lloyd step of 2-means inside every leaf being split.

    split_of (m,): the leaf's position among the leaves being split, -1 for the others;
    children (s, 2, d): the two candidate centers of each. Returns per split and child
    (count, sum, sum of squared distances to the child's center)."""
    s, _, d = children.shape
    leaf = descend(X, centers, left, right)
    which = split_of[leaf]
    rows = np.nonzero(which >= 0)[0]
    counts = np.zeros((s, 2))
    sums = np.zeros((s, 2, d))
    sse = np.zeros((s, 2))
    if len(rows) == 0:
        return counts, sums, sse
    w = which[rows]
    Xi = X[rows]
    d0 = ((Xi - children[w, 0]) ** 2).sum(axis=1)
    d1 = ((Xi - children[w, 1]) ** 2).sum(axis=1)
    side = (d1 < d0).astype(np.int64)
    slot = w * 2 + side
    counts += np.bincount(slot, minlength=2 * s).reshape(s, 2)
    flat = np.zeros((2 * s, d))
    np.add.at(flat, slot, Xi)
    sums += flat.reshape(s, 2, d)
    sse += np.bincount(slot, weights=np.where(side == 1, d1, d0), minlength=2 * s).reshape(s, 2)
    return counts, sums, sse


def bisect_labels(X, y, centers, left, right, leaf_label):
    """(cluster label per row, sum of squared distances to the row's leaf center) of a block."""
    leaf = descend(X, centers, left, right)
    return leaf_label[leaf], float(((X - centers[leaf]) ** 2).sum())


# ----------------------------------------------------------------------- silhouette

def _prepared(X, distance_measure):
    if distance_measure == "cosine":
        norms = np.sqrt(np.einsum("ij,ij->i", X, X))
        if (norms == 0).any():
            raise ValueError("the cosine silhouette needs non-zero feature vectors; a row is all "
                             "zeros")
        return X / norms[:, None]
    return X


def silhouette_cluster_stats(X, labels, distance_measure):
    """Per cluster label: (labels, count, sum of rows, sum of squared row norms)."""
    X = _prepared(X, distance_measure)
    keys, inv = np.unique(labels, return_inverse=True)
    count = np.bincount(inv, minlength=len(keys)).astype(np.float64)
    sums = np.zeros((len(keys), X.shape[1]))
    np.add.at(sums, inv, X)
    sq = np.bincount(inv, weights=np.einsum("ij,ij->i", X, X), minlength=len(keys))
    return keys, count, sums, sq


def silhouette_sum(X, labels, keys, count, sums, sq, distance_measure):
    """(sum of silhouettes, rows) of a block, given every cluster's stats.

    Squared Euclidean: sum over y in C of |x - y|^2 = n_C |x|^2 - 2 x.S_C + Q_C; cosine
    (1 - x.y on unit rows): n_C - x.S_C. A row's own cluster averages over the others
    (n_C - 1); a row alone in its cluster scores 0 (Spark's and scikit-learn's rule)."""
    X = _prepared(X, distance_measure)
    own = np.searchsorted(keys, labels)
    if distance_measure == "cosine":
        total = count[None, :] - X @ sums.T
    else:
        total = np.einsum("ij,ij->i", X, X)[:, None] * count[None, :] - 2.0 * X @ sums.T + sq[None, :]
    total = np.maximum(total, 0.0)
    n = X.shape[0]
    rows = np.arange(n)
    n_own = count[own]
    a = total[rows, own] / np.maximum(n_own - 1.0, 1.0)
    other = total / count[None, :]
    other[rows, own] = np.inf
    b = other.min(axis=1)
    denom = np.maximum(a, b)
    s = np.where(denom > 0, (b - a) / np.where(denom > 0, denom, 1.0), 0.0)
    s[n_own <= 1] = 0.0
    return float(s.sum()), n


def _scored_block(table, features, prediction):
    from shoal.ml._input import _arrow_vectors_to_matrix, check_finite
    X, labels = _arrow_vectors_to_matrix(table, list(features), prediction)
    check_finite(X, None, "Dataset")
    return X, labels


def silhouette_block_stats(table, features, prediction, distance_measure):
    """silhouette_cluster_stats of one Arrow block of a scored Dataset (runs in a task)."""
    X, labels = _scored_block(table, features, prediction)
    return silhouette_cluster_stats(X, labels, distance_measure)


def silhouette_block_sum(table, features, prediction, stats, distance_measure):
    """silhouette_sum of one Arrow block of a scored Dataset (runs in a task)."""
    X, labels = _scored_block(table, features, prediction)
    if X.shape[0] == 0:
        return 0.0, 0
    return silhouette_sum(X, labels, *stats, distance_measure)


def merge_cluster_stats(parts):
    """Per-block silhouette_cluster_stats folded into one, by cluster label."""
    parts = [p for p in parts if len(p[0])]
    keys = np.unique(np.concatenate([p[0] for p in parts]))
    d = parts[0][2].shape[1]
    count, sums, sq = np.zeros(len(keys)), np.zeros((len(keys), d)), np.zeros(len(keys))
    for k, c, s, q in parts:
        at = np.searchsorted(keys, k)
        count[at] += c
        sums[at] += s
        sq[at] += q
    return keys, count, sums, sq


# ----------------------------------------------------------------------- power iteration

def edge_vertices(X, y):
    """The distinct vertex ids of a block of (src, dst, weight) edges."""
    return np.unique(X[:, :2])


def edges_to_indices(X, y, ids):
    """A block of edges with vertex ids replaced by their positions in ``ids`` (sorted)."""
    out = X.copy()
    out[:, 0] = np.searchsorted(ids, X[:, 0])
    out[:, 1] = np.searchsorted(ids, X[:, 1])
    return out, y


def _edge_parts(X):
    i, j = X[:, 0].astype(np.int64), X[:, 1].astype(np.int64)
    w = X[:, 2] if X.shape[1] > 2 else np.ones(len(X))
    keep = i != j                    # s_ii is taken as 0, as Spark
    return i[keep], j[keep], w[keep]


def edge_degrees(X, y, n):
    """Each vertex's summed similarity over a block's edges (both directions)."""
    i, j, w = _edge_parts(X)
    return np.bincount(i, weights=w, minlength=n) + np.bincount(j, weights=w, minlength=n)


def edge_multiply(X, y, v):
    """The block's share of W v, W the symmetric similarity matrix of its edges."""
    i, j, w = _edge_parts(X)
    n = len(v)
    return np.bincount(i, weights=w * v[j], minlength=n) + np.bincount(j, weights=w * v[i], minlength=n)


def negative_weights(X, y):
    """How many of a block's edges have a negative similarity."""
    return int((X[:, 2] < 0).sum()) if X.shape[1] > 2 else 0


# ----------------------------------------------------------------------- LDA (online variational Bayes)

EPS = float(np.finfo(np.float64).eps)
_HALF_LOG_2PI = 0.5 * LOG_2PI


def _shift_up(x, minimum=7.0):
    """x moved up by whole steps until >= minimum, with the steps taken (for the recurrences)."""
    x = np.array(x, dtype=np.float64, copy=True)
    steps = []
    for _ in range(int(minimum)):
        low = x < minimum
        if not low.any():
            break
        steps.append((low, np.where(low, x, 1.0)))
        x = np.where(low, x + 1.0, x)
    return x, steps


def digamma(x):
    """The digamma function for x > 0 (recurrence up to 7, then the asymptotic series; ~1e-12)."""
    z, steps = _shift_up(x)
    inv = 1.0 / z
    inv2 = inv * inv
    out = np.log(z) - 0.5 * inv - inv2 * (1 / 12 - inv2 * (1 / 120 - inv2 * (1 / 252 - inv2 * (
        1 / 240 - inv2 / 132))))
    for low, v in steps:
        out = out - np.where(low, 1.0 / v, 0.0)
    return out


def lgamma(x):
    """log Gamma(x) for x > 0 (recurrence up to 7, then Stirling's series; ~1e-12)."""
    z, steps = _shift_up(x)
    inv = 1.0 / z
    inv2 = inv * inv
    out = (z - 0.5) * np.log(z) - z + _HALF_LOG_2PI + inv * (1 / 12 - inv2 * (1 / 360 - inv2 * (
        1 / 1260 - inv2 / 1680)))
    for low, v in steps:
        out = out - np.where(low, np.log(v), 0.0)
    return out


def dirichlet_expectation(a):
    """E[log theta] for theta ~ Dirichlet(a), along the last axis."""
    return digamma(a) - digamma(a.sum(axis=-1, keepdims=True))


def csr_parts(X):
    """(indptr, indices, data) of a CSR matrix, or of a dense array's nonzeros."""
    if hasattr(X, "indptr"):
        return X.indptr, X.indices, X.data
    rows, cols = np.nonzero(X)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=X.shape[0]))])
    return indptr, cols, X[rows, cols]


def lda_doc_topics(parts, lo, hi, exp_topic_word, alpha, max_iter, tol, rng, want_stats):
    """The variational E step of documents lo..hi: (gamma (n, k), sufficient statistics or None).

    Per document, gamma_d = alpha + exp(E[log theta_d]) * ((cnt / phi_norm) @ B^T) until the
    mean change falls under tol (Hoffman, Blei & Bach 2010; scikit-learn's loop). The
    statistics are still to be multiplied by exp(E[log beta]) (done once, on the driver)."""
    from shoal.ml.clustering._lda_kernels import doc_topics
    indptr, indices, data = parts
    n, k = hi - lo, exp_topic_word.shape[0]
    gamma = rng.gamma(100.0, 0.01, (n, k)) if rng is not None else np.ones((n, k))
    stats = np.zeros_like(exp_topic_word) if want_stats else np.zeros((1, 1))
    doc_topics(np.asarray(indptr, np.int64), np.asarray(indices, np.int64), np.asarray(data, np.float64),
               lo, hi, np.ascontiguousarray(exp_topic_word), float(alpha), int(max_iter), float(tol),
               gamma, stats, want_stats)
    return gamma, (stats if want_stats else None)


def lda_e_step(X, y, index, exp_topic_word, alpha, max_iter, tol, seed, step, n_steps):
    """One mini-batch's share of a block: its step-th of n_steps contiguous slices.
    Returns (sufficient statistics (k, V), documents seen)."""
    parts = csr_parts(X)
    n = len(parts[0]) - 1
    lo, hi = (step * n) // n_steps, ((step + 1) * n) // n_steps
    rng = None if seed is None else np.random.RandomState([seed, index, step])
    _, stats = lda_doc_topics(parts, lo, hi, exp_topic_word, alpha, max_iter, tol, rng, True)
    return stats, hi - lo


def lda_transform(X, exp_topic_word, alpha, max_iter, tol):
    """Unnormalised document-topic parameters gamma of every row (gamma initialised to ones)."""
    parts = csr_parts(X)
    return lda_doc_topics(parts, 0, len(parts[0]) - 1, exp_topic_word, alpha, max_iter, tol,
                          None, False)[0]


def lda_doc_bound(X, y, exp_topic_word, log_topic_word, alpha, max_iter, tol):
    """A block's documents' part of the variational bound, and its word count.

    sum_d [sum_w cnt log sum_k exp(E log theta_dk + E log beta_kw)] + the Dirichlet terms of
    theta (scikit-learn's ``_approx_bound`` without the topic-word terms)."""
    parts = csr_parts(X)
    indptr, indices, data = parts
    n, k = len(indptr) - 1, exp_topic_word.shape[0]
    gamma = lda_doc_topics(parts, 0, n, exp_topic_word, alpha, max_iter, tol, None, False)[0]
    log_theta = dirichlet_expectation(gamma)
    score = 0.0
    for i in range(n):
        a, b = indptr[i], indptr[i + 1]
        if a == b:
            continue
        t = log_theta[i][:, None] + log_topic_word[:, indices[a:b]]
        m = t.max(axis=0)
        score += float(data[a:b] @ (np.log(np.exp(t - m).sum(axis=0)) + m))
    score += float(((alpha - gamma) * log_theta).sum() + (lgamma(gamma) - lgamma(np.float64(alpha))).sum()
                   + (lgamma(np.float64(alpha * k)) - lgamma(gamma.sum(axis=1))).sum())
    return score, float(data.sum())


def lda_min_count(X, y):
    """The smallest count of a block (negative counts are rejected by the driver)."""
    data = csr_parts(X)[2]
    return float(data.min()) if len(data) else 0.0
