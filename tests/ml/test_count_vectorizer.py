"""CountVectorizer against scikit-learn's CountVectorizer and Spark's documented example."""
import numpy as np
import pandas as pd
import pytest
from sklearn.feature_extraction.text import CountVectorizer as SkCountVectorizer

import shoal.data as sd
import shoal.ml as ml
from shoal.exceptions import InvalidInputError
from tests.ml._cluster import cluster  # noqa: F401


def _corpus(n=300, seed=0):
    rng = np.random.default_rng(seed)
    words = np.array([f"w{i}" for i in range(40)])
    p = 1.0 / np.arange(1, 41)
    return [list(words[rng.choice(40, rng.integers(1, 12), p=p / p.sum())]) for _ in range(n)]


def _identity(tokens):
    return tokens


@pytest.mark.parametrize("params,sk_params", [({}, {}), ({"min_df": 5.0}, {"min_df": 5}),
                                              ({"max_df": 0.5}, {"max_df": 0.5}),
                                              ({"vocab_size": 10, "binary": True},
                                               {"max_features": 10, "binary": True})])
def test_counts_match_sklearn_column_for_column(params, sk_params):
    docs = _corpus()
    ours = ml.CountVectorizer(**params).fit(docs)
    theirs = SkCountVectorizer(analyzer=_identity, **sk_params).fit(docs)
    assert set(ours.vocabulary) == set(theirs.vocabulary_)
    order = [theirs.vocabulary_[w] for w in ours.vocabulary]
    np.testing.assert_array_equal(ours.transform(docs).toarray(), theirs.transform(docs).toarray()[:, order])
    full = SkCountVectorizer(analyzer=_identity).fit(docs)
    counts = np.asarray(full.transform(docs).sum(axis=0)).ravel()[[full.vocabulary_[w] for w in ours.vocabulary]]
    assert np.all(np.diff(counts) <= 0)   # most frequent first, as Spark orders the vocabulary


def test_sparks_example():
    docs = [["a", "b", "c"], ["a", "b", "b", "c", "a"]]
    cv = ml.CountVectorizer(vocab_size=3, min_df=2.0).fit(docs)
    assert cv.vocabulary == ["a", "b", "c"]
    np.testing.assert_array_equal(cv.transform(docs).toarray(), [[1, 1, 1], [2, 2, 1]])
    # min_tf=2 drops, per document, terms counted fewer than twice
    np.testing.assert_array_equal(ml.CountVectorizer(min_tf=2.0).fit(docs).transform(docs).toarray(),
                                  [[0, 0, 0], [2, 2, 0]])


def test_on_a_dataset_counts_per_block_and_feeds_idf_and_lda(cluster):
    text = [" ".join(d) for d in _corpus(120)]
    ds = sd.from_pandas(pd.DataFrame({"text": text})).repartition(3)
    tokens = ml.Tokenizer().transform(ds)
    cv = ml.CountVectorizer(min_df=2.0).fit(tokens)
    local = ml.CountVectorizer(min_df=2.0).fit([t.split() for t in text])
    assert cv.vocabulary == local.vocabulary
    tf = cv.transform(tokens)
    from shoal.ml._input import sparse_vectors_to_csr
    mat = sparse_vectors_to_csr(tf.to_arrow().column("tf")).toarray()
    np.testing.assert_array_equal(mat, local.transform([t.split() for t in text]).toarray())
    lda = ml.LDA(n_components=2, max_iter=2, random_state=0).fit(tf, features=["tf"])
    assert lda.components_.shape == (2, len(cv.vocabulary))


def test_text_instead_of_tokens_is_a_clear_error():
    with pytest.raises(InvalidInputError, match="Tokenizer"):
        ml.CountVectorizer().fit(["a b c", "d e"])
    with pytest.raises(InvalidInputError, match="empty vocabulary"):
        ml.CountVectorizer(min_df=5.0).fit([["a"], ["b"]])
