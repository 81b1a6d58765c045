"""NGram and StopWordsRemover against Spark's documented examples, on lists and on a Dataset."""
import numpy as np
import pandas as pd
import pytest

import shoal.data as sd
import shoal.ml as ml
from shoal.exceptions import InvalidInputError
from tests.ml._cluster import cluster  # noqa: F401


def test_ngram_matches_sparks_example():
    docs = [["Hi", "I", "heard", "about", "Spark"], ["Logistic", "regression"], ["x"]]
    out = ml.NGram(n=2).transform(docs)
    assert list(out[0]) == ["Hi I", "I heard", "heard about", "about Spark"]
    assert list(out[1]) == ["Logistic regression"] and list(out[2]) == []
    assert list(ml.NGram(n=1).transform(docs)[1]) == ["Logistic", "regression"]


def test_stop_words_remover_matches_sparks_example():
    docs = [["I", "saw", "the", "red", "balloon"], ["Mary", "had", "a", "little", "lamb"]]
    out = ml.StopWordsRemover().transform(docs)
    assert list(out[0]) == ["saw", "red", "balloon"] and list(out[1]) == ["Mary", "little", "lamb"]
    kept = ml.StopWordsRemover(stop_words=["The", "red"], case_sensitive=True).transform(docs)
    assert list(kept[0]) == ["I", "saw", "the", "balloon"]


def test_on_a_dataset_they_add_their_columns(cluster):
    ds = sd.from_pandas(pd.DataFrame({"text": ["the cat sat on the mat", "a dog ran"] * 3})).repartition(2)
    pipe = ml.make_pipeline(ml.Tokenizer(), ml.StopWordsRemover(), ml.NGram(n=2, input_col="filtered"))
    rows = pipe.fit(ds).transform(ds).take(2)
    assert rows[0]["filtered"] == ["cat", "sat", "mat"] and rows[0]["ngrams"] == ["cat sat", "sat mat"]
    assert rows[1]["ngrams"] == ["dog ran"]


def test_bad_parameters_and_text_input_are_clear_errors():
    with pytest.raises(InvalidInputError, match="n=0"):
        ml.NGram(n=0).transform([["a"]])
    with pytest.raises(InvalidInputError, match="Tokenizer"):
        ml.NGram().transform(["a b"])
    with pytest.raises(InvalidInputError, match="stop_words"):
        ml.StopWordsRemover(stop_words="the").transform([["a"]])
    assert isinstance(ml.NGram().transform([["a", "b"]]), np.ndarray)
