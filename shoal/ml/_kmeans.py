"""KMeans: k-means|| initialisation (Bahmani et al., as in Spark) and Lloyd iterations on per-block sums.

The data is read ``init_steps + 2 + n_iter`` times: one pass gathers the feature moments and a
uniform sample of rows (SAMPLE_ROWS), ``init_steps`` passes draw the k-means|| candidates, then
Lloyd's passes and a last one for labels and inertia. The uniform sample stands in for the data
where k-means|| only needs an estimate: the sampling cost of the second and later steps (it sets
how many candidates are drawn) and the weight of each candidate before the driver reduces the
candidates to k centers with weighted k-means++ (Spark makes both full passes). When the data
has no more rows than the sample would hold, the sample is the data and both are exact.
"""
from __future__ import annotations

import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, ClusterMixin, TransformerMixin
from sklearn.exceptions import ConvergenceWarning

from shoal.exceptions import InvalidInputError
from shoal.ml._kernels import (_block_labels, _block_lloyd, _block_moments_and_rows, _block_sample,
                               _block_uniform_rows, _min_sq_dist)
from shoal.ml._executor import held_by_shards
from shoal.ml._base import ShoalEstimatorMixin, check_fitted, fit_input, on_dataset, transform_dataset
from shoal.ml._input import _is_dataset, check_predict_input
from shoal.ml._stats import class_sums, merge_moments

SAMPLE_ROWS = 50_000           # uniformly drawn rows that stand in for the data in k-means|| estimates,
SAMPLE_ROWS_PER_CLUSTER = 1000  # or this many per cluster if that is more


def _weighted_kmeanspp(points, weights, k, rng, n_iter=30):
    """k-means++ then weighted Lloyd on the (few) k-means|| candidates, in the driver."""
    n = points.shape[0]
    n_trials = 2 + int(np.log(k))
    centers = [points[rng.choice(n, p=weights / weights.sum())]]
    d2 = ((points - centers[0]) ** 2).sum(axis=1)
    for _ in range(1, k):
        p = weights * d2
        if p.sum() <= 0:
            p = weights.copy()
        cand = rng.choice(n, size=n_trials, p=p / p.sum())
        cand_d2 = np.minimum(d2, ((points[None, :, :] - points[cand][:, None, :]) ** 2).sum(axis=2))
        best = int(np.argmin(cand_d2 @ weights))
        centers.append(points[cand[best]])
        d2 = cand_d2[best]
    C = np.array(centers)
    for _ in range(n_iter):
        idx = ((points[:, None, :] - C[None]) ** 2).sum(axis=2).argmin(axis=1)
        w = np.bincount(idx, weights=weights, minlength=k)
        sums = class_sums(points * weights[:, None], idx, k)
        nonempty = w > 0
        newC = C.copy()
        newC[nonempty] = sums[nonempty] / w[nonempty, None]
        if np.allclose(newC, C):
            break
        C = newC
    return C


class KMeans(ShoalEstimatorMixin, ClassNamePrefixFeaturesOutMixin, TransformerMixin, ClusterMixin,
             BaseEstimator):
    """k-means clustering: k-means|| seeding, then Lloyd's algorithm over distributed per-block sums.

    init: "k-means||" (default, as in Spark), "random" (k uniformly drawn rows) or an array
    (n_clusters, n_features). ``tol`` is relative to the mean feature variance (scikit-learn's rule).
    """

    _fits_design_matrix = True

    def __init__(self, n_clusters=8, *, init="k-means||", n_init=1, max_iter=300, tol=1e-4,
                 init_steps=2, random_state=None):
        self.n_clusters = n_clusters
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.init_steps = init_steps
        self.random_state = random_state

    def _validate(self, n):
        if not (isinstance(self.n_clusters, (int, np.integer)) and self.n_clusters >= 1):
            raise InvalidInputError(f"n_clusters must be a positive integer, got {self.n_clusters!r}")
        if n < self.n_clusters:
            raise InvalidInputError(f"n_samples={n} should be >= n_clusters={self.n_clusters}.")
        if not (isinstance(self.max_iter, (int, np.integer)) and self.max_iter >= 1):
            raise InvalidInputError(f"max_iter must be a positive integer, got {self.max_iter!r}")
        if not (isinstance(self.n_init, (int, np.integer)) and self.n_init >= 1):
            raise InvalidInputError(f"n_init must be a positive integer, got {self.n_init!r}")
        if isinstance(self.init, str) and self.init not in ("k-means||", "random"):
            raise InvalidInputError(f"init must be 'k-means||', 'random' or an array, got {self.init!r}")

    def _init_parallel(self, dm, seed, rng, moments, sample):
        k = self.n_clusters
        n, mean, M2 = moments
        scale = n / max(len(sample), 1)           # data rows per sampled row
        C = sample[rng.integers(len(sample))][None, :] if len(sample) else self._random_rows(dm, 1, seed, rng)
        oversampling = 2.0 * k
        for step in range(self.init_steps):
            if step == 0 and len(C) == 1:   # exact: sum |x - c|^2 = sum M2 + n |mean - c|^2
                cost = float(M2.sum() + n * ((mean - C[0]) ** 2).sum())
            else:
                cost = scale * float(_min_sq_dist(sample, C, np.einsum("ij,ij->i", C, C))[0].sum())
            if cost <= 0:
                break
            new = np.concatenate(dm.map_indexed(_block_sample, C, oversampling, cost, seed + 1 + step))
            if len(new):
                C = np.vstack([C, new])
        C = np.unique(C, axis=0)
        if len(C) < k:
            C = np.unique(np.vstack([C, sample[rng.permutation(len(sample))[:2 * k]]]), axis=0)
        if len(C) < k and len(sample) < n:
            C = np.unique(np.vstack([C, self._random_rows(dm, 2 * k, seed + 99, rng)]), axis=0)
        if len(C) <= k:
            return C if len(C) == k else _pad_centers(C, k, rng)
        # each candidate is a data row, so it weighs at least 1
        nearest = _min_sq_dist(sample, C, np.einsum("ij,ij->i", C, C))[1]
        weights = np.maximum(scale * np.bincount(nearest, minlength=len(C)), 1.0)
        return _weighted_kmeanspp(C, weights, k, rng)

    def _random_rows(self, dm, m, seed, rng):
        sizes = np.asarray(dm.block_rows, dtype=np.float64)
        frac = np.minimum(1.0, 2.0 * m / sizes.sum())
        rows = np.concatenate(dm.map_indexed(_block_uniform_rows, np.full(len(sizes), frac), seed))
        if len(rows) < m:
            rows = np.concatenate(dm.map_indexed(_block_uniform_rows, np.ones(len(sizes)), seed))
        return rows[rng.permutation(len(rows))[:m]]

    def _random_init(self, dm, seed, rng, sample):
        """k distinct rows drawn uniformly (from the uniform sample while it holds k distinct rows)."""
        k = self.n_clusters
        rows = sample[rng.permutation(len(sample))[:4 * k]]
        first = np.sort(np.unique(rows, axis=0, return_index=True)[1])
        if len(first) < k:
            rows = sample if len(sample) == dm.n_rows else self._random_rows(dm, dm.n_rows, seed, rng)
            rows = rows[rng.permutation(len(rows))]
            first = np.sort(np.unique(rows, axis=0, return_index=True)[1])
        C = rows[first[:k]]
        return C if len(C) == k else _pad_centers(C, k, rng)

    def _run_once(self, dm, seed, tol_abs, moments, sample):
        rng = np.random.default_rng(seed)
        if isinstance(self.init, str):
            C = (self._init_parallel(dm, seed, rng, moments, sample) if self.init == "k-means||"
                 else self._random_init(dm, seed, rng, sample))
        else:
            C = np.array(self.init, dtype=np.float64)
            if C.shape != (self.n_clusters, dm.n_features):
                raise InvalidInputError(f"init array must have shape ({self.n_clusters}, {dm.n_features}), "
                                        f"got {C.shape}")
        n_iter = 0
        for n_iter in range(1, self.max_iter + 1):
            sums, counts = dm.map_reduce(_block_lloyd, C)
            newC = C.copy()
            nonempty = counts > 0
            newC[nonempty] = sums[nonempty] / counts[nonempty, None]   # an empty cluster keeps its center
            shift = float(((newC - C) ** 2).sum())
            C = newC
            if shift <= tol_abs:
                break
        else:
            if self.max_iter > 1:
                warnings.warn(f"KMeans did not converge in max_iter={self.max_iter} iterations",
                              ConvergenceWarning)
        parts = dm.map(_block_labels, C)
        labels = np.concatenate([p[0] for p in parts])
        inertia = float(sum(p[1] for p in parts))
        return C, labels, inertia, n_iter

    def fit(self, X, y=None, *, features=None, label=None):
        dm = fit_input(self, X, y, None, features=features, label=label)
        self._validate(dm.n_rows)
        seed0 = np.random.RandomState(self.random_state).randint(0, 2**31 - 1) \
            if not isinstance(self.random_state, np.random.RandomState) else self.random_state.randint(2**31 - 1)
        fraction = min(1.0, max(SAMPLE_ROWS, SAMPLE_ROWS_PER_CLUSTER * self.n_clusters) / dm.n_rows)
        parts = dm.map_indexed(_block_moments_and_rows, fraction, seed0 + 1)
        moments = parts[0][0]
        for p in parts[1:]:
            moments = merge_moments(moments, p[0])
        sample = np.concatenate([p[1] for p in parts])
        n, mean, M2 = moments
        tol_abs = float(self.tol * np.mean(M2 / n))
        n_init = self.n_init if isinstance(self.init, str) else 1
        best = None
        with held_by_shards(dm) as held:     # the blocks stay mapped across Lloyd's passes
            for r in range(n_init):
                result = self._run_once(held, seed0 + 7919 * r, tol_abs, moments, sample)
                if best is None or result[2] < best[2]:
                    best = result
        self.cluster_centers_, self.labels_, self.inertia_, self.n_iter_ = best
        self.labels_ = self.labels_.astype(np.int32)
        self._n_features_out = self.n_clusters
        return self

    @on_dataset
    def predict(self, X):
        check_fitted(self, "cluster_centers_")
        X = check_predict_input(self, X, "predict")
        return _block_labels(X, None, self.cluster_centers_)[0].astype(np.int32)

    def transform(self, X):
        check_fitted(self, "cluster_centers_")
        if _is_dataset(X):
            return transform_dataset(self, X)     # lazy: kmeans0.. distance columns
        X = check_predict_input(self, X, "transform")
        C = self.cluster_centers_
        D = (np.einsum("ij,ij->i", X, X)[:, None] - 2.0 * X @ C.T + np.einsum("ij,ij->i", C, C))
        return np.sqrt(np.maximum(D, 0.0))

    def fit_predict(self, X, y=None, *, features=None, label=None):
        self.fit(X, y, features=features, label=label)
        return self.predict(X) if _is_dataset(X) else self.labels_

    def score(self, X, y=None):
        check_fitted(self, "cluster_centers_")
        X = check_predict_input(self, X, "score")
        return -_block_labels(X, None, self.cluster_centers_)[1]


def _pad_centers(C, k, rng):
    """Fewer distinct points than clusters: repeat some, jittered, so there are k centers."""
    if len(C) == 0:
        raise InvalidInputError("KMeans found no rows to seed its centers")
    extra = C[rng.integers(len(C), size=k - len(C))]
    return np.vstack([C, extra])
