"""RFormula: Spark's documented example, each operator, string labels, bad input, and the
Dataset path (fit by block counts, transform by block). Against live Spark:
test_spark_feature_parity.py."""
import numpy as np
import pandas as pd
import pytest

import shoal.data as sd
import shoal.ml as ml
from shoal.exceptions import InvalidInputError
from tests.ml._cluster import cluster  # noqa: F401

on_cluster = pytest.mark.usefixtures("cluster")

# Spark's guide for RFormula
CLICKS = pd.DataFrame({"id": [7, 8, 9], "country": ["US", "CA", "NZ"], "hour": [18, 12, 15],
                       "clicked": [1.0, 0.0, 0.0]})


def test_reproduces_sparks_example():
    rf = ml.RFormula("clicked ~ country + hour").fit(CLICKS)
    X, y = rf.transform_xy(CLICKS)
    # Spark: [0.0,0.0,18.0], [1.0,0.0,12.0], [0.0,1.0,15.0]; labels 1, 0, 0 (US, the last
    # category by frequency then name, is dropped)
    np.testing.assert_array_equal(X, [[0.0, 0.0, 18.0], [1.0, 0.0, 12.0], [0.0, 1.0, 15.0]])
    np.testing.assert_array_equal(y, [1.0, 0.0, 0.0])
    assert list(rf.get_feature_names_out()) == ["country_CA", "country_NZ", "hour"]


@pytest.mark.parametrize("formula,terms,intercept", [
    ("clicked ~ .", [("id",), ("country",), ("hour",)], True),
    ("clicked ~ . - id", [("country",), ("hour",)], True),
    ("clicked ~ country:hour + hour - 1", [("country", "hour"), ("hour",)], False),
    ("clicked ~ hour:country + country:hour + hour:hour", [("hour", "country"), ("hour",)], True),
    # "." in an interaction: hour:hour is hour, and Spark orders the expansion by length
    ("clicked ~ .:hour - id:hour + 0", [("hour",), ("country", "hour")], False),
    ("clicked ~ country + hour - country", [("hour",)], True),
])
def test_operators_resolve_as_spark_does(formula, terms, intercept):
    rf = ml.RFormula(formula).fit(CLICKS)
    assert rf.terms_ == terms and rf.has_intercept_ is intercept


def test_interactions_and_no_intercept_encodings():
    rf = ml.RFormula("clicked ~ country:hour + country + 0").fit(CLICKS)
    X = rf.transform(CLICKS)
    # interaction: every category of country times hour; without intercept the first string
    # term keeps all its categories
    assert list(rf.get_feature_names_out()) == ["country_CA:hour", "country_NZ:hour", "country_US:hour",
                                                "country_CA", "country_NZ", "country_US"]
    np.testing.assert_array_equal(X[0], [0.0, 0.0, 18.0, 0.0, 0.0, 1.0])


def test_string_label_is_indexed_by_frequency():
    frame = CLICKS.assign(fruit=["kiwi", "fig", "kiwi"])
    rf = ml.RFormula("fruit ~ hour").fit(frame)
    assert list(rf.label_categories_) == ["kiwi", "fig"]
    np.testing.assert_array_equal(rf.transform_xy(frame)[1], [0.0, 1.0, 0.0])
    forced = ml.RFormula("hour ~ country", force_index_label=True).fit(frame)
    assert forced.label_categories_ is not None


def test_unseen_categories_and_nulls_by_handle_invalid():
    rf = ml.RFormula("clicked ~ country + hour").fit(CLICKS)
    new = pd.DataFrame({"country": ["FR", "US"], "hour": [1.0, 2.0], "clicked": [0.0, 1.0]})
    with pytest.raises(InvalidInputError, match="column 'country' holds the category 'FR', not seen"):
        rf.transform(new)
    X, y = ml.RFormula("clicked ~ country + hour", handle_invalid="skip").fit(CLICKS).transform_xy(new)
    np.testing.assert_array_equal(X, [[0.0, 0.0, 2.0]]) and np.testing.assert_array_equal(y, [1.0])
    keep = ml.RFormula("clicked ~ country + hour", handle_invalid="keep").fit(CLICKS)
    # "keep": the unseen category has its own (dropped) index, so all three known ones stay
    np.testing.assert_array_equal(keep.transform(new), [[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 2.0]])
    with pytest.raises(InvalidInputError, match="column 'hour' holds NaN or null"):
        rf.transform(pd.DataFrame({"country": ["US"], "hour": [np.nan], "clicked": [1.0]}))


def test_bad_formulas_are_named():
    with pytest.raises(InvalidInputError, match="must be a string 'label ~ terms'"):
        ml.RFormula("clicked country").fit(CLICKS)
    with pytest.raises(InvalidInputError, match="column 'nope', which is missing"):
        ml.RFormula("clicked ~ nope").fit(CLICKS)
    with pytest.raises(InvalidInputError, match="cannot parse"):
        ml.RFormula("clicked ~ hour * country").fit(CLICKS)
    with pytest.raises(InvalidInputError, match="ends with an operator"):
        ml.RFormula("clicked ~ hour +").fit(CLICKS)
    with pytest.raises(InvalidInputError, match="reads named columns"):
        ml.RFormula("y ~ a").fit(np.zeros((2, 2)))
    with pytest.raises(InvalidInputError, match="label='other'"):
        ml.RFormula("clicked ~ hour").fit(CLICKS.assign(other=1), label="other")


@on_cluster
def test_on_a_dataset_writes_features_and_label_and_feeds_a_model():
    rng = np.random.default_rng(0)
    n = 600
    frame = pd.DataFrame({"city": rng.choice(["Lyon", "Oslo", "Porto"], n), "age": rng.uniform(18, 70, n),
                          "visits": rng.poisson(3, n).astype(float)})
    frame["bought"] = np.where((frame["visits"] > 3) | (frame["city"] == "Oslo"), "yes", "no")
    ds = sd.from_pandas(frame).repartition(3)
    rf = ml.RFormula("bought ~ city + visits + city:age").fit(ds)
    ref = ml.RFormula("bought ~ city + visits + city:age").fit(frame)
    assert [list(c) for c in rf.categories_.values()] == [list(c) for c in ref.categories_.values()]
    out = rf.transform(ds).to_pandas()
    X, y = ref.transform_xy(frame)
    np.testing.assert_allclose(np.stack(out["features"].to_numpy()), X)
    np.testing.assert_array_equal(out["label"].to_numpy(), y)
    assert {"city", "age", "bought"} <= set(out.columns)
    pipe = ml.Pipeline([("formula", ml.RFormula("bought ~ city + visits")), ("lr", ml.LogisticRegression())])
    pipe.fit(ds, label="bought")
    assert list(pipe.named_steps["lr"].feature_names_in_) == ["features"]
    assert (pipe.predict(ds).to_numpy("prediction") == frame["bought"].to_numpy()).mean() > 0.9


def test_save_and_load_keep_the_encoding(tmp_path):
    frame = CLICKS.assign(fruit=["kiwi", "fig", "kiwi"])
    rf = ml.RFormula("fruit ~ country:hour + country + id", handle_invalid="keep").fit(frame)
    ml.save(rf, tmp_path / "rf")
    restored = ml.load(tmp_path / "rf")
    for a, b in zip(restored.transform_xy(frame), rf.transform_xy(frame)):
        np.testing.assert_array_equal(a, b)
    assert list(restored.get_feature_names_out()) == list(rf.get_feature_names_out())
