"""The feature transformers of issue 18 against a live local Spark (pyspark.ml.feature), on the
same generated data: RFormula, TargetEncoder, VectorIndexer, FeatureHasher, RobustScaler, DCT,
Interaction, VectorSlicer, ElementwiseProduct, Binarizer, RegexTokenizer, IndexToString.

One SparkSession (local[1]) serves the module; skipped without pyspark or Java.
"""
import shutil

import numpy as np
import pandas as pd
import pytest

import shoal.data as sd
import shoal.ml as ml
from tests.ml._cluster import cluster  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def spark():
    pytest.importorskip("pyspark")
    if shutil.which("java") is None:
        pytest.skip("Spark needs a Java runtime (java is not on PATH)")
    from pyspark.sql import SparkSession
    session = (SparkSession.builder.master("local[1]").appName("shoal-test-features")
               .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
               .config("spark.sql.shuffle.partitions", "1").getOrCreate())
    try:
        yield session
    finally:
        session.stop()


def _frame(n=60, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "a": rng.choice(["red", "green", "blue"], n, p=[0.5, 0.3, 0.2]),
        "b": rng.choice(["s", "m", "l", "xl"], n),
        "x": np.round(rng.normal(size=n), 3),
        "z": rng.integers(0, 5, n).astype(float),
        "flag": rng.random(n) > 0.5,
        "y": (rng.random(n) > 0.6).astype(float),
        "s": rng.choice(["yes", "no", "maybe"], n, p=[0.5, 0.3, 0.2]),
    })


def _dense(rows, column):
    return np.array([r[column].toArray() for r in rows])


@pytest.mark.parametrize("formula", ["y ~ a + b + x", "y ~ a:b + x", "y ~ a:x + b - 1", "y ~ . - s - flag",
                                     "s ~ x + a + z:x", "y ~ a + b + 0", "y ~ a:b:z + flag",
                                     "y ~ .:z - s:z - flag:z"])
def test_rformula_matches_spark(spark, formula):
    from pyspark.ml.feature import RFormula as SparkRFormula
    frame = _frame()
    rows = SparkRFormula(formula=formula).fit(spark.createDataFrame(frame)).transform(
        spark.createDataFrame(frame)).collect()
    ours = ml.RFormula(formula).fit(frame)
    X, y = ours.transform_xy(frame)
    np.testing.assert_allclose(X, _dense(rows, "features"), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(y, [r["label"] for r in rows])


@pytest.mark.parametrize("target_type,smoothing", [("binary", 0.0), ("binary", 3.0), ("continuous", 0.0),
                                                   ("continuous", 1.5)])
def test_target_encoder_matches_spark(spark, target_type, smoothing):
    from pyspark.ml.feature import TargetEncoder as SparkTargetEncoder
    frame = _frame(200, seed=1)
    frame["c"] = np.random.default_rng(2).integers(0, 6, len(frame)).astype(float)
    label = "y" if target_type == "binary" else "x"
    spark_model = SparkTargetEncoder(inputCols=["z", "c"], outputCols=["z_enc", "c_enc"], labelCol=label,
                                     targetType=target_type, smoothing=smoothing).fit(spark.createDataFrame(frame))
    rows = spark_model.transform(spark.createDataFrame(frame)).collect()
    ours = ml.TargetEncoder(target_type=target_type, smoothing=smoothing).fit(frame, features=["z", "c"],
                                                                                label=label)
    np.testing.assert_allclose(ours.transform(frame), [[r["z_enc"], r["c_enc"]] for r in rows], rtol=1e-12)


def test_vector_indexer_matches_spark(spark):
    from pyspark.ml.feature import VectorIndexer as SparkVectorIndexer
    from pyspark.ml.linalg import Vectors
    rng = np.random.default_rng(3)
    X = np.column_stack([rng.integers(-1, 2, 80), rng.normal(size=80), rng.integers(2, 5, 80) * 1.5,
                         np.zeros(80)]).astype(float)
    df = spark.createDataFrame([(Vectors.dense(r),) for r in X.tolist()], ["features"])
    model = SparkVectorIndexer(maxCategories=3, inputCol="features", outputCol="indexed").fit(df)
    ours = ml.VectorIndexer(max_categories=3).fit(X)
    assert ours.category_maps_ == {int(k): {float(v): int(i) for v, i in m.items()}
                                   for k, m in model.categoryMaps.items()}
    np.testing.assert_array_equal(ours.transform(X), _dense(model.transform(df).collect(), "indexed"))


def test_feature_hasher_matches_spark(spark):
    from pyspark.ml.feature import FeatureHasher as SparkFeatureHasher
    frame = _frame(40, seed=4)[["a", "x", "z", "flag", "s"]]
    for cats in ([], ["z"]):
        rows = SparkFeatureHasher(inputCols=list(frame.columns), outputCol="f", numFeatures=128,
                                  categoricalCols=cats).transform(spark.createDataFrame(frame)).collect()
        ours = ml.FeatureHasher(128, categorical_cols=cats).transform(frame).toarray()
        np.testing.assert_allclose(ours, _dense(rows, "f"), rtol=0, atol=1e-12)


def test_robust_scaler_is_within_sparks_quantile_error(spark):
    from pyspark.ml.feature import RobustScaler as SparkRobustScaler
    from pyspark.ml.linalg import Vectors
    X = np.random.default_rng(5).normal(size=(401, 3)) * [1.0, 5.0, 0.2]
    df = spark.createDataFrame([(Vectors.dense(r),) for r in X.tolist()], ["features"])
    model = SparkRobustScaler(inputCol="features", outputCol="scaled", withCentering=True).fit(df)
    ours = ml.RobustScaler().fit(X)
    # Spark's quantiles are order statistics within relativeError=0.001 of the rank; ours
    # interpolate (scikit-learn's): with 401 rows the quartiles and median fall on samples
    np.testing.assert_allclose(ours.center_, model.median.toArray(), rtol=1e-12)
    np.testing.assert_allclose(ours.scale_, model.range.toArray(), rtol=1e-12)


def test_vector_transformers_match_spark(spark, cluster):  # noqa: F811
    from pyspark.ml.feature import DCT as SparkDCT
    from pyspark.ml.feature import Binarizer as SparkBinarizer
    from pyspark.ml.feature import ElementwiseProduct as SparkElementwiseProduct
    from pyspark.ml.feature import Interaction as SparkInteraction
    from pyspark.ml.feature import VectorSlicer as SparkVectorSlicer
    from pyspark.ml.linalg import Vectors
    X = np.random.default_rng(6).normal(size=(30, 4))
    df = spark.createDataFrame([(Vectors.dense(r), float(r[0]), float(r[1])) for r in X.tolist()],
                               ["v", "p", "q"])
    for inverse in (False, True):
        rows = SparkDCT(inverse=inverse, inputCol="v", outputCol="o").transform(df).collect()
        np.testing.assert_allclose(ml.DCT(inverse=inverse).fit(X).transform(X), _dense(rows, "o"), atol=1e-12)
    rows = SparkElementwiseProduct(scalingVec=Vectors.dense([1.0, -2.0, 0.5, 3.0]), inputCol="v",
                                   outputCol="o").transform(df).collect()
    np.testing.assert_allclose(ml.ElementwiseProduct([1.0, -2.0, 0.5, 3.0]).fit(X).transform(X), _dense(rows, "o"))
    rows = SparkVectorSlicer(indices=[3, 1], inputCol="v", outputCol="o").transform(df).collect()
    np.testing.assert_array_equal(ml.VectorSlicer(indices=[3, 1]).fit(X).transform(X), _dense(rows, "o"))
    rows = SparkBinarizer(threshold=0.2, inputCol="v", outputCol="o").transform(df).collect()
    np.testing.assert_array_equal(ml.Binarizer(0.2).transform(X), _dense(rows, "o"))
    # Spark's Interaction needs the vector's attributes, which VectorAssembler writes
    from pyspark.ml.feature import VectorAssembler as SparkVectorAssembler
    parts = spark.createDataFrame(pd.DataFrame(X, columns=["c0", "c1", "c2", "c3"]).assign(p=X[:, 0], q=X[:, 1]))
    parts = SparkVectorAssembler(inputCols=["c0", "c1", "c2", "c3"], outputCol="v").transform(parts)
    rows = SparkInteraction(inputCols=["p", "v", "q"], outputCol="o").transform(parts).collect()
    ds = sd.from_pandas(pd.DataFrame(X, columns=["c0", "c1", "c2", "c3"]).assign(p=X[:, 0], q=X[:, 1]))
    ds = ml.VectorAssembler(["c0", "c1", "c2", "c3"], output_col="v").transform(ds)
    out = ml.Interaction(input_cols=["p", "v", "q"]).fit(ds).transform(ds).to_pandas()["interaction"]
    np.testing.assert_allclose(np.stack(out.to_numpy()), _dense(rows, "o"), rtol=1e-12)


def test_regex_tokenizer_and_index_to_string_match_spark(spark):
    from pyspark.ml.feature import IndexToString as SparkIndexToString
    from pyspark.ml.feature import RegexTokenizer as SparkRegexTokenizer
    docs = ["Hi I heard about Spark", "I wish Java could use case classes", "Logistic,regression models are neat"]
    df = spark.createDataFrame([(d, float(i % 3)) for i, d in enumerate(docs)], ["text", "idx"])
    for kw, ours in (({"pattern": "\\W"}, {"pattern": r"\W"}),
                     ({"pattern": "\\w+", "gaps": False, "minTokenLength": 3}, {"pattern": r"\w+", "gaps": False,
                                                                                  "min_token_length": 3})):
        rows = SparkRegexTokenizer(inputCol="text", outputCol="t", **kw).transform(df).collect()
        assert [list(t) for t in ml.RegexTokenizer(**ours).transform(docs)] == [r["t"] for r in rows]
    labels = ["a", "b", "c"]
    rows = SparkIndexToString(inputCol="idx", outputCol="s", labels=labels).transform(df).collect()
    assert list(ml.IndexToString(labels=labels).transform(np.array([0.0, 1.0, 2.0]))) == [r["s"] for r in rows]
