"""Naive Bayes, KMeans and PCA against scikit-learn."""
import numpy as np
import pytest
import sklearn.cluster as skc
import sklearn.decomposition as skd
import sklearn.naive_bayes as sknb
from sklearn.datasets import make_blobs, make_classification

import shoal.ml as ml


@pytest.fixture(scope="module")
def data():
    return make_classification(1200, 6, n_informative=4, n_classes=3, random_state=0)


def test_gaussian_nb_matches_sklearn(data):
    X, y = data
    a, b = ml.GaussianNB().fit(X, y), sknb.GaussianNB().fit(X, y)
    np.testing.assert_allclose(a.theta_, b.theta_, atol=1e-12)
    np.testing.assert_allclose(a.var_, b.var_, rtol=1e-10)
    np.testing.assert_allclose(a.predict_proba(X), b.predict_proba(X), atol=1e-10)


def test_multinomial_nb_matches_sklearn(data):
    _, y = data
    X = np.random.default_rng(0).poisson(2.0, size=(len(y), 7)).astype(float)
    a, b = ml.MultinomialNB(alpha=0.5).fit(X, y), sknb.MultinomialNB(alpha=0.5).fit(X, y)
    np.testing.assert_allclose(a.feature_log_prob_, b.feature_log_prob_, atol=1e-12)
    np.testing.assert_allclose(a.predict_proba(X), b.predict_proba(X), atol=1e-10)


def test_multinomial_nb_rejects_negative_counts():
    with pytest.raises(ValueError, match="Negative values"):
        ml.MultinomialNB().fit(np.array([[1.0, -1.0], [0.0, 2.0]]), [0, 1])


def test_bernoulli_nb_matches_sklearn(data):
    X, y = data
    a, b = ml.BernoulliNB(binarize=0.1).fit(X, y), sknb.BernoulliNB(binarize=0.1).fit(X, y)
    np.testing.assert_allclose(a.predict_proba(X), b.predict_proba(X), atol=1e-10)


@pytest.fixture(scope="module")
def blobs():
    return make_blobs(4000, 5, centers=5, cluster_std=1.0, random_state=3)[0]


def test_kmeans_parallel_init_finds_the_blobs(blobs):
    a = ml.KMeans(5, random_state=0).fit(blobs)
    b = skc.KMeans(5, random_state=0, n_init=10).fit(blobs)
    assert a.inertia_ == pytest.approx(b.inertia_, rel=1e-6)
    assert a.labels_.shape == (4000,) and len(np.unique(a.labels_)) == 5


def test_kmeans_inertia_matches_its_centers(blobs):
    a = ml.KMeans(5, random_state=1, max_iter=3).fit(blobs)
    d = ((blobs[:, None, :] - a.cluster_centers_[None]) ** 2).sum(axis=2)
    assert a.inertia_ == pytest.approx(d.min(axis=1).sum(), rel=1e-9)
    np.testing.assert_array_equal(a.predict(blobs), d.argmin(axis=1))


def test_kmeans_random_init_with_several_runs_keeps_best(blobs):
    one = ml.KMeans(5, init="random", n_init=1, random_state=4).fit(blobs)
    many = ml.KMeans(5, init="random", n_init=5, random_state=4).fit(blobs)
    assert many.inertia_ <= one.inertia_ + 1e-9


def test_kmeans_given_centers_converge_like_sklearn(blobs):
    init = blobs[:5]
    a = ml.KMeans(5, init=init, tol=0).fit(blobs)
    b = skc.KMeans(5, init=init, n_init=1, tol=0, algorithm="lloyd").fit(blobs)
    np.testing.assert_allclose(np.sort(a.cluster_centers_, axis=0), np.sort(b.cluster_centers_, axis=0), atol=1e-8)


def test_kmeans_sampled_init_reaches_sklearn_inertia(blobs, monkeypatch):
    # a uniform sample smaller than the data stands in for it in the k-means|| estimates
    from shoal.ml import _kmeans
    monkeypatch.setattr(_kmeans, "SAMPLE_ROWS", 300)
    monkeypatch.setattr(_kmeans, "SAMPLE_ROWS_PER_CLUSTER", 10)
    a = ml.KMeans(5, random_state=0).fit(blobs)
    b = skc.KMeans(5, random_state=0, n_init=10).fit(blobs)
    assert a.inertia_ == pytest.approx(b.inertia_, rel=1e-6)


def test_kmeans_random_init_draws_distinct_rows_when_the_data_repeats():
    X = np.repeat(np.arange(6, dtype=float)[:, None], 50, axis=0)
    a = ml.KMeans(6, init="random", random_state=0).fit(X)
    np.testing.assert_array_equal(np.sort(a.cluster_centers_[:, 0]), np.arange(6.0))


@pytest.mark.parametrize("k", [1, 2, 10, 53, 60])
def test_kmeans_arg_min_over_centers_breaks_ties_like_numpy(k):
    from shoal.ml._kernels import _argmin_rows
    D = np.random.default_rng(k).integers(0, 3, size=(k, 2000)).astype(float)   # many ties
    mn, idx = _argmin_rows(D)
    np.testing.assert_array_equal(idx, D.argmin(axis=0))
    np.testing.assert_array_equal(mn, D.min(axis=0))


def test_kmeans_more_clusters_than_rows_is_rejected():
    with pytest.raises(ValueError, match="n_samples=3 should be >= n_clusters=4"):
        ml.KMeans(4).fit(np.random.rand(3, 2))


def test_pca_matches_sklearn(data):
    X, _ = data
    a, b = ml.PCA(3).fit(X), skd.PCA(3).fit(X)
    np.testing.assert_allclose(a.components_, b.components_, atol=1e-9)
    np.testing.assert_allclose(a.explained_variance_ratio_, b.explained_variance_ratio_, atol=1e-12)
    np.testing.assert_allclose(a.transform(X), b.transform(X), atol=1e-9)
    assert a.noise_variance_ == pytest.approx(b.noise_variance_)


def test_pca_fraction_of_variance_and_whitening(data):
    X, _ = data
    a, b = ml.PCA(0.8, whiten=True).fit(X), skd.PCA(0.8, whiten=True).fit(X)
    assert a.n_components_ == b.n_components_
    np.testing.assert_allclose(a.transform(X), b.transform(X), atol=1e-8)
    np.testing.assert_allclose(a.inverse_transform(a.transform(X)), b.inverse_transform(b.transform(X)), atol=1e-8)


def test_pca_too_many_components_is_rejected(data):
    with pytest.raises(ValueError, match="n_components=9"):
        ml.PCA(9).fit(data[0])
