"""Word2Vec: planted co-occurrence structure is recovered (arrays and a Dataset trained in
partitions), the Huffman tree is optimal, transform averages as Spark, bad input is named."""
import heapq

import numpy as np
import pyarrow as pa
import pytest

import shoal.data as sd
import shoal.ml as ml
from shoal.exceptions import InvalidInputError
from shoal.ml._word2vec_kernels import huffman_tree
from tests.ml._cluster import cluster  # noqa: F401

TOPICS = [[f"t{t}w{i}" for i in range(5)] for t in range(8)]


def _corpus(n=2000, length=12, seed=0):
    """Each document draws its words from one topic: words of a topic co-occur, others never."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n):
        topic = TOPICS[rng.integers(len(TOPICS))]
        docs.append([topic[i] for i in rng.integers(0, 5, length)])
    return docs


def _synonym_precision(model, num=4):
    good = 0
    for t, words in enumerate(TOPICS):
        for w in words:
            good += sum(s.startswith(f"t{t}w") for s in model.find_synonyms(w, num)["word"])
    return good / (len(TOPICS) * 5 * num)


def test_planted_synonyms_are_recovered():
    model = ml.Word2Vec(vector_size=16, min_count=1, max_iter=3, seed=1).fit(_corpus())
    assert _synonym_precision(model) >= 0.9
    assert sorted(model.vocabulary_) == sorted(w for t in TOPICS for w in t)
    assert model.vectors_.shape == (40, 16) and model.vectors_.dtype == np.float32
    syn = model.find_synonyms("t2w0", 3)
    assert list(syn.columns) == ["word", "similarity"] and "t2w0" not in set(syn["word"])
    assert (np.diff(syn["similarity"]) <= 0).all()
    by_vector = model.find_synonyms(model.vectors_[model.word_index_["t2w0"]], 1)
    assert by_vector["word"][0] == "t2w0" and by_vector["similarity"][0] == pytest.approx(1.0)


def test_partitions_are_trained_apart_and_averaged():
    docs = _corpus(seed=2)
    model = ml.Word2Vec(vector_size=16, min_count=1, max_iter=3, num_partitions=3, seed=3).fit(docs)
    assert _synonym_precision(model) >= 0.85
    again = ml.Word2Vec(vector_size=16, min_count=1, max_iter=3, num_partitions=3, seed=3).fit(docs)
    np.testing.assert_array_equal(model.vectors_, again.vectors_)     # seeded: reproducible


def test_a_dataset_fits_in_partition_tasks(cluster):  # noqa: F811
    docs = _corpus(seed=4)
    table = pa.table({"id": np.arange(len(docs)), "tokens": pa.array(docs, pa.list_(pa.string()))})
    ds = sd.from_arrow(table).repartition(4)
    model = ml.Word2Vec(vector_size=16, min_count=1, max_iter=3, num_partitions=2, seed=5).fit(ds)
    assert _synonym_precision(model) >= 0.85
    out = model.transform(ds).to_pandas().sort_values("id")
    np.testing.assert_allclose(np.stack(out["vector"].to_numpy()), model.transform(docs), rtol=1e-6)
    frame = ml.Word2Vec(vector_size=4, min_count=1, seed=0).fit(table.to_pandas(), features=["tokens"])
    assert frame.input_col_ == "tokens" and frame.vectors_.shape == (40, 4)


def test_min_count_drops_rare_words_and_transform_averages_as_spark():
    docs = [["a", "b", "a", "c"], ["a", "b"], ["b", "a", "zzz"]]
    model = ml.Word2Vec(vector_size=3, min_count=2, seed=0).fit(docs)
    assert model.vocabulary_ == ["a", "b"] and model.word_counts_.tolist() == [4, 3]
    V = model.vectors_.astype(np.float64)
    out = model.transform(docs + [[], ["zzz"]])
    # Spark divides by the document's length, unknown words included
    np.testing.assert_allclose(out[0], (2 * V[0] + V[1]) / 4, rtol=1e-6)
    np.testing.assert_allclose(out[2], (V[0] + V[1]) / 3, rtol=1e-6)
    np.testing.assert_array_equal(out[3:], 0.0)


def test_huffman_codes_are_prefix_free_and_optimal():
    rng = np.random.default_rng(0)
    counts = np.sort(rng.integers(1, 1000, 200))[::-1].astype(np.int64)
    codes, points, lengths = huffman_tree(counts)
    words = ["".join(map(str, codes[i, :lengths[i]])) for i in range(len(counts))]
    assert len(set(words)) == len(words)
    assert not any(a != b and b.startswith(a) for a in words for b in words)
    heap = counts.tolist()
    heapq.heapify(heap)
    cost = 0
    while len(heap) > 1:
        s = heapq.heappop(heap) + heapq.heappop(heap)
        cost += s
        heapq.heappush(heap, s)
    assert int((counts * lengths).sum()) == cost
    assert points[:, 0].max() == len(counts) - 2 and (points[np.arange(40)[None, :] < lengths[:, None]] >= 0).all()


def test_against_gensim_when_installed():
    gensim = pytest.importorskip("gensim")
    docs = _corpus(seed=6)
    theirs = gensim.models.Word2Vec(docs, vector_size=16, window=5, min_count=1, sg=1, hs=1, negative=0,
                                    epochs=3, seed=1, workers=1)
    ours = ml.Word2Vec(vector_size=16, min_count=1, max_iter=3, seed=1).fit(docs)
    for t, words in enumerate(TOPICS):
        for w in words:
            mine = set(ours.find_synonyms(w, 4)["word"])
            assert len(mine & {s for s, _ in theirs.wv.most_similar(w, topn=4)}) >= 2


def test_bad_input_is_named():
    docs = _corpus(n=20)
    with pytest.raises(InvalidInputError, match="vector_size=0"):
        ml.Word2Vec(vector_size=0).fit(docs)
    with pytest.raises(InvalidInputError, match="step_size=-1"):
        ml.Word2Vec(step_size=-1).fit(docs)
    with pytest.raises(InvalidInputError, match="document 0 is str.*Tokenizer"):
        ml.Word2Vec(min_count=1).fit(["a sentence of text"])
    with pytest.raises(InvalidInputError, match="at least 2 distinct words.*min_count=1000"):
        ml.Word2Vec(min_count=1000).fit(docs)
    model = ml.Word2Vec(vector_size=4, min_count=1, seed=0).fit(docs)
    with pytest.raises(InvalidInputError, match="'nope' is not in the vocabulary"):
        model.find_synonyms("nope", 2)
    with pytest.raises(InvalidInputError, match="column 'tokens' .*is missing.*\\['text'\\]"):
        ml.Word2Vec().fit(pa.table({"text": ["a b"]}))


def test_a_fitted_model_saves_and_loads(tmp_path):
    docs = _corpus(n=50)
    model = ml.Word2Vec(vector_size=4, min_count=1, seed=0).fit(docs)
    ml.save(model, tmp_path / "w2v")
    back = ml.load(tmp_path / "w2v")
    np.testing.assert_array_equal(back.transform(docs), model.transform(docs))
    assert back.find_synonyms("t0w0", 2).equals(model.find_synonyms("t0w0", 2))
