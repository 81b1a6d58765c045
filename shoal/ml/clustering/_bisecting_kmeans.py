"""BisectingKMeans: divisive k-means (Spark's BisectingKMeans), every split's 2-means on per-block sums."""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, ClusterMixin, TransformerMixin

from shoal.exceptions import InvalidInputError
from shoal.ml._base import ShoalEstimatorMixin, check_fitted, fit_input, on_dataset, transform_dataset
from shoal.ml._executor import held_by_shards
from shoal.ml._input import _is_dataset, check_predict_input
from shoal.ml.clustering import _kernels as K

STRATEGIES = ("level", "biggest_inertia", "largest_cluster")
SAMPLE_PER_LEAF = 256    # rows per block and leaf drawn to seed that leaf's split
SEED_TRIALS = 5          # 2-means++ starts tried on those rows; the best seeds the split
_EPS = 1e-14             # a leaf whose cost per row is below this cannot be split (Spark's EPSILON)


class BisectingKMeans(ShoalEstimatorMixin, ClassNamePrefixFeaturesOutMixin, TransformerMixin,
                      ClusterMixin, BaseEstimator):
    """Hierarchical divisive k-means: start with one cluster, split leaves in two by 2-means
    until there are ``n_clusters`` leaves (Spark's BisectingKMeans; scikit-learn's API).

    No row carries state between passes: a row's leaf is found by descending the tree
    (to the nearer child at each split), so each pass is one task per block returning per
    leaf sums, and all the leaves being split run their 2-means Lloyd steps in the same
    passes. A split is seeded by the best of a few 2-means++ starts on rows drawn from the leaf.

    Parameters (scikit-learn's names, and Spark's where scikit-learn has none):
        n_clusters: leaves wanted (Spark's ``k``); fewer come back when no leaf can be split
        (too few distinct rows). max_iter: Lloyd steps per split (Spark's default 20).
        min_divisible_cluster_size: a leaf with fewer rows is not split (>= 1: a row count;
        < 1: a fraction of all rows). bisecting_strategy: scikit-learn's "biggest_inertia"
        (default) or "largest_cluster": one leaf per round, the one with the largest sum of
        squared distances or the most rows; or "level", Spark's: every divisible leaf at
        once, the largest first when fewer splits are needed (fewer passes; a split made
        early can cut a natural cluster that a later choice would have kept whole). random_state: seeds the splits.

    Fitted: cluster_centers_ (leaves, left to right), labels_, inertia_, n_iter_ (Lloyd
    passes), n_features_in_, feature_names_in_. predict and transform descend the tree as Spark.
    """

    _fits_design_matrix = True

    def __init__(self, n_clusters=8, *, max_iter=20, min_divisible_cluster_size=1.0,
                 bisecting_strategy="biggest_inertia", random_state=None):
        self.n_clusters = n_clusters
        self.max_iter = max_iter
        self.min_divisible_cluster_size = min_divisible_cluster_size
        self.bisecting_strategy = bisecting_strategy
        self.random_state = random_state

    def _check_params(self, n):
        for name in ("n_clusters", "max_iter"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise InvalidInputError(f"BisectingKMeans {name}={v!r} must be a positive int")
        if self.bisecting_strategy not in STRATEGIES:
            raise InvalidInputError(f"BisectingKMeans bisecting_strategy={self.bisecting_strategy!r} "
                                    f"must be one of {STRATEGIES}")
        m = self.min_divisible_cluster_size
        if not (np.isfinite(m) and m > 0):
            raise InvalidInputError(f"BisectingKMeans min_divisible_cluster_size={m!r} must be > 0")
        if n < self.n_clusters:
            raise InvalidInputError(f"n_samples={n} should be >= n_clusters={self.n_clusters}.")

    def fit(self, X, y=None, *, features=None, label=None):
        """Grow the bisecting tree to n_clusters leaves; returns self."""
        dm = fit_input(self, X, y, None, features=features, label=label)
        n = dm.n_rows
        self._check_params(n)
        rs = self.random_state
        rng = rs if isinstance(rs, np.random.RandomState) else np.random.RandomState(rs)
        seed = int(rng.randint(0, 2**31 - 1))
        gen = np.random.default_rng(seed)
        min_size = self.min_divisible_cluster_size
        min_size = min_size if min_size >= 1.0 else np.ceil(min_size * n)
        d = dm.n_features
        centers, left, right = np.zeros((1, d)), np.array([-1]), np.array([-1])
        with held_by_shards(dm) as held:
            passes = 0
            while True:
                count, sums, sq, samples = self._leaf_stats(held, centers, left, right, seed + passes)
                passes += 1
                leaves = np.nonzero(left < 0)[0]
                centers[leaves] = sums[leaves] / np.maximum(count[leaves], 1.0)[:, None]
                cost = np.maximum(sq - (sums ** 2).sum(axis=1) / np.maximum(count, 1.0), 0.0)
                if len(leaves) >= self.n_clusters:
                    break
                split = self._choose(leaves, count, cost, min_size)
                if not len(split):
                    break
                children = np.stack([self._seed_split(samples[int(j)], gen) for j in split])
                children, counts, sse, steps = self._two_means(held, centers, left, right, split, children)
                passes += steps
                for s, j in enumerate(split):
                    if counts[s].min() == 0:     # 2-means put every row on one side: leave it
                        continue
                    m = len(centers)
                    centers = np.vstack([centers, children[s]])
                    left, right = np.append(left, [-1, -1]), np.append(right, [-1, -1])
                    left[j], right[j] = m, m + 1
                if len(np.nonzero(left < 0)[0]) == len(leaves):
                    break
            self._set_tree(centers, left, right)
            parts = held.map(K.bisect_labels, centers, left, right, self._leaf_label)
        self.labels_ = np.concatenate([p[0] for p in parts]).astype(np.int32)
        self.inertia_ = float(sum(p[1] for p in parts))
        self.n_iter_ = passes
        return self

    @staticmethod
    def _leaf_stats(dm, centers, left, right, seed):
        parts = dm.map_indexed(K.bisect_leaf_stats, centers, left, right, SAMPLE_PER_LEAF, seed)
        count = sum(p[0] for p in parts)
        sums = sum(p[1] for p in parts)
        sq = sum(p[2] for p in parts)
        samples = {}
        for p in parts:
            for node, rows in p[3].items():
                samples.setdefault(node, []).append(rows)
        return count, sums, sq, {k: np.concatenate(v) for k, v in samples.items()}

    def _choose(self, leaves, count, cost, min_size):
        divisible = [j for j in leaves if count[j] >= max(min_size, 2) and cost[j] > _EPS * count[j]]
        need = self.n_clusters - len(leaves)
        if self.bisecting_strategy == "level":
            divisible.sort(key=lambda j: -count[j])
            return np.array(divisible[:need], dtype=np.int64)
        if not divisible:
            return np.array([], dtype=np.int64)
        key = cost if self.bisecting_strategy == "biggest_inertia" else count
        return np.array([max(divisible, key=lambda j: key[j])], dtype=np.int64)

    @staticmethod
    def _seed_split(rows, gen, trials=SEED_TRIALS, steps=10):
        """Two starting centers: the best of a few 2-means++ starts refined by Lloyd on rows
        drawn from the leaf (one start on the leaf's rows lands in a poor split too often)."""
        best, best_sse = None, np.inf
        for _ in range(trials):
            first = rows[gen.integers(len(rows))]
            d2 = ((rows - first) ** 2).sum(axis=1)
            if d2.sum() <= 0:
                return np.stack([first, first])
            C = np.stack([first, rows[gen.choice(len(rows), p=d2 / d2.sum())]])
            for _ in range(steps):
                D = ((rows[:, None, :] - C[None]) ** 2).sum(axis=2)
                side = D.argmin(axis=1)
                for c in (0, 1):
                    if (side == c).any():
                        C[c] = rows[side == c].mean(axis=0)
            sse = float(((rows[:, None, :] - C[None]) ** 2).sum(axis=2).min(axis=1).sum())
            if sse < best_sse:
                best, best_sse = C, sse
        return best

    def _two_means(self, dm, centers, left, right, split, children):
        split_of = np.full(len(centers), -1, dtype=np.int64)
        split_of[split] = np.arange(len(split))
        steps = 0
        for steps in range(1, self.max_iter + 1):
            counts, sums, sse = dm.map_reduce(K.bisect_lloyd, centers, left, right, split_of, children)
            new = np.where(counts[..., None] > 0, sums / np.maximum(counts, 1.0)[..., None], children)
            moved = float(((new - children) ** 2).sum())
            children = new
            if moved <= 1e-12 * max(float((children ** 2).sum()), 1.0):
                break
        return children, counts, sse, steps

    def _set_tree(self, centers, left, right):
        """Leaves numbered left to right (depth first), their centers as cluster_centers_."""
        order = []
        stack = [0]
        while stack:
            j = stack.pop()
            if left[j] < 0:
                order.append(j)
            else:
                stack += [right[j], left[j]]
        self._centers, self._left, self._right = centers, left, right
        self._leaf_label = np.full(len(centers), -1, dtype=np.int64)
        self._leaf_label[order] = np.arange(len(order))
        self.cluster_centers_ = centers[order]
        self._n_features_out = len(order)

    @on_dataset
    def predict(self, X):
        """The leaf cluster of each row (down the tree, as Spark)."""
        check_fitted(self, "cluster_centers_")
        X = check_predict_input(self, X, "predict")
        return self._leaf_label[K.descend(X, self._centers, self._left, self._right)].astype(np.int32)

    def transform(self, X):
        """Euclidean distance of each row to every cluster center, (n, n_clusters found)."""
        check_fitted(self, "cluster_centers_")
        if _is_dataset(X):
            return transform_dataset(self, X)
        X = check_predict_input(self, X, "transform")
        C = self.cluster_centers_
        D = np.einsum("ij,ij->i", X, X)[:, None] - 2.0 * X @ C.T + np.einsum("ij,ij->i", C, C)
        return np.sqrt(np.maximum(D, 0.0))

    def fit_predict(self, X, y=None, *, features=None, label=None):
        """Fit, then the cluster of each row (a Dataset: the Dataset with a prediction column)."""
        self.fit(X, y, features=features, label=label)
        return self.predict(X) if _is_dataset(X) else self.labels_

    def score(self, X, y=None):
        """Minus the sum of squared distances of X's rows to their leaf centers."""
        check_fitted(self, "cluster_centers_")
        X = check_predict_input(self, X, "score")
        return -K.bisect_labels(X, None, self._centers, self._left, self._right, self._leaf_label)[1]
