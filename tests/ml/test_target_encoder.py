"""TargetEncoder against scikit-learn's TargetEncoder (encodings after fit) and Spark's formula,
and IndexToString, on arrays, DataFrames and Datasets. Spark itself: test_spark_feature_parity.py."""
import numpy as np
import pandas as pd
import pytest
from sklearn.preprocessing import TargetEncoder as SkTargetEncoder

import shoal.data as sd
import shoal.ml as ml
from shoal.exceptions import InvalidInputError
from tests.ml._cluster import cluster  # noqa: F401

on_cluster = pytest.mark.usefixtures("cluster")


def _data(n=400, seed=0):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"shop": rng.choice(["north", "south", "east", "west"], n),
                          "size": rng.integers(0, 6, n)})
    frame["spend"] = rng.normal(size=n) + frame["size"] + (frame["shop"] == "north") * 2.0
    frame["bought"] = (frame["spend"] > 3).astype(int)
    return frame


@pytest.mark.parametrize("smoothing", [1e-9, 2.5, "auto"])
@pytest.mark.parametrize("label,target_type", [("spend", "continuous"), ("bought", "binary")])
def test_encodings_match_sklearn_after_fit(smoothing, label, target_type):
    frame = _data()
    X = frame[["shop", "size"]]
    ours = ml.TargetEncoder(smoothing=smoothing, target_type=target_type).fit(X, frame[label].to_numpy())
    theirs = SkTargetEncoder(smooth=smoothing, target_type=target_type).fit(X, frame[label])
    # scikit-learn's fit().transform() (not its cross-fitted fit_transform) is Spark's encoding
    np.testing.assert_allclose(ours.transform(X), theirs.transform(X), rtol=1e-10, atol=1e-12)
    assert ours.target_mean_ == pytest.approx(theirs.target_mean_, rel=1e-12)


def test_spark_formula_with_smoothing_by_hand():
    # category "a": labels 1, 1, 0 (mean 2/3, 3 rows); overall mean 3/5; smoothing 2:
    # w = 3 / (3 + 2) = 0.6 -> 0.6 * 2/3 + 0.4 * 3/5 = 0.64
    X = np.array([["a"], ["a"], ["a"], ["b"], ["b"]], dtype=object)
    y = np.array([1, 1, 0, 1, 0])
    enc = ml.TargetEncoder(smoothing=2.0).fit(X, y)
    assert enc.target_type_ == "binary"
    np.testing.assert_allclose(enc.transform(np.array([["a"], ["b"]], dtype=object)).ravel(),
                               [0.64, 0.5 * 2 / 4 + 0.6 * 2 / 4])


def test_unseen_and_missing_categories_by_handle_invalid():
    frame = _data(100)
    enc = ml.TargetEncoder().fit(frame[["shop"]], frame["spend"].to_numpy())
    new = pd.DataFrame({"shop": ["north", "mars"]})
    with pytest.raises(InvalidInputError, match="column 'shop' holds the category 'mars', not seen"):
        enc.transform(new)
    kept = ml.TargetEncoder(handle_invalid="keep").fit(frame[["shop"]], frame["spend"].to_numpy())
    out = kept.transform(pd.DataFrame({"shop": ["north", "mars", None]}))
    assert out[1, 0] == out[2, 0] == pytest.approx(frame["spend"].mean())
    with pytest.raises(InvalidInputError, match="column 'shop' holds a missing category"):
        ml.TargetEncoder().fit(pd.DataFrame({"shop": ["a", None]}), np.array([1.0, 2.0]))


def test_bad_label_and_parameters_are_named():
    X = np.array([[1], [2], [1]])
    with pytest.raises(InvalidInputError, match="target_type='binary' needs a 0/1 label"):
        ml.TargetEncoder(target_type="binary").fit(X, np.array([0, 1, 2]))
    with pytest.raises(InvalidInputError, match="label 'y' holds NaN"):
        ml.TargetEncoder().fit(X, np.array([0.0, np.nan, 1.0]))
    with pytest.raises(InvalidInputError, match="label 'y' has dtype"):
        ml.TargetEncoder().fit(X, np.array(["a", "b", "a"]))
    with pytest.raises(InvalidInputError, match="smoothing"):
        ml.TargetEncoder(smoothing=-1).fit(X, np.array([0, 1, 0]))
    with pytest.raises(InvalidInputError, match="supervised"):
        ml.TargetEncoder().fit(_data(10), features=["shop"])


@on_cluster
def test_dataset_fit_merges_block_statistics_and_adds_columns():
    frame = _data(900).assign(id=np.arange(900))
    ds = sd.from_pandas(frame).repartition(3)
    enc = ml.TargetEncoder(smoothing=1.0).fit(ds, features=["shop", "size"], label="spend")
    ref = ml.TargetEncoder(smoothing=1.0).fit(frame, features=["shop", "size"], label="spend")
    for a, b in zip(enc.encodings_, ref.encodings_):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    out = enc.transform(ds).to_pandas()
    assert {"shop_encoded", "size_encoded", "spend", "id"} <= set(out.columns)
    np.testing.assert_allclose(out[["shop_encoded", "size_encoded"]].to_numpy(), ref.transform(frame), rtol=1e-12)
    restored = _round_trip(enc)
    np.testing.assert_allclose(restored.transform(frame), ref.transform(frame), rtol=1e-12)


def _round_trip(est):
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        ml.save(est, d + "/m")
        return ml.load(d + "/m")


# ---------------------------------------------------------------- IndexToString

def test_index_to_string_inverts_string_indexer():
    colors = np.array(["red", "blue", "red", "green", "red", "blue"])
    indexer = ml.StringIndexer().fit(colors)
    idx = indexer.transform(colors)
    np.testing.assert_array_equal(ml.IndexToString(labels=indexer).transform(idx), colors)
    np.testing.assert_array_equal(ml.IndexToString(labels=["red", "blue", "green"]).transform([[0.0], [2.0]]),
                                  ["red", "green"])
    with pytest.raises(InvalidInputError, match="Unseen index 3.0"):
        ml.IndexToString(labels=["a", "b", "c"]).transform(np.array([0.0, 3.0]))
    with pytest.raises(InvalidInputError, match="needs labels="):
        ml.IndexToString().fit()


@on_cluster
def test_index_to_string_on_a_dataset_adds_the_label_column():
    ds = sd.from_pandas(pd.DataFrame({"prediction": [1.0, 0.0, 2.0, 1.0], "id": [0, 1, 2, 3]})).repartition(2)
    out = ml.IndexToString(labels=["cod", "eel", "ray"]).transform(ds).to_pandas()
    assert out["original"].tolist() == ["eel", "cod", "ray", "eel"] and out["id"].tolist() == [0, 1, 2, 3]
    bad = sd.from_pandas(pd.DataFrame({"prediction": [5.0]}))
    with pytest.raises(Exception, match="Unseen index 5.0 in column 'prediction'"):
        ml.IndexToString(labels=["cod"]).transform(bad).materialize()
