"""LDA (online variational Bayes) against scikit-learn's LatentDirichletAllocation."""
import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.decomposition import LatentDirichletAllocation as SkLDA

import shoal.ml as ml
from shoal.exceptions import InvalidInputError
from tests.ml._cluster import cluster  # noqa: F401

K, V, N = 4, 40, 500


@pytest.fixture(scope="module")
def corpus():
    """Documents drawn from K topics, each owning 10 of the V terms."""
    rng = np.random.RandomState(0)
    beta = np.full((K, V), 0.01)
    for t in range(K):
        beta[t, t * 10:(t + 1) * 10] = 1.0
    beta /= beta.sum(axis=1, keepdims=True)
    theta = rng.dirichlet(np.full(K, 0.2), N)
    return np.array([rng.multinomial(50, th @ beta) for th in theta], dtype=np.float64)


def _topic_terms(components):
    """The term block (0..K-1) each topic puts its weight on."""
    return sorted(int(np.argmax(np.bincount(np.argsort(-c)[:10] // 10, minlength=K))) for c in components)


@pytest.mark.parametrize("method", ["online", "batch"])
def test_lda_matches_sklearn_perplexity_and_recovers_topics(corpus, method):
    ours = ml.LDA(K, learning_method=method, max_iter=10, random_state=0).fit(corpus)
    theirs = SkLDA(K, learning_method=method, max_iter=10, random_state=0).fit(corpus)
    # different random starts: the fits agree to 1% in perplexity (sklearn's own spread across seeds)
    assert ours.perplexity(corpus) == pytest.approx(theirs.perplexity(corpus), rel=0.01)
    assert ours.score(corpus) == pytest.approx(theirs.score(corpus), rel=0.01)
    assert _topic_terms(ours.components_) == list(range(K))
    for t in range(K):   # each topic puts most of its mass on its own 10 terms (0.97 in truth)
        beta = ours.topics_matrix()[:, t]
        assert np.sort(beta)[-10:].sum() > 0.75


def test_lda_bound_and_transform_equal_sklearns_for_the_same_topics(corpus):
    ours = ml.LDA(K, max_iter=2, random_state=1).fit(corpus)
    theirs = SkLDA(K, max_iter=1, random_state=1).fit(corpus[:10])
    theirs.components_ = ours.components_
    theirs.exp_dirichlet_component_ = ours.exp_dirichlet_component_
    assert ours.score(corpus) == pytest.approx(theirs.score(corpus), rel=1e-9)
    assert ours.perplexity(corpus) == pytest.approx(theirs.perplexity(corpus), rel=1e-9)
    np.testing.assert_allclose(ours.transform(corpus), theirs.transform(corpus), atol=1e-6)
    assert ours.log_perplexity(corpus) == pytest.approx(np.log(ours.perplexity(corpus)))


def test_lda_sparse_input_fits_as_dense(corpus):
    dense = ml.LDA(K, max_iter=3, random_state=0).fit(corpus)
    sparse = ml.LDA(K, max_iter=3, random_state=0).fit(sp.csr_matrix(corpus))
    np.testing.assert_allclose(sparse.components_, dense.components_, rtol=1e-8)
    np.testing.assert_allclose(sparse.transform(sp.csr_matrix(corpus)), dense.transform(corpus), atol=1e-8)


def test_lda_evaluate_every_stops_on_perp_tol(corpus):
    lda = ml.LDA(K, max_iter=50, evaluate_every=1, perp_tol=1.0, random_state=0).fit(corpus)
    assert lda.n_iter_ < 50 and lda.bound_ == pytest.approx(lda.perplexity(corpus), rel=1e-9)


def test_lda_describe_topics_is_sparks_shape(corpus):
    lda = ml.LDA(K, max_iter=5, random_state=0).fit(corpus)
    topics = lda.describe_topics(3)
    assert len(topics) == K and all(len(idx) == 3 and np.all(np.diff(w) <= 0) for idx, w in topics)
    assert lda.topics_matrix().shape == (V, K)


def test_lda_rejects_negative_counts_and_bad_params(corpus):
    with pytest.raises(InvalidInputError, match="Negative values"):
        ml.LDA(2).fit(-corpus)
    with pytest.raises(InvalidInputError, match="learning_decay"):
        ml.LDA(2, learning_decay=0.3).fit(corpus)
    with pytest.raises(InvalidInputError, match="learning_method"):
        ml.LDA(2, learning_method="em").fit(corpus)
    lda = ml.LDA(2, max_iter=1).fit(corpus)
    with pytest.raises(InvalidInputError, match="features"):
        lda.transform(corpus[:, :5])


def test_lda_on_a_dataset_of_sparse_count_vectors(corpus, cluster):
    import pyarrow as pa

    import shoal.data as sd
    from shoal.ml._input import csr_to_sparse_vectors
    table = pa.table({"doc": np.arange(N), "tf": csr_to_sparse_vectors(sp.csr_matrix(corpus))})
    ds = sd.from_arrow(table).repartition(3)
    lda = ml.LDA(K, max_iter=10, random_state=0).fit(ds, features=["tf"])
    assert lda.n_features_in_ == V and _topic_terms(lda.components_) == list(range(K))
    out = lda.transform(ds).to_numpy("topicDistribution")
    np.testing.assert_allclose(out, lda.transform(corpus), atol=1e-8)
    assert lda.perplexity(ds) == pytest.approx(lda.perplexity(corpus), rel=1e-9)
