"""Feature transformers: scikit-learn equivalents where they exist, Spark's semantics otherwise."""
import numpy as np
import pandas as pd
import pytest
import sklearn.preprocessing as skp
from sklearn.impute import SimpleImputer

import shoal.ml as ml


@pytest.fixture(scope="module")
def X():
    return np.random.default_rng(0).standard_normal((400, 4)) * [1, 10, 0.1, 3] + [0, 5, -2, 1]


@pytest.mark.parametrize("ours,theirs", [
    (ml.StandardScaler(), skp.StandardScaler()),
    (ml.StandardScaler(with_mean=False), skp.StandardScaler(with_mean=False)),
    (ml.MinMaxScaler((-1, 2)), skp.MinMaxScaler((-1, 2))),
    (ml.MaxAbsScaler(), skp.MaxAbsScaler()),
    (ml.Normalizer("l1"), skp.Normalizer("l1")),
    (ml.Normalizer("max"), skp.Normalizer("max")),
    (ml.PolynomialExpansion(3), skp.PolynomialFeatures(3, include_bias=False)),
], ids=lambda e: repr(e))
def test_transformer_matches_sklearn(X, ours, theirs):
    np.testing.assert_allclose(ours.fit(X).transform(X), theirs.fit(X).transform(X), atol=1e-10)


def test_standard_scaler_inverse_round_trips(X):
    s = ml.StandardScaler().fit(X)
    np.testing.assert_allclose(s.inverse_transform(s.transform(X)), X, atol=1e-12)


def test_constant_feature_scales_to_zero_not_nan():
    X = np.column_stack([np.ones(5), np.arange(5.0)])
    assert np.isfinite(ml.StandardScaler().fit_transform(X)).all()


@pytest.mark.parametrize("strategy", ["mean", "median", "most_frequent"])
def test_imputer_matches_simple_imputer(X, strategy):
    Xn = np.round(X) if strategy == "most_frequent" else X.copy()
    Xn[np.random.default_rng(1).random(Xn.shape) < 0.2] = np.nan
    np.testing.assert_allclose(ml.Imputer(strategy=strategy).fit(Xn).transform(Xn),
                               SimpleImputer(strategy=strategy).fit_transform(Xn))


def test_imputer_custom_missing_value():
    X = np.array([[1.0, -1], [3.0, 4], [-1.0, 6]])
    out = ml.Imputer(missing_value=-1).fit(X).transform(X)
    np.testing.assert_array_equal(out, [[1, 5], [3, 4], [2, 6]])


def test_imputer_all_missing_column_is_named():
    df = pd.DataFrame({"a": [1.0, 2.0], "empty": [np.nan, np.nan]})
    with pytest.raises(ValueError, match="column 'empty' holds only missing values"):
        ml.Imputer().fit(df)


def test_bucketizer_follows_spark_bounds():
    b = ml.Bucketizer(splits=[-np.inf, 0.0, 10.0, 20.0]).fit(np.zeros((1, 1)))
    out = b.transform(np.array([[-5.0], [0.0], [9.99], [10.0], [20.0]]))
    np.testing.assert_array_equal(out.ravel(), [0, 1, 1, 2, 2])


def test_bucketizer_out_of_range_and_nan_handling():
    b = ml.Bucketizer(splits=[0.0, 1.0, 2.0]).fit(np.zeros((1, 1)))
    with pytest.raises(ValueError, match="outside the splits"):
        b.transform(np.array([[3.0]]))
    keep = ml.Bucketizer(splits=[0.0, 1.0, 2.0], handle_invalid="keep").fit(np.zeros((1, 1)))
    np.testing.assert_array_equal(keep.transform(np.array([[np.nan], [0.5]])).ravel(), [2, 0])


def test_bucketizer_rejects_unsorted_splits():
    with pytest.raises(ValueError, match="strictly increasing"):
        ml.Bucketizer(splits=[0.0, 2.0, 1.0]).fit(np.zeros((1, 1)))


def test_quantile_discretizer_balances_buckets():
    X = np.random.default_rng(2).exponential(size=(4000, 2))
    out = ml.QuantileDiscretizer(num_buckets=4).fit(X).transform(X)
    counts = np.bincount(out[:, 0].astype(int))
    assert len(counts) == 4 and counts.min() > 900


def test_one_hot_encoder_matches_sklearn():
    X = np.array([["a", 1], ["b", 2], ["a", 3], ["c", 1]], dtype=object)
    ours = ml.OneHotEncoder().fit(X)
    theirs = skp.OneHotEncoder(sparse_output=False).fit(X)
    np.testing.assert_array_equal(ours.transform(X), theirs.transform(X))
    assert list(ours.get_feature_names_out()) == list(theirs.get_feature_names_out())


def test_one_hot_unknown_category_is_named():
    enc = ml.OneHotEncoder().fit(pd.DataFrame({"color": ["red", "blue"]}))
    with pytest.raises(ValueError, match="unknown categories \\['green'\\] in column 'color'"):
        enc.transform(pd.DataFrame({"color": ["green"]}))
    ign = ml.OneHotEncoder(handle_unknown="ignore").fit(pd.DataFrame({"color": ["red", "blue"]}))
    np.testing.assert_array_equal(ign.transform(pd.DataFrame({"color": ["green"]})), [[0, 0]])


def test_one_hot_drop_last_like_spark():
    out = ml.OneHotEncoder(drop_last=True).fit_transform(np.array([[0], [1], [2]]))
    np.testing.assert_array_equal(out, [[1, 0], [0, 1], [0, 0]])


def test_string_indexer_orders_by_frequency():
    si = ml.StringIndexer().fit(np.array(["b", "a", "a", "c", "a", "b"]))
    assert list(si.labels_[0]) == ["a", "b", "c"]
    np.testing.assert_array_equal(si.transform(np.array(["c", "a"])), [2.0, 0.0])
    np.testing.assert_array_equal(si.inverse_transform([2, 0]), ["c", "a"])


def test_string_indexer_unseen_label_modes():
    si = ml.StringIndexer().fit(np.array(["x", "y"]))
    with pytest.raises(ValueError, match="unseen label 'z'"):
        si.transform(np.array(["z"]))
    keep = ml.StringIndexer(handle_invalid="keep").fit(np.array(["x", "y"]))
    np.testing.assert_array_equal(keep.transform(np.array(["z", "y"])), [2.0, 1.0])
    skip = ml.StringIndexer(handle_invalid="skip").fit(np.array(["x", "y"]))
    np.testing.assert_array_equal(skip.transform(np.array(["z", "y"])), [1.0])


def test_vector_assembler_flattens_scalar_and_vector_columns():
    df = pd.DataFrame({"a": [1.0, 2.0], "v": [np.array([3.0, 4.0]), np.array([5.0, 6.0])]})
    np.testing.assert_array_equal(ml.VectorAssembler(["a", "v"]).transform(df), [[1, 3, 4], [2, 5, 6]])


def test_vector_assembler_names_missing_and_nan_columns():
    df = pd.DataFrame({"a": [1.0, np.nan]})
    with pytest.raises(ValueError, match="column 'b' is missing"):
        ml.VectorAssembler(["a", "b"]).transform(df)
    with pytest.raises(ValueError, match="column 'a' holds NaN"):
        ml.VectorAssembler(["a"]).transform(df)
    assert ml.VectorAssembler(["a"], handle_invalid="skip").transform(df).shape == (1, 1)


def test_text_pipeline_tokenizer_hashing_tf_idf():
    docs = ["Spark and shoal", "shoal shoal shoal", "and more"]
    tokens = ml.Tokenizer().transform(docs)
    assert tokens[0] == ["spark", "and", "shoal"]
    tf = ml.HashingTF(num_features=64).transform(tokens)
    assert tf.shape == (3, 64) and tf.sum() == 8
    idf = ml.IDF().fit(tf)
    # "shoal" is in 2 of 3 documents: idf = log(4 / 3)
    shoal_col = tf[1].indices[0]
    assert idf.idf_[shoal_col] == pytest.approx(np.log(4 / 3))
    out = idf.transform(tf)
    assert out[1, shoal_col] == pytest.approx(3 * np.log(4 / 3))


def test_hashing_tf_rejects_raw_strings():
    with pytest.raises(ValueError, match="run Tokenizer"):
        ml.HashingTF().transform(["not tokenized"])


# ----------------------------------------------------------------------------------
# on a shoal.data Dataset: fit from per-block statistics, transform lazily

from _cluster import cluster  # noqa: F401  (module-scoped fixture)

on_cluster = pytest.mark.usefixtures("cluster")


@pytest.fixture(scope="module")
def frame():
    rng = np.random.default_rng(3)
    n = 2000
    # block-dependent label frequencies: per-block orders differ from the global one
    color = np.where(np.arange(n) < n // 2, rng.choice(["red", "blue"], n, p=[0.9, 0.1]),
                     rng.choice(["blue", "green"], n, p=[0.55, 0.45]))
    df = pd.DataFrame({"color": color, "x": rng.normal(size=n), "z": rng.uniform(-3, 3, n)})
    df["label"] = ((df.color == "red") | (df.x > 0.5)).astype(int)
    return df


def _dataset(df, blocks=4):
    import shoal.data as sd
    return sd.from_pandas(df).repartition(blocks)


@on_cluster
def test_string_indexer_on_dataset_merges_block_counts(frame):
    ours = ml.StringIndexer().fit(_dataset(frame), "label")
    ref = ml.StringIndexer().fit(frame[["color"]])
    assert [list(v) for v in ours.labels_] == [list(v) for v in ref.labels_]
    assert list(ours.feature_names_in_) == ["color"] and ours.output_cols_ == ["color_index"]


@on_cluster
def test_string_indexer_transform_on_dataset_adds_column(frame):
    import shoal.data as sd
    ds = _dataset(frame)
    indexer = ml.StringIndexer(input_cols=["color"], output_cols=["c"]).fit(ds)
    out = indexer.transform(ds)
    assert isinstance(out, sd.Dataset)
    result = out.to_pandas()
    assert list(result.columns) == ["color", "x", "z", "label", "c"]
    np.testing.assert_array_equal(result["c"], indexer.transform(frame[["color"]])[:, 0])


@on_cluster
def test_string_indexer_skip_drops_unseen_rows_of_dataset(frame):
    train = frame[frame.color != "green"]
    indexer = ml.StringIndexer(handle_invalid="skip").fit(_dataset(train), "label")
    result = indexer.transform(_dataset(frame)).to_pandas()
    assert len(result) == (frame.color != "green").sum()
    assert set(result["color"]) == {"red", "blue"}


@on_cluster
def test_string_indexer_missing_input_col_is_named(frame):
    with pytest.raises(ValueError, match="column 'nope'"):
        ml.StringIndexer(input_cols=["nope"]).fit(_dataset(frame))


@on_cluster
def test_vector_assembler_on_dataset_adds_a_vector_column(frame):
    out = ml.VectorAssembler(["x", "z"]).transform(_dataset(frame))
    vectors = out.to_numpy("features")
    assert vectors.shape == (len(frame), 2)
    np.testing.assert_array_equal(vectors, frame[["x", "z"]].to_numpy())
    assert out.columns() == ["color", "x", "z", "label", "features"]


@on_cluster
def test_one_hot_encoder_on_dataset_encodes_input_cols_only(frame):
    enc = ml.OneHotEncoder(input_cols=["color"]).fit(_dataset(frame), "label")
    result = enc.transform(_dataset(frame)).to_pandas()
    assert list(result.columns) == ["x", "z", "label", "color_blue", "color_green", "color_red"]
    np.testing.assert_array_equal(result["color_green"], (frame.color == "green").astype(float))


@on_cluster
def test_pipeline_of_spark_style_stages_runs_on_a_dataset(frame):
    ds = _dataset(frame)
    pipe = ml.Pipeline([("index", ml.StringIndexer()), ("assemble", ml.VectorAssembler(["color_index", "x"])),
                        ("lr", ml.LogisticRegression())]).fit(ds, "label")
    indexed = ml.StringIndexer().fit(frame[["color"]]).transform(frame[["color"]])[:, 0]
    ref = ml.LogisticRegression().fit(np.column_stack([indexed, frame.x]), frame.label)
    np.testing.assert_allclose(pipe.named_steps["lr"].coef_, ref.coef_, atol=1e-6)
    np.testing.assert_array_equal(pipe.predict(ds).to_numpy("prediction"), ref.predict(np.column_stack([indexed, frame.x])))
    assert pipe.score(ds, "label") == pytest.approx(ref.score(np.column_stack([indexed, frame.x]), frame.label))


@on_cluster
def test_text_stages_on_dataset_match_arrays():
    texts = ["Spark and shoal", "shoal shoal shoal", "and more", "  More  text ", "x"] * 7
    df = pd.DataFrame({"text": texts, "label": np.arange(len(texts)) % 2})
    pipe = ml.Pipeline([("tok", ml.Tokenizer()), ("tf", ml.HashingTF(num_features=32)),
                        ("idf", ml.IDF())])
    out = pipe.fit(_dataset(df, 3), "label").transform(_dataset(df, 3))
    result = out.to_pandas()
    tokens = ml.Tokenizer().transform(texts)
    assert [list(t) for t in result["tokens"]] == [list(t) for t in tokens]
    tf = ml.HashingTF(num_features=32).transform(tokens)
    idf = ml.IDF().fit(tf)
    np.testing.assert_allclose(pipe.named_steps["idf"].idf_, idf.idf_)
    from shoal.ml._input import sparse_vectors_to_csr
    tfidf = sparse_vectors_to_csr(out.to_arrow().column("tfidf"))
    np.testing.assert_allclose(tfidf.toarray(), idf.transform(tf).toarray())


@on_cluster
def test_tokenizer_missing_text_column_is_named(frame):
    out = ml.Tokenizer().transform(_dataset(frame))    # lazy: nothing runs yet
    with pytest.raises(ValueError, match="column 'text'"):
        out.materialize()


@on_cluster
@pytest.mark.parametrize("make", [
    lambda: ml.StandardScaler(), lambda: ml.MinMaxScaler(), lambda: ml.MaxAbsScaler(),
    lambda: ml.Normalizer(), lambda: ml.Imputer(strategy="median"),
    lambda: ml.Bucketizer([-np.inf, -1, 0, 1, np.inf]), lambda: ml.QuantileDiscretizer(4),
    lambda: ml.PolynomialExpansion(2),
], ids=["standard", "minmax", "maxabs", "normalizer", "imputer", "bucketizer", "quantile", "poly"])
def test_numeric_transformers_on_dataset_match_dataframe(frame, make):
    cols = ["x", "z"]
    ds = _dataset(frame[cols + ["label"]])
    ours = make().fit(ds, "label")
    ref = make().fit(frame[cols])
    out = ours.transform(ds).to_pandas()
    names = list(ours.get_feature_names_out())
    assert "label" in out.columns
    np.testing.assert_allclose(out[names].to_numpy(), ours.transform(frame[cols]), atol=1e-12)
    if not isinstance(ours, ml.QuantileDiscretizer):   # its merged sketch is approximate
        np.testing.assert_allclose(out[names].to_numpy(), ref.transform(frame[cols]), atol=1e-9)


@on_cluster
def test_bucketizer_skip_drops_nan_rows_of_dataset(frame):
    df = frame[["x", "label"]].copy()
    df.loc[[3, 700, 1500], "x"] = np.nan
    bucketizer = ml.Bucketizer([-np.inf, 0, np.inf], handle_invalid="skip").fit(_dataset(df), "label")
    out = bucketizer.transform(_dataset(df)).to_pandas()
    assert len(out) == len(df) - 3
    np.testing.assert_array_equal(out["label"], df["label"].drop([3, 700, 1500]))


# ----------------------------------------------------------------------------------
# sample_weight

def test_standard_scaler_sample_weight_matches_sklearn(X):
    w = np.random.default_rng(1).uniform(0, 3, len(X))
    w[:10] = 0
    ours = ml.StandardScaler().fit(X, sample_weight=w)
    theirs = skp.StandardScaler().fit(X, sample_weight=w)
    np.testing.assert_allclose(ours.mean_, theirs.mean_, rtol=1e-12)
    np.testing.assert_allclose(ours.var_, theirs.var_, rtol=1e-10)
    assert ours.n_samples_seen_ == pytest.approx(theirs.n_samples_seen_)


def test_standard_scaler_sample_weight_across_blocks(X):
    from shoal.ml._input import as_design_matrix
    w = np.random.default_rng(2).uniform(0, 2, len(X))
    dm = as_design_matrix(X, block_rows=70, executor="local")
    assert len(dm.blocks) > 5
    ours = ml.StandardScaler().fit(dm, sample_weight=w)
    theirs = skp.StandardScaler().fit(X, sample_weight=w)
    np.testing.assert_allclose(ours.mean_, theirs.mean_, rtol=1e-12)
    np.testing.assert_allclose(ours.scale_, theirs.scale_, rtol=1e-10)


@pytest.mark.parametrize("bad,match", [
    (lambda n: np.ones(n - 1), "shape"), (lambda n: -np.ones(n), "negative"),
    (lambda n: np.zeros(n), "weight is zero"), (lambda n: "w", "array of one weight per row"),
])
def test_standard_scaler_bad_sample_weight_is_named(X, bad, match):
    with pytest.raises(ValueError, match=match):
        ml.StandardScaler().fit(X, sample_weight=bad(len(X)))


@on_cluster
def test_hashing_tf_on_dataset_counts_repeats_like_arrays():
    tokens = [["a", "b", "a"], [], ["c"] * 4 + ["a"], ["b"]]
    import pyarrow as pa

    import shoal.data as sd
    ds = sd.from_arrow(pa.table({"tokens": pa.array(tokens, pa.list_(pa.string()))}))
    from shoal.ml._input import sparse_vectors_to_csr
    for binary in (False, True):
        hashing = ml.HashingTF(num_features=8, binary=binary)
        out = sparse_vectors_to_csr(hashing.transform(ds).to_arrow().column("tf"))
        np.testing.assert_array_equal(out.toarray(), hashing.transform(tokens).toarray())


@on_cluster
def test_hashing_tf_on_dataset_rejects_text_column():
    import shoal.data as sd
    ds = sd.from_pandas(pd.DataFrame({"tokens": ["not tokenized"]}))
    with pytest.raises(ValueError, match="run Tokenizer"):
        ml.HashingTF().transform(ds).materialize()


@on_cluster
def test_dataset_fitted_string_indexer_saves_and_loads(frame, tmp_path):
    ds = _dataset(frame)
    indexer = ml.StringIndexer(output_cols=["ci"]).fit(ds, "label")
    indexer.save(tmp_path / "indexer")
    loaded = ml.load(tmp_path / "indexer")
    assert loaded.output_cols_ == ["ci"]
    np.testing.assert_array_equal(loaded.transform(ds).to_numpy("ci"), indexer.transform(ds).to_numpy("ci"))
