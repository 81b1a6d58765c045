"""The one fit signature: every estimator in shoal.ml.__all__ fits on a Dataset as
``fit(ds, features=[...], label=...)``, and predict/transform on a Dataset give a Dataset.

A new estimator in shoal.ml.__all__ is picked up here; if its constructor needs arguments or
its input is not numeric, give it an entry in RECIPES.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from sklearn.base import BaseEstimator, is_classifier, is_regressor

import shoal.data as sd
import shoal.ml as ml
from shoal.exceptions import InvalidInputError
from tests.ml._cluster import cluster  # noqa: F401

pytestmark = pytest.mark.usefixtures("cluster")

NUMERIC = ["x0", "x1", "x2", "x3"]
N = 240


def _frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    X = rng.uniform(0.0, 1.0, size=(N, 4))     # non-negative: the count models accept it too
    df = pd.DataFrame(X, columns=NUMERIC)
    df["y"] = (X[:, 0] + X[:, 1] + 0.2 * rng.normal(size=N) > 1.0).astype(np.int64)
    df["target"] = X @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.1 * rng.normal(size=N)
    df["color"] = np.array(["red", "green", "blue"])[rng.integers(0, 3, N)]
    words = np.array(["shoal", "fish", "swim", "sea", "net"])
    df["text"] = [" ".join(words[rng.integers(0, 5, 3)]) for _ in range(N)]
    df["id"] = np.arange(N)
    return df


def _dataset(df: pd.DataFrame) -> sd.Dataset:
    table = pa.Table.from_pandas(df, preserve_index=False)
    tokens = ml.Tokenizer().transform(df["text"].tolist())
    table = table.append_column("tokens", pa.array([list(t) for t in tokens], pa.list_(pa.string())))
    tf = ml.HashingTF(num_features=16).transform(tokens).toarray()
    table = table.append_column("tf", pa.FixedShapeTensorArray.from_numpy_ndarray(tf))
    table = table.append_column("basket", pa.array([sorted(set(t)) for t in tokens], pa.list_(pa.string())))
    return sd.from_arrow(table).repartition(3)


@pytest.fixture(scope="module")
def frame():
    return _frame()


@pytest.fixture(scope="module")
def dataset(frame, cluster):  # noqa: F811
    return _dataset(frame).materialize()


# name -> (constructor, features, label); label None: unsupervised. Absent names: the default
# constructor on the numeric columns, the label by kind (classifier "y", regressor "target").
RECIPES = {
    "Bucketizer": (lambda: ml.Bucketizer(splits=[-np.inf, 0.5, np.inf]), NUMERIC, None),
    "QuantileDiscretizer": (lambda: ml.QuantileDiscretizer(num_buckets=3), NUMERIC, None),
    "KMeans": (lambda: ml.KMeans(n_clusters=2, random_state=0), NUMERIC, None),
    "ALS": (lambda: ml.ALS(rank=2, max_iter=2, random_state=0), ["id", "y"], "target"),
    "OneHotEncoder": (ml.OneHotEncoder, ["color"], None),
    "StringIndexer": (ml.StringIndexer, ["color"], None),
    "VectorAssembler": (ml.VectorAssembler, NUMERIC, None),
    "Tokenizer": (ml.Tokenizer, ["text"], None),
    "HashingTF": (lambda: ml.HashingTF(num_features=16), ["tokens"], None),
    "IDF": (ml.IDF, ["tf"], None),
    "CountVectorizer": (ml.CountVectorizer, ["tokens"], None),
    "NGram": (ml.NGram, ["tokens"], None),
    "StopWordsRemover": (ml.StopWordsRemover, ["tokens"], None),
    "FPGrowth": (lambda: ml.FPGrowth(min_support=0.1, min_confidence=0.1), ["basket"], None),
    "BisectingKMeans": (lambda: ml.BisectingKMeans(n_clusters=3, random_state=0), NUMERIC, None),
    "GaussianMixture": (lambda: ml.GaussianMixture(n_components=2, random_state=0), NUMERIC, None),
    "VarianceThresholdSelector": (ml.VarianceThresholdSelector, NUMERIC, None),
    "RegexTokenizer": (ml.RegexTokenizer, ["text"], None),
    "FeatureHasher": (lambda: ml.FeatureHasher(num_features=32), NUMERIC + ["color"], None),
    "VectorSlicer": (lambda: ml.VectorSlicer(indices=[0, 2]), NUMERIC, None),
    "ElementwiseProduct": (lambda: ml.ElementwiseProduct([1.0, 2.0, 3.0, 4.0]), NUMERIC, None),
    "TargetEncoder": (ml.TargetEncoder, ["color", "x0"], "target"),
    "IndexToString": (lambda: ml.IndexToString(labels=["no", "yes"]), ["y"], None),
    "RFormula": (lambda: ml.RFormula("target ~ x0 + x1 + x2 + x3"), NUMERIC, None),
    "Word2Vec": (lambda: ml.Word2Vec(vector_size=4, min_count=1, seed=0), ["tokens"], None),
    "MinHashLSH": (lambda: ml.MinHashLSH(num_hash_tables=2, seed=0), ["tf"], None),
    "BucketedRandomProjectionLSH": (lambda: ml.BucketedRandomProjectionLSH(2.0, seed=0), ["tf"], None),
    "ChiSqSelector": (lambda: ml.ChiSqSelector(num_top_features=2), NUMERIC, "y"),
    "UnivariateFeatureSelector": (lambda: ml.UnivariateFeatureSelector(selection_threshold=2), NUMERIC, "y"),
    "LDA": (lambda: ml.LDA(n_components=2, max_iter=2, random_state=0), NUMERIC, None),
    "LatentDirichletAllocation": (lambda: ml.LatentDirichletAllocation(n_components=2, max_iter=2,
                                                                       random_state=0), NUMERIC, None),
    "RandomForestClassifier": (lambda: ml.RandomForestClassifier(n_estimators=3, max_depth=3), NUMERIC, "y"),
    "RandomForestRegressor": (lambda: ml.RandomForestRegressor(n_estimators=3, max_depth=3), NUMERIC, "target"),
    "GradientBoostingClassifier": (lambda: ml.GradientBoostingClassifier(n_estimators=3, max_depth=2),
                                   NUMERIC, "y"),
    "GradientBoostingRegressor": (lambda: ml.GradientBoostingRegressor(n_estimators=3, max_depth=2),
                                  NUMERIC, "target"),
    # unregularised L-BFGS on a network is chaotic: the frame's and the Dataset's different
    # summation orders (1e-16 apart) part by 1e-4 in probability after ~70 iterations, so the
    # comparison stops at 30, where they agree to ~1e-12
    "MultilayerPerceptronClassifier": (lambda: ml.MultilayerPerceptronClassifier(max_iter=30, random_state=0),
                                       NUMERIC, "y"),
    "FMClassifier": (lambda: ml.FMClassifier(factor_size=2, max_iter=30, random_state=0), NUMERIC, "y"),
    "FMRegressor": (lambda: ml.FMRegressor(factor_size=2, max_iter=30, random_state=0), NUMERIC, "target"),
    # survival times must be positive: x3 (uniform on [0, 1]) is the time, every event observed
    "AFTSurvivalRegression": (lambda: ml.AFTSurvivalRegression(censor_col=None), NUMERIC[:3], "x3"),
    "OneVsRest": (lambda: ml.OneVsRest(ml.LogisticRegression()), NUMERIC, "y"),
    "Pipeline": (lambda: ml.Pipeline([("scale", ml.StandardScaler()), ("lr", ml.LogisticRegression())]),
                 NUMERIC, "y"),
    "CrossValidator": (lambda: ml.CrossValidator(ml.LogisticRegression(), {"C": [0.1, 1.0]}, num_folds=2),
                       NUMERIC, "y"),
    "TrainValidationSplit": (lambda: ml.TrainValidationSplit(ml.Ridge(), {"alpha": [0.1, 1.0]}),
                             NUMERIC, "target"),
}


def _estimator_names() -> list[str]:
    names = []
    for name in ml.__all__:
        obj = getattr(ml, name)
        if isinstance(obj, type) and issubclass(obj, BaseEstimator):
            names.append(name)
    return names


def _recipe(name):
    if name in RECIPES:
        return RECIPES[name]
    cls = getattr(ml, name)
    est = cls()
    label = "y" if is_classifier(est) else "target" if is_regressor(est) else None
    return cls, NUMERIC, label


def test_every_estimator_class_is_walked():
    names = _estimator_names()
    assert len(names) >= 30
    for name in ("LogisticRegression", "Pipeline", "Tokenizer", "KMeans", "RandomForestClassifier"):
        assert name in names


@pytest.mark.parametrize("name", _estimator_names())
def test_fit_on_a_dataset_with_features_and_label(name, dataset):
    make, features, label = _recipe(name)
    est = make()
    assert est.fit(dataset, features=features, label=label) is est
    if hasattr(est, "feature_names_in_"):
        assert list(est.feature_names_in_) == features
    elif hasattr(est, "best_estimator_"):
        assert list(est.best_estimator_.feature_names_in_) == features
    else:   # a one-column text step
        assert est._dataset_columns_io()[0] == features
    outputs = [m for m in ("predict", "transform") if hasattr(est, m)]
    assert outputs, f"{name} has neither predict nor transform"
    for method in outputs:
        out = getattr(est, method)(dataset)
        assert isinstance(out, sd.Dataset), f"{name}.{method}(Dataset) gave {type(out).__name__}"
        table = out.to_arrow()
        assert table.num_rows == N
        assert "id" in table.column_names      # other columns pass through
        if method == "predict":
            assert table.column_names[-1] == "prediction"
            np.testing.assert_array_equal(table.column("id").to_numpy(), np.arange(N))   # in order
    if label is not None:
        assert label in out.columns()


@pytest.mark.parametrize("name", [n for n in _estimator_names() if _recipe(n)[1] == NUMERIC])
def test_a_dataframe_fits_the_same_way_and_predicts_arrays(name, frame, dataset):
    make, features, label = _recipe(name)
    on_frame = make().fit(frame, features=features, label=label)
    on_ds = make().fit(dataset, features=features, label=label)
    if not hasattr(on_frame, "predict"):
        out = on_frame.transform(frame)
        assert isinstance(out, np.ndarray) and out.shape[0] == N
        return
    pred = on_frame.predict(frame)
    assert isinstance(pred, np.ndarray) and pred.shape == (N,)
    if not name.startswith(("RandomForest", "GradientBoosting", "KMeans", "TrainValidationSplit",
                            "CrossValidator", "BisectingKMeans", "GaussianMixture")):
        # these shuffle or sample by block layout
        np.testing.assert_allclose(on_ds.predict(dataset).to_numpy("prediction"), pred, atol=1e-6)


def test_predict_proba_and_decision_function_append_their_columns(dataset):
    lr = ml.LogisticRegression().fit(dataset, features=NUMERIC, label="y")
    proba = lr.predict_proba(dataset).to_numpy("probability")
    assert proba.shape == (N, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    raw = lr.decision_function(dataset).to_numpy("raw_prediction")
    np.testing.assert_allclose(raw, lr.decision_function(dataset.to_pandas()[NUMERIC]))


def test_polars_and_arrow_tables_take_the_same_signature(frame):
    pl = pytest.importorskip("polars")
    ref = ml.LogisticRegression().fit(frame, features=NUMERIC, label="y")
    for table in (pl.from_pandas(frame), pa.Table.from_pandas(frame)):
        est = ml.LogisticRegression().fit(table, features=NUMERIC, label="y")
        np.testing.assert_allclose(est.coef_, ref.coef_)
        np.testing.assert_array_equal(est.predict(table), ref.predict(frame))


# ---------------------------------------------------------------- validation at the boundary

def test_an_unknown_column_lists_the_available_ones(dataset):
    with pytest.raises(InvalidInputError, match=r"column 'x9' is missing.*features=.*available columns: "
                                                r"\['x0', 'x1'"):
        ml.LogisticRegression().fit(dataset, features=["x0", "x9"], label="y")
    with pytest.raises(InvalidInputError, match=r"column 'why' is missing.*label="):
        ml.Pipeline([("s", ml.StandardScaler()), ("lr", ml.LogisticRegression())]).fit(
            dataset, features=NUMERIC, label="why")


def test_a_supervised_estimator_without_label_says_how_to_give_it(dataset, frame):
    for X in (dataset, frame):
        with pytest.raises(InvalidInputError, match=r"supervised.*label='<column>'"):
            ml.RandomForestRegressor().fit(X, features=NUMERIC)
    with pytest.raises(InvalidInputError, match="supervised"):
        ml.Pipeline([("s", ml.StandardScaler()), ("lr", ml.LogisticRegression())]).fit(dataset, features=NUMERIC)


def test_the_label_in_features_or_given_twice_is_an_error(dataset):
    with pytest.raises(InvalidInputError, match="also in features="):
        ml.LogisticRegression().fit(dataset, features=NUMERIC + ["y"], label="y")
    with pytest.raises(InvalidInputError, match="label twice"):
        ml.LogisticRegression().fit(dataset, "y", label="target")
    with pytest.raises(InvalidInputError, match="more than once"):
        ml.LogisticRegression().fit(dataset, features=["x0", "x0"], label="y")


def test_column_names_on_an_unnamed_array_are_an_error():
    X, y = np.random.default_rng(0).normal(size=(20, 2)), np.arange(20) % 2
    with pytest.raises(InvalidInputError, match="unnamed ndarray"):
        ml.LogisticRegression().fit(X, y, features=["a", "b"])


def test_y_as_a_column_name_means_label(dataset):
    a = ml.LogisticRegression().fit(dataset, "y", features=NUMERIC)
    b = ml.LogisticRegression().fit(dataset, features=NUMERIC, label="y")
    np.testing.assert_array_equal(a.coef_, b.coef_)


def test_input_cols_and_features_must_agree(dataset):
    with pytest.raises(InvalidInputError, match="input columns twice"):
        ml.OneHotEncoder(input_cols=["color"]).fit(dataset, features=["x0"])
    with pytest.raises(InvalidInputError, match=r"column 'nope' is missing.*input_cols="):
        ml.VectorAssembler(["nope"]).fit(dataset)


def test_a_missing_column_at_predict_time_is_named(dataset):
    lr = ml.LogisticRegression().fit(dataset, features=NUMERIC, label="y")
    with pytest.raises(Exception, match=r"column 'x3' is missing.*available columns"):
        lr.predict(dataset.drop_columns(["x3"])).materialize()


# ---------------------------------------------------------------- Pipeline routing

def test_pipeline_routes_features_through_text_steps(frame, dataset):
    pipe = ml.Pipeline([("tok", ml.Tokenizer(input_col="unused")), ("tf", ml.HashingTF(num_features=16)),
                        ("idf", ml.IDF()), ("lr", ml.LogisticRegression())])
    pipe.fit(dataset, features=["text"], label="y")
    assert pipe.named_steps["tok"]._column() == "text"        # the routed column wins over the default
    assert pipe.named_steps["tf"]._column() == "tokens"
    assert list(pipe.named_steps["lr"].feature_names_in_) == ["tfidf"]
    out = pipe.predict(dataset).to_arrow()
    assert out.num_rows == N and "prediction" in out.column_names


def test_pipeline_routes_features_past_a_step_that_keeps_its_inputs(frame, dataset):
    pipe = ml.Pipeline([("index", ml.StringIndexer()), ("scale", ml.StandardScaler()),
                        ("lr", ml.LogisticRegression())])
    pipe.fit(dataset, features=["color", "x0", "x1"], label="y")
    assert list(pipe.named_steps["index"].feature_names_in_) == ["color"]     # strings only
    assert list(pipe.named_steps["scale"].feature_names_in_) == ["color_index", "x0", "x1"]
    assert list(pipe.named_steps["lr"].feature_names_in_) == ["color_index", "x0", "x1"]
    assert pipe.score(dataset, label="y") > 0.7


def test_pipeline_step_with_its_own_input_cols_reads_them(dataset):
    pipe = ml.Pipeline([("scale", ml.StandardScaler()), ("assemble", ml.VectorAssembler(["x0", "x1"])),
                        ("nb", ml.GaussianNB())])
    pipe.fit(dataset, features=["x0", "x1", "x2"], label="y")
    assert list(pipe.named_steps["nb"].feature_names_in_) == ["features", "x2"]
    assert pipe.named_steps["nb"].n_features_in_ == 3


def test_pipeline_on_a_dataframe_picks_columns_then_fits_as_on_arrays(frame):
    pipe = ml.Pipeline([("scale", ml.StandardScaler()), ("lr", ml.LogisticRegression())])
    pipe.fit(frame, features=NUMERIC, label="y")
    ref = ml.Pipeline([("scale", ml.StandardScaler()), ("lr", ml.LogisticRegression())]).fit(
        frame[NUMERIC].to_numpy(), frame["y"].to_numpy())
    np.testing.assert_allclose(pipe.named_steps["lr"].coef_, ref.named_steps["lr"].coef_)
    np.testing.assert_array_equal(pipe.predict(frame), ref.predict(frame[NUMERIC].to_numpy()))
    assert pipe.score(frame, label="y") == pytest.approx(ref.score(frame[NUMERIC].to_numpy(), frame["y"]))
    assert pipe.get_params()["lr__C"] == 1.0 and "scale" in pipe.named_steps


def test_pipeline_fit_transform_and_fit_predict_take_the_signature(dataset):
    out = ml.Pipeline([("scale", ml.StandardScaler()), ("pca", ml.PCA(n_components=2))]).fit_transform(
        dataset, features=NUMERIC, label="y")
    assert isinstance(out, sd.Dataset) and {"pca0", "pca1", "y", "id"} <= set(out.columns())
    pred = ml.Pipeline([("scale", ml.StandardScaler()), ("km", ml.KMeans(n_clusters=2, random_state=0))]
                       ).fit_predict(dataset, features=NUMERIC)
    assert set(np.unique(pred.to_numpy("prediction"))) <= {0, 1}
