"""RegexTokenizer, FeatureHasher, Binarizer, RobustScaler and the vector transformers
(VectorSlicer, ElementwiseProduct, DCT, Interaction, VectorIndexer) against Spark's documented
examples, scikit-learn and SciPy, on arrays, DataFrames and Datasets."""
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import scipy.fft
from sklearn.preprocessing import Binarizer as SkBinarizer
from sklearn.preprocessing import RobustScaler as SkRobustScaler

import shoal.data as sd
import shoal.ml as ml
from shoal.exceptions import InvalidInputError
from shoal.ml._input import sparse_vectors_to_csr
from tests.ml._cluster import cluster  # noqa: F401

on_cluster = pytest.mark.usefixtures("cluster")


def _vectors(ds, column):
    return np.stack(ds.to_pandas()[column].to_numpy())


# ---------------------------------------------------------------- RegexTokenizer

def test_regex_tokenizer_reproduces_sparks_example():
    # pyspark.ml.feature.RegexTokenizer's doctest: "A B  c" -> ['a', 'b', 'c']
    assert ml.RegexTokenizer().transform(["A B  c"])[0] == ["a", "b", "c"]


def test_regex_tokenizer_matches_tokens_when_gaps_is_false():
    tok = ml.RegexTokenizer(pattern=r"(\w)\w*", gaps=False, min_token_length=2, to_lowercase=False)
    # the whole match is the token (Java's Matcher.group()), not the regex group
    out = tok.transform(pd.DataFrame({"text": ["Hi, I heard (about) Spark", "x y"]}))
    assert list(out[0]) == ["Hi", "heard", "about", "Spark"] and list(out[1]) == []
    with pytest.raises(InvalidInputError, match="not a valid regex"):
        ml.RegexTokenizer(pattern="(").fit()


@on_cluster
def test_regex_tokenizer_on_a_dataset_matches_arrays():
    docs = ["Logistic,regression models", "are neat!", "Hi I heard about Spark"]
    ds = sd.from_pandas(pd.DataFrame({"text": docs, "id": [0, 1, 2]})).repartition(2)
    for kw in ({"pattern": r"\W"}, {"pattern": r"\w+", "gaps": False}):
        tok = ml.RegexTokenizer(**kw)
        got = [list(t) for t in tok.transform(ds).to_pandas()["tokens"]]
        assert got == [list(t) for t in tok.transform(docs)]
    # Spark's guide: RegexTokenizer(pattern="\\W") splits "Logistic,regression models" in 3
    assert got[0] == ["logistic", "regression", "models"]


# ---------------------------------------------------------------- FeatureHasher

SPARK_HASHER_ROWS = pd.DataFrame([(2.0, True, "1", "foo"), (3.0, False, "2", "bar")],
                                 columns=["real", "bool", "stringNum", "string"])


def _as_dict(row):
    return dict(zip(row.indices.tolist(), row.data.tolist()))


def test_feature_hasher_reproduces_sparks_example():
    # pyspark.ml.feature.FeatureHasher's doctest (2**18 features, MurmurHash3 seed 42)
    X = ml.FeatureHasher().transform(SPARK_HASHER_ROWS)
    assert X.shape == (2, 1 << 18)
    assert _as_dict(X[0]) == {174475: 2.0, 247670: 1.0, 257907: 1.0, 262126: 1.0}
    X = ml.FeatureHasher(categorical_cols=["real"]).fit(SPARK_HASHER_ROWS).transform(SPARK_HASHER_ROWS)
    assert _as_dict(X[0]) == {171257: 1.0, 247670: 1.0, 257907: 1.0, 262126: 1.0}


def test_feature_hasher_indices_are_murmur3_seed_42_of_name_or_name_value():
    # scikit-learn's FeatureHasher builds "name=value" the same way but hashes with seed 0 and
    # alternating signs: the layout agrees with it once both use the same hash
    from sklearn.utils import murmurhash3_32
    frame = pd.DataFrame({"age": [31.0, None], "city": ["Oslo", None], "vip": [True, False]})
    X = ml.FeatureHasher(num_features=1024).transform(frame)
    expect0 = {}
    for term, v in (("age", 31.0), ("city=Oslo", 1.0), ("vip=true", 1.0)):
        k = murmurhash3_32(term.encode(), seed=42) % 1024
        expect0[k] = expect0.get(k, 0.0) + v
    assert _as_dict(X[0]) == expect0
    assert _as_dict(X[1]) == {murmurhash3_32(b"vip=false", seed=42) % 1024: 1.0}   # nulls add nothing


def test_feature_hasher_on_an_array_names_columns_x0_x1():
    from sklearn.utils import murmurhash3_32
    X = np.array([[1.5, "cod"], [2.0, "eel"]], dtype=object)
    out = ml.FeatureHasher(num_features=1 << 10).fit(X).transform(X)
    h = {t: murmurhash3_32(t.encode(), seed=42) % 1024 for t in ("x0", "x1=cod")}
    assert _as_dict(out[0]) == {h["x0"]: 1.5, h["x1=cod"]: 1.0}
    with pytest.raises(InvalidInputError, match="NaN in column x1"):
        ml.FeatureHasher().fit(np.array([[1.0, np.nan]]))


@on_cluster
def test_feature_hasher_on_a_dataset_matches_the_frame():
    ds = sd.from_pandas(SPARK_HASHER_ROWS.assign(id=[0, 1])).repartition(2)
    hasher = ml.FeatureHasher(num_features=64).fit(ds, features=["real", "bool", "stringNum", "string"])
    out = hasher.transform(ds).to_arrow()
    assert "id" in out.column_names
    np.testing.assert_array_equal(sparse_vectors_to_csr(out.column("features")).toarray(),
                                  hasher.transform(SPARK_HASHER_ROWS).toarray())


def test_feature_hasher_bad_input_names_the_column():
    frame = pd.DataFrame({"a": [1.0], "tags": [[1, 2]]})
    with pytest.raises(InvalidInputError, match="column 'tags'"):
        ml.FeatureHasher().transform(frame)
    with pytest.raises(InvalidInputError, match="num_features"):
        ml.FeatureHasher(num_features=0).transform(frame)
    with pytest.raises(InvalidInputError, match="column 'nope' is missing"):
        ml.FeatureHasher(input_cols=["nope"]).fit(frame)


# ---------------------------------------------------------------- Binarizer, RobustScaler

def test_binarizer_matches_sklearn_and_takes_per_column_thresholds():
    X = np.random.default_rng(0).normal(size=(200, 3))
    np.testing.assert_array_equal(ml.Binarizer(threshold=0.3).transform(X),
                                  SkBinarizer(threshold=0.3).transform(X))
    # Spark's thresholds: one per input column
    out = ml.Binarizer([0.0, 1.0, -1.0]).fit(X).transform(X)
    np.testing.assert_array_equal(out, (X > np.array([0.0, 1.0, -1.0])).astype(float))
    with pytest.raises(InvalidInputError, match="threshold has 2 values but X has 3"):
        ml.Binarizer([0.0, 1.0]).fit(X)


@pytest.mark.parametrize("kw", [{}, {"quantile_range": (10.0, 90.0), "unit_variance": True},
                                {"with_centering": False}, {"with_scaling": False}])
def test_robust_scaler_matches_sklearn(kw):
    rng = np.random.default_rng(1)
    X = rng.standard_t(3, size=(800, 4)) * [1.0, 10.0, 0.1, 5.0] + [0.0, 100.0, -3.0, 0.0]
    X[:, 3] = 7.0                                  # a constant feature keeps scale 1
    X[5, 0] = np.nan                               # NaN is ignored at fit and kept
    ours, theirs = ml.RobustScaler(**kw).fit(X), SkRobustScaler(**kw).fit(X)
    # quantiles of blocks of at most 1024 rows are exact (linear interpolation)
    np.testing.assert_allclose(ours.transform(X), theirs.transform(X), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ours.inverse_transform(ours.transform(X)), X, rtol=1e-12)


def test_robust_scaler_reproduces_sparks_example():
    # pyspark.ml.feature.RobustScaler's doctest (withCentering=False, Spark's default)
    X = np.array([[0.0, 0.0], [1.0, -1.0], [2.0, -2.0], [3.0, -3.0], [4.0, -4.0]])
    m = ml.RobustScaler(with_centering=False).fit(X)
    np.testing.assert_array_equal(m.scale_, [2.0, 2.0])
    np.testing.assert_array_equal(ml.RobustScaler().fit(X).center_, [2.0, -2.0])
    np.testing.assert_array_equal(m.transform(X)[1], [0.5, -0.5])


@on_cluster
def test_robust_scaler_and_binarizer_on_a_dataset_replace_their_columns():
    rng = np.random.default_rng(2)
    frame = pd.DataFrame(rng.normal(size=(3000, 2)), columns=["a", "b"]).assign(id=np.arange(3000))
    ds = sd.from_pandas(frame).repartition(3)
    for make in (ml.RobustScaler, lambda: ml.Binarizer(0.1)):
        est = make().fit(ds, features=["a", "b"])
        out = est.transform(ds).to_pandas()
        np.testing.assert_allclose(out[["a", "b"]].to_numpy(), est.transform(frame[["a", "b"]]), atol=1e-12)
        assert out["id"].tolist() == list(range(3000))
    # three blocks of 1000 rows: each block's sketch is exact, so the merged quantiles are too
    ref = SkRobustScaler().fit(frame[["a", "b"]].to_numpy())
    np.testing.assert_allclose(ml.RobustScaler().fit(ds, features=["a", "b"]).center_, ref.center_, rtol=1e-12)


# ---------------------------------------------------------------- vector transformers

SLICER_ROWS = np.array([[-2.0, 2.3, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0, 0.0],
                        [0.6, -1.1, -3.0, 4.5, 3.3]])


def test_vector_slicer_reproduces_sparks_example_and_picks_by_name():
    # pyspark.ml.feature.VectorSlicer's doctest: indices [1, 4] of the first row -> [2.3, 1.0]
    np.testing.assert_array_equal(ml.VectorSlicer(indices=[1, 4]).fit(SLICER_ROWS).transform(SLICER_ROWS)[0],
                                  [2.3, 1.0])
    frame = pd.DataFrame(SLICER_ROWS, columns=list("abcde"))
    vs = ml.VectorSlicer(indices=[4], names=["a", "c"]).fit(frame)
    assert list(vs.get_feature_names_out()) == ["e", "a", "c"]        # indices first, then names
    np.testing.assert_array_equal(vs.transform(frame), SLICER_ROWS[:, [4, 0, 2]])
    with pytest.raises(InvalidInputError, match="picks a feature twice"):
        ml.VectorSlicer(indices=[0], names=["a"]).fit(frame)
    with pytest.raises(InvalidInputError, match="'zz' is not a feature name"):
        ml.VectorSlicer(names=["zz"]).fit(frame)
    with pytest.raises(InvalidInputError, match="7 is not a position in the 5 features"):
        ml.VectorSlicer(indices=[7]).fit(SLICER_ROWS)


def test_elementwise_product_reproduces_sparks_example():
    # Spark's guide: [1, 2, 3] * [0, 1, 2] -> [0, 2, 6]; [4, 5, 6] -> [0, 5, 12]
    X = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    np.testing.assert_array_equal(ml.ElementwiseProduct([0.0, 1.0, 2.0]).fit(X).transform(X),
                                  [[0.0, 2.0, 6.0], [0.0, 5.0, 12.0]])
    with pytest.raises(InvalidInputError, match="scaling_vec has 2 factors but the input has 3"):
        ml.ElementwiseProduct([1.0, 2.0]).fit(X)


def test_dct_is_scipys_orthonormal_dct_and_inverts():
    # Spark's guide: DCT of [0, 1, -2, 3] is [1.0, -1.1480502970952693, 2.0000000000000004, -2.7716385975338604]
    X = np.array([[0.0, 1.0, -2.0, 3.0], [-1.0, 2.0, 4.0, -7.0], [14.0, -2.0, -5.0, 1.0]])
    out = ml.DCT().fit(X).transform(X)
    np.testing.assert_allclose(out[0], [1.0, -1.1480502970952693, 2.0000000000000004, -2.7716385975338604],
                               rtol=1e-12)
    np.testing.assert_allclose(out, scipy.fft.dct(X, type=2, norm="ortho", axis=1), rtol=1e-12)
    np.testing.assert_allclose(ml.DCT(inverse=True).fit(out).transform(out), X, atol=1e-12)


def _interaction_frame():
    # Spark's guide for Interaction: id1 and two 3-vectors
    return pd.DataFrame({"id1": [1.0, 2.0, 3.0], "a": [1.0, 4.0, 6.0], "b": [2.0, 3.0, 1.0], "c": [3.0, 8.0, 9.0],
                         "d": [8.0, 7.0, 2.0], "e": [4.0, 9.0, 3.0], "f": [5.0, 8.0, 6.0]})


@on_cluster
def test_interaction_reproduces_sparks_example_on_vector_columns():
    frame = _interaction_frame()
    ds = sd.from_pandas(frame).repartition(2)
    ds = ml.VectorAssembler(["a", "b", "c"], output_col="vec1").transform(ds)
    ds = ml.VectorAssembler(["d", "e", "f"], output_col="vec2").transform(ds)
    inter = ml.Interaction(input_cols=["id1", "vec1", "vec2"]).fit(ds)
    assert inter.input_widths_ == [1, 3, 3]
    out = _vectors(inter.transform(ds), "interaction")
    np.testing.assert_array_equal(out[0], [8.0, 4.0, 5.0, 16.0, 8.0, 10.0, 24.0, 12.0, 15.0])
    np.testing.assert_array_equal(out[1], [56.0, 72.0, 64.0, 42.0, 54.0, 48.0, 112.0, 144.0, 128.0])
    assert inter.get_feature_names_out()[:2].tolist() == ["id1:vec1_0:vec2_0", "id1:vec1_0:vec2_1"]
    # on a DataFrame each column is its own factor
    assert ml.Interaction().fit(frame[["id1", "a"]]).transform(frame[["id1", "a"]]).ravel().tolist() == [1, 8, 18]


def test_vector_indexer_reproduces_sparks_example():
    # pyspark.ml.feature.VectorIndexer's doctest: maxCategories=2, feature 0 {-1, 0} categorical
    X = np.array([[-1.0, 0.0], [0.0, 1.0], [0.0, 2.0]])
    vi = ml.VectorIndexer(max_categories=2).fit(X)
    assert vi.category_maps_ == {0: {0.0: 0, -1.0: 1}}        # 0.0 keeps index 0
    np.testing.assert_array_equal(vi.transform(X)[0], [1.0, 0.0])
    np.testing.assert_array_equal(ml.VectorIndexer(max_categories=3).fit(X).transform(X),
                                  [[1.0, 0.0], [0.0, 1.0], [0.0, 2.0]])


def test_vector_indexer_unseen_values_by_handle_invalid():
    X = np.array([[1.0, 5.0], [2.0, 5.0], [1.0, 6.0]])
    Z = np.array([[3.0, 5.0], [2.0, 6.0]])
    with pytest.raises(InvalidInputError, match=r"feature 'x0' \(index 0\) holds 3.0"):
        ml.VectorIndexer().fit(X).transform(Z)
    np.testing.assert_array_equal(ml.VectorIndexer(handle_invalid="keep").fit(X).transform(Z),
                                  [[2.0, 0.0], [1.0, 1.0]])
    np.testing.assert_array_equal(ml.VectorIndexer(handle_invalid="skip").fit(X).transform(Z), [[1.0, 1.0]])
    with pytest.raises(InvalidInputError, match="max_categories"):
        ml.VectorIndexer(max_categories=1).fit(X)


@on_cluster
def test_vector_indexer_on_a_dataset_merges_block_categories():
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"cat": rng.integers(0, 4, 900).astype(float), "cont": rng.normal(size=900),
                          "id": np.arange(900)})
    ds = sd.from_pandas(frame).repartition(3)
    ds = ml.VectorAssembler(["cat", "cont"]).transform(ds)       # the vector column "features"
    vi = ml.VectorIndexer(max_categories=5).fit(ds, features=["features"])
    assert vi.category_maps_ == {0: {0.0: 0, 1.0: 1, 2.0: 2, 3.0: 3}}
    out = vi.transform(ds).to_pandas()
    np.testing.assert_array_equal(np.stack(out["indexed"].to_numpy()), frame[["cat", "cont"]].to_numpy())
    assert out["id"].tolist() == list(range(900))
    restored = _round_trip(vi)
    np.testing.assert_array_equal(restored.transform(frame[["cat", "cont"]].to_numpy()),
                                  frame[["cat", "cont"]].to_numpy())


def _round_trip(est):
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        ml.save(est, d + "/m")
        return ml.load(d + "/m")


@on_cluster
@pytest.mark.parametrize("make", [lambda: ml.VectorSlicer(indices=[2, 0]),
                                  lambda: ml.ElementwiseProduct([1.0, -2.0, 0.5]),
                                  lambda: ml.DCT(), lambda: ml.Interaction()],
                         ids=["slicer", "product", "dct", "interaction"])
def test_vector_transformers_on_a_dataset_match_the_frame(make):
    rng = np.random.default_rng(4)
    frame = pd.DataFrame(rng.normal(size=(500, 3)), columns=["a", "b", "c"]).assign(id=np.arange(500))
    ds = sd.from_pandas(frame).repartition(3)
    est = make().fit(ds, features=["a", "b", "c"])
    out = est.transform(ds)
    assert set(out.columns()) == {"a", "b", "c", "id", est.output_col}    # the inputs stay
    np.testing.assert_allclose(_vectors(out, est.output_col).reshape(500, -1),
                               est.transform(frame[["a", "b", "c"]]), rtol=1e-12)


@on_cluster
def test_a_missing_vector_column_at_transform_is_named():
    frame = pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0]})
    dct = ml.DCT().fit(sd.from_pandas(frame), features=["a", "b"])
    with pytest.raises(Exception, match=r"column 'b' is missing"):
        dct.transform(sd.from_pandas(frame[["a"]])).materialize()
    table = pa.table({"a": [1.0, float("nan")], "b": [1.0, 2.0]})
    with pytest.raises(Exception, match="NaN"):
        dct.transform(sd.from_arrow(table)).materialize()


def test_binarizer_and_robust_scaler_fuse_into_a_pipeline():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(400, 3)) * [1.0, 20.0, 0.1]
    y = (X[:, 0] + X[:, 1] / 20 > 0).astype(int)
    for step in (ml.RobustScaler(), ml.Binarizer(0.0)):
        pipe = ml.Pipeline([("step", step), ("lr", ml.LogisticRegression())]).fit(X, y)
        ref = ml.LogisticRegression().fit(type(step)(**step.get_params()).fit(X).transform(X), y)
        np.testing.assert_allclose(pipe.named_steps["lr"].coef_, ref.coef_, rtol=1e-6)


def test_saved_transformers_load_and_transform_alike(tmp_path):
    X = np.random.default_rng(6).normal(size=(50, 3)).round(1)
    for est in (ml.RobustScaler().fit(X), ml.Binarizer([0.0, 0.1, -0.1]).fit(X), ml.DCT().fit(X),
                ml.VectorSlicer(indices=[1]).fit(X), ml.Interaction().fit(X),
                ml.ElementwiseProduct([1.0, 2.0, 3.0]).fit(X), ml.VectorIndexer(max_categories=30).fit(X)):
        ml.save(est, tmp_path / type(est).__name__)
        np.testing.assert_array_equal(ml.load(tmp_path / type(est).__name__).transform(X), est.transform(X))



def test_an_empty_block_gets_an_empty_vector_column():
    from shoal.ml._rformula import _features_table
    from shoal.ml._vectors import _vector_table
    frame = pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0], "s": ["u", "v"]})
    empty = pa.Table.from_pandas(frame, preserve_index=False).slice(0, 0)
    dct = ml.DCT().fit(frame[["a", "b"]])
    out = _vector_table(empty, dct, ["a", "b"])            # a block task's work on an empty block
    assert out.num_rows == 0 and out.column("dct").type.shape == [2]
    out = _features_table(empty, ml.RFormula("a ~ s + b").fit(frame))
    assert out.num_rows == 0 and {"features", "label"} <= set(out.column_names)
