"""shoal.ml.clustering (GaussianMixture, BisectingKMeans) and ClusteringEvaluator against
scikit-learn on blobs, on arrays and on a Dataset.

Tolerances: GaussianMixture's EM runs the same steps as scikit-learn's from the same kind of
start (k-means responsibilities), so on well separated blobs it reaches the same optimum:
mean log-likelihood within 1e-6, means within 1e-4, identical labels. BisectingKMeans with
scikit-learn's strategy finds the same clusters: inertia within 1e-6 (relative). The
silhouette is exact arithmetic on both sides: 1e-9.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from sklearn import cluster as sk_cluster
from sklearn import metrics as sk_metrics
from sklearn import mixture as sk_mixture
from sklearn.datasets import make_blobs

import shoal.data as sd
import shoal.ml as ml
from shoal.exceptions import InvalidInputError
from shoal.ml.clustering import BisectingKMeans, GaussianMixture, KMeans
from tests.ml._cluster import cluster  # noqa: F401


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(1200, 4, centers=4, cluster_std=[1.0, 1.5, 0.5, 2.0], random_state=0)
    return X + 50.0, y      # an offset: the second moments must not lose the covariances


def _dataset(X, y=None):
    cols = {f"x{j}": X[:, j] for j in range(X.shape[1])}
    if y is not None:
        cols["label"] = y
    return sd.from_arrow(pa.table(cols)).repartition(3).materialize()


def _matched(a, b):
    """b's rows reordered to match a's (components come out in any order)."""
    return b[[int(np.argmin(((b - r) ** 2).sum(1))) for r in a]]


def test_the_subpackage_reexports_kmeans():
    assert KMeans is ml.KMeans and GaussianMixture is ml.GaussianMixture


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_gaussian_mixture_matches_scikit_learn(blobs, covariance_type):
    X, _ = blobs
    ours = GaussianMixture(4, covariance_type=covariance_type, random_state=0).fit(X)
    theirs = sk_mixture.GaussianMixture(4, covariance_type=covariance_type, random_state=0).fit(X)
    assert ours.converged_ and ours.lower_bound_ == pytest.approx(theirs.lower_bound_, abs=1e-6)
    np.testing.assert_allclose(ours.means_, _matched(ours.means_, theirs.means_), atol=1e-4)
    np.testing.assert_allclose(np.sort(ours.weights_), np.sort(theirs.weights_), atol=1e-6)
    assert sk_metrics.adjusted_rand_score(ours.predict(X), theirs.predict(X)) == 1.0
    np.testing.assert_allclose(ours.score_samples(X), theirs.score_samples(X), atol=1e-6)
    assert ours.bic(X) == pytest.approx(theirs.bic(X), rel=1e-8)
    assert ours.aic(X) == pytest.approx(theirs.aic(X), rel=1e-8)
    proba = ours.predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(ours.fit_predict(X), proba.argmax(axis=1))


def test_gaussian_mixture_restarts_keep_the_best_start(blobs):
    X = blobs[0][:600]
    # the first of three starts is the single start's (the same seed is drawn first)
    one = GaussianMixture(4, init_params="random", random_state=0).fit(X)
    three = GaussianMixture(4, init_params="random", n_init=3, random_state=0).fit(X)
    assert three.lower_bound_ >= one.lower_bound_ - 1e-12
    assert three.converged_ and np.isfinite(three.lower_bound_)


def test_gaussian_mixture_on_a_dataset_matches_arrays(blobs, cluster):  # noqa: F811
    X, _ = blobs
    ds = _dataset(X)
    ours = GaussianMixture(4, random_state=0).fit(ds, features=["x0", "x1", "x2", "x3"])
    ref = GaussianMixture(4, random_state=0).fit(X)
    assert ours.lower_bound_ == pytest.approx(ref.lower_bound_, abs=1e-6)
    out = ours.predict_proba(ds).to_numpy("probability")
    np.testing.assert_allclose(out, ours.predict_proba(X), atol=1e-8)


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_gaussian_mixture_compiled_e_step_matches_numpy(covariance_type):
    """The fused kernel against the NumPy formulas: rows not a whole number of tiles, a
    component of weight 0 (log-density -inf everywhere), rows far from the shift."""
    from shoal.ml.clustering import _kernels as K
    rng = np.random.default_rng(3)
    X = rng.normal(size=(1000 + 37, 6)) * 3.0 + 20.0
    shift = X.mean(axis=0) + 0.5
    k, d = 4, X.shape[1]
    means = rng.normal(size=(k, d))
    A = rng.normal(size=(k, d, d))
    cov = A @ A.transpose(0, 2, 1) / d + np.eye(d)
    if covariance_type == "full":
        prec_chol = np.linalg.inv(np.linalg.cholesky(cov)).transpose(0, 2, 1)
    else:
        prec_chol = 1.0 / np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
    with np.errstate(divide="ignore"):
        log_w = np.log(np.array([0.5, 0.3, 0.2, 0.0]))
    got = K.gmm_e_step(X, None, shift, log_w, means, prec_chol, covariance_type)
    lp = K.gaussian_log_prob(X - shift, means, prec_chol, covariance_type) + log_w
    norm = K.log_sum_exp(lp)
    want = (norm.sum(),) + K._moment_sums(X - shift, np.exp(lp - norm[:, None]), covariance_type)
    assert got[0] == pytest.approx(want[0], rel=1e-12)
    for g, w in zip(got[1:], want[1:]):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-9)
    assert got[1][3] == 0.0


def test_gaussian_mixture_local_threads_share_each_pass():
    """In-process rows cut into one view per thread, the passes run by one kept pool: the
    sums are those of the whole block."""
    from shoal.ml._executor import LocalExecutor, held_threads
    from shoal.ml._input import as_design_matrix
    from shoal.ml.clustering import _kernels as K
    from shoal.ml.clustering._gaussian_mixture import _split_for_threads
    X = np.random.default_rng(4).normal(size=(30_001, 3))
    dm = as_design_matrix(X, executor="local")
    dm = type(dm)(dm.blocks, dm.block_rows, dm.n_features, None, LocalExecutor(3))
    split = _split_for_threads(dm)
    assert len(split.blocks) == 3 and sum(split.block_rows) == len(X)
    np.testing.assert_array_equal(np.concatenate([b[0] for b in split.blocks]), X)
    args = (X.mean(axis=0), np.log([0.5, 0.5]), np.array([[0.0] * 3, [1.0] * 3]),
            np.stack([np.eye(3), 2 * np.eye(3)]), "full")
    with held_threads(split) as em:
        assert em.executor._pool is not None
        parts = [em.map_reduce(K.gmm_e_step, *args) for _ in range(2)]
    whole = K.gmm_e_step(X, None, *args)
    for part in parts:
        assert part[0] == pytest.approx(whole[0], rel=1e-12)
        for a, b in zip(part[1:], whole[1:]):
            np.testing.assert_allclose(a, b, rtol=1e-11)


def test_gaussian_mixture_starts_from_k_means_on_a_sample_above_its_rows():
    """Above KMEANS_ROWS rows the k-means start runs on a uniform sample; EM over all rows
    reaches scikit-learn's optimum (log-likelihood within 1e-6)."""
    from shoal.ml.clustering import _gaussian_mixture as G
    X, _ = make_blobs(G.KMEANS_ROWS + 9_000, 3, centers=3, random_state=1)
    ours = GaussianMixture(3, random_state=0).fit(X)
    theirs = sk_mixture.GaussianMixture(3, random_state=0).fit(X)
    assert ours.converged_ and ours.lower_bound_ == pytest.approx(theirs.lower_bound_, abs=1e-6)
    np.testing.assert_allclose(ours.means_, _matched(ours.means_, theirs.means_), atol=1e-4)


def test_gaussian_mixture_rejects_bad_parameters_and_collapsed_components():
    X = np.random.default_rng(0).normal(size=(50, 2))
    with pytest.raises(InvalidInputError, match="covariance_type"):
        GaussianMixture(2, covariance_type="tied").fit(X)
    with pytest.raises(InvalidInputError, match="n_components = 60, n_samples = 50"):
        GaussianMixture(60).fit(X)
    X = np.repeat(np.array([[0.0, 0.0], [1.0, 1.0]]), 20, axis=0)
    with pytest.raises(InvalidInputError, match="increase reg_covar"):
        GaussianMixture(2, reg_covar=0.0, random_state=0).fit(X)


def test_bisecting_kmeans_matches_scikit_learn(blobs):
    X, _ = blobs
    ours = BisectingKMeans(4, random_state=0).fit(X)
    theirs = sk_cluster.BisectingKMeans(4, random_state=0).fit(X)
    assert ours.inertia_ == pytest.approx(theirs.inertia_, rel=1e-6)
    assert sk_metrics.adjusted_rand_score(ours.labels_, theirs.labels_) == 1.0
    np.testing.assert_array_equal(ours.predict(X), ours.labels_)
    assert -ours.score(X) == pytest.approx(ours.inertia_)
    assert ours.transform(X).shape == (len(X), 4)


def test_bisecting_kmeans_level_strategy_and_few_distinct_rows(blobs):
    X, _ = blobs
    level = BisectingKMeans(6, bisecting_strategy="level", random_state=0).fit(X)
    assert len(level.cluster_centers_) == 6 and set(level.labels_) == set(range(6))
    # three distinct rows cannot make five clusters: it stops at three
    few = BisectingKMeans(5, random_state=0).fit(np.repeat(np.eye(3), 10, axis=0))
    assert len(few.cluster_centers_) == 3 and few.inertia_ == 0.0


def test_bisecting_kmeans_on_a_dataset(blobs, cluster):  # noqa: F811
    X, _ = blobs
    ds = _dataset(X)
    ours = BisectingKMeans(4, random_state=0).fit(ds, features=["x0", "x1", "x2", "x3"])
    assert ours.inertia_ == pytest.approx(BisectingKMeans(4, random_state=0).fit(X).inertia_, rel=1e-6)
    np.testing.assert_array_equal(ours.predict(ds).to_numpy("prediction"), ours.predict(X))


@pytest.mark.parametrize("measure,metric", [("squaredEuclidean", "sqeuclidean"), ("cosine", "cosine")])
def test_clustering_evaluator_is_the_silhouette(blobs, measure, metric):
    X, y = blobs
    X = X - 50.0
    ev = ml.ClusteringEvaluator(distance_measure=measure)
    assert ev._score(X, y) == pytest.approx(sk_metrics.silhouette_score(X, y, metric=metric), abs=1e-9)
    y1 = y.copy()
    y1[0] = 9                     # a cluster of one row scores 0, as scikit-learn
    assert ev._score(X, y1) == pytest.approx(sk_metrics.silhouette_score(X, y1, metric=metric), abs=1e-9)


def test_clustering_evaluator_on_a_scored_dataset_and_as_a_scorer(blobs, cluster):  # noqa: F811
    X, _ = blobs
    ds = _dataset(X)
    names = ["x0", "x1", "x2", "x3"]
    km = ml.KMeans(4, random_state=0).fit(ds, features=names)
    scored = km.predict(ds)
    want = sk_metrics.silhouette_score(X, km.predict(X), metric="sqeuclidean")
    assert ml.ClusteringEvaluator(features_col=names).evaluate(scored) == pytest.approx(want, abs=1e-9)
    vec = ml.VectorAssembler(names).fit(ds).transform(scored)     # Spark's "features" vector column
    assert ml.ClusteringEvaluator().evaluate(vec) == pytest.approx(want, abs=1e-9)
    assert ml.ClusteringEvaluator().evaluate(vec.to_pandas()) == pytest.approx(want, abs=1e-9)
    assert ml.ClusteringEvaluator()(ml.KMeans(4, random_state=0).fit(X), X) == pytest.approx(want, abs=1e-9)


def test_clustering_evaluator_rejects_one_cluster_and_missing_columns(blobs):
    X, _ = blobs
    with pytest.raises(InvalidInputError, match="at least 2 clusters"):
        ml.ClusteringEvaluator()._score(X, np.zeros(len(X)))
    with pytest.raises(InvalidInputError, match="column 'features' is missing"):
        ml.ClusteringEvaluator().evaluate(pa.table({"x": [1.0], "prediction": [0]}))
    with pytest.raises(InvalidInputError, match="distance_measure"):
        ml.ClusteringEvaluator(distance_measure="manhattan").evaluate(pa.table({"x": [1.0]}))


def _circles(n1, n2):
    """Two concentric circles as a fully connected graph of Gaussian similarities (Spark's
    PIC example); the ground truth is the circle of each vertex."""
    t1, t2 = 2 * np.pi * np.arange(n1) / n1, 2 * np.pi * np.arange(n2) / n2
    P = np.vstack([np.c_[np.cos(t1), np.sin(t1)], 4 * np.c_[np.cos(t2), np.sin(t2)]])
    i, j = np.triu_indices(len(P), 1)
    return np.c_[i, j, np.exp(-((P[i] - P[j]) ** 2).sum(1) / 2)], np.r_[np.zeros(n1), np.ones(n2)]


def test_power_iteration_clustering_reproduces_sparks_example():
    from shoal.ml.clustering import PowerIterationClustering
    edges = pd.DataFrame({"src": [0, 0, 1, 3, 4], "dst": [1, 2, 2, 4, 0],
                          "weight": [1.0, 1.0, 1.0, 1.0, 0.1]})
    out = PowerIterationClustering(2, max_iter=20, init_mode="degree", weight_col="weight") \
        .assign_clusters(edges)
    assert out["id"].tolist() == [0, 1, 2, 3, 4]
    c = out["cluster"].tolist()
    assert c[0] == c[1] == c[2] != c[3] == c[4]       # Spark's documented assignment


@pytest.mark.parametrize("init_mode", ["random", "degree"])
def test_power_iteration_clustering_separates_two_circles(init_mode, cluster):  # noqa: F811
    from shoal.ml.clustering import PowerIterationClustering
    E, truth = _circles(30, 60)
    pic = PowerIterationClustering(2, max_iter=40, init_mode=init_mode, random_state=0)
    out = pic.assign_clusters(E)
    assert sk_metrics.adjusted_rand_score(out["cluster"], truth) == 1.0
    ds = sd.from_arrow(pa.table({"a": E[:, 0].astype(np.int64), "b": E[:, 1].astype(np.int64),
                                 "s": E[:, 2]})).repartition(3)
    pic = PowerIterationClustering(2, max_iter=40, init_mode=init_mode, src_col="a", dst_col="b",
                                   weight_col="s", random_state=0)
    assert sk_metrics.adjusted_rand_score(pic.assign_clusters(ds)["cluster"], truth) == 1.0


def test_power_iteration_clustering_rejects_negative_similarities():
    from shoal.ml.clustering import PowerIterationClustering
    with pytest.raises(InvalidInputError, match="must be >= 0"):
        PowerIterationClustering(2, weight_col="w").assign_clusters(
            pd.DataFrame({"src": [0, 1], "dst": [1, 2], "w": [1.0, -1.0]}))
    with pytest.raises(InvalidInputError, match="fewer than k=5"):
        PowerIterationClustering(5).assign_clusters(np.array([[0, 1], [1, 2]]))
