"""Pipelines, model selection and persistence."""
import json

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression as SkLogisticRegression
from sklearn.pipeline import make_pipeline as sk_make_pipeline
from sklearn.preprocessing import StandardScaler as SkStandardScaler

import shoal.ml as ml
from shoal.ml._persist import PersistenceError


@pytest.fixture(scope="module")
def data():
    X, y = make_classification(600, 5, n_informative=4, n_redundant=0, class_sep=1.5, random_state=0)
    return X * 10 + 3, y


def test_pipeline_scales_then_classifies(data):
    X, y = data
    pipe = ml.make_pipeline(ml.StandardScaler(), ml.LogisticRegression())
    pipe.fit(X, y)
    theirs = sk_make_pipeline(SkStandardScaler(), SkLogisticRegression()).fit(X, y)
    assert pipe.score(X, y) == pytest.approx(theirs.score(X, y))
    assert pipe.score(X, y) > 0.7
    assert list(pipe.named_steps) == ["standardscaler", "logisticregression"]


def test_pipeline_clone_keeps_params(data):
    pipe = ml.Pipeline([("s", ml.MinMaxScaler()), ("m", ml.LogisticRegression(C=0.3))])
    assert clone(pipe).get_params()["m__C"] == 0.3


def test_parameter_grid_builder_builds_the_product():
    grid = ml.ParamGridBuilder().add_grid("C", [0.1, 1.0]).add_grid("fit_intercept", [True, False]).build()
    assert len(grid) == 4 and {"C": 0.1, "fit_intercept": False} in grid


@pytest.fixture
def in_process():
    """Fits run in this process (the distributed path is tested in test_distributed.py)."""
    with ml.use_executor("local"):
        yield


def test_cross_validator_picks_the_better_model(data, in_process):
    X, y = data
    cv = ml.CrossValidator(ml.LogisticRegression(), {"C": [1e-6, 1.0]}, num_folds=3).fit(X, y)
    assert cv.best_params_ == {"C": 1.0}
    assert cv.split_scores_.shape == (2, 3)
    assert cv.avg_metrics_[1] > cv.avg_metrics_[0]
    assert cv.predict(X).shape == (600,)


def test_train_validation_split_with_scorer(data, in_process):
    X, y = data
    tvs = ml.TrainValidationSplit(ml.LogisticRegression(), {"C": [0.01, 1.0]}, train_ratio=0.8,
                                  scoring="roc_auc").fit(X, y)
    assert 0.5 < tvs.best_score_ <= 1.0


def test_cross_validator_rejects_bad_folds(data, in_process):
    with pytest.raises(ValueError, match="num_folds"):
        ml.CrossValidator(ml.Ridge(), {"alpha": [1.0]}, num_folds=1).fit(*data)


@pytest.mark.parametrize("make", [
    lambda: ml.LogisticRegression(C=0.5),
    lambda: ml.LinearSVC(),
    lambda: ml.GaussianNB(),
    lambda: ml.KMeans(3, random_state=0),
    lambda: ml.PCA(2),
    lambda: ml.QuantileDiscretizer(num_buckets=3),
], ids=["logreg", "svc", "gnb", "kmeans", "pca", "quantile"])
def test_save_load_round_trip_predicts_the_same(tmp_path, data, make):
    X, y = data
    m = make().fit(X, y)
    m.save(tmp_path / "model")
    loaded = ml.load(tmp_path / "model")
    assert type(loaded) is type(m) and loaded.get_params() == m.get_params()
    method = "predict" if hasattr(m, "predict") else "transform"
    np.testing.assert_array_equal(getattr(loaded, method)(X), getattr(m, method)(X))


def test_save_load_pipeline_with_string_labels(tmp_path):
    df = pd.DataFrame({"a": np.arange(20.0), "b": np.arange(20.0) % 3})
    y = np.where(df.a > 9, "hi", "lo")
    pipe = ml.Pipeline([("s", ml.StandardScaler()), ("m", ml.LogisticRegression())]).fit(df, y)
    ml.save(pipe, tmp_path / "pipe")
    loaded = ml.load(tmp_path / "pipe")
    np.testing.assert_array_equal(loaded.predict(df), pipe.predict(df))
    assert list(loaded.named_steps["s"].feature_names_in_) == ["a", "b"]


def test_saved_folder_is_json_and_npy_only(tmp_path, data):
    ml.LogisticRegression().fit(*data).save(tmp_path / "m")
    files = sorted(p.suffix for p in (tmp_path / "m").rglob("*") if p.is_file())
    assert set(files) == {".json", ".npy"}
    meta = json.loads((tmp_path / "m" / "metadata.json").read_text())
    assert meta["class"] == "shoal.ml.LogisticRegression" and "scikit-learn" in meta["versions"]


def test_load_refuses_classes_outside_shoal_ml(tmp_path, data):
    ml.LogisticRegression().fit(*data).save(tmp_path / "m")
    meta_file = tmp_path / "m" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["class"] = "os.system"
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(PersistenceError, match="refusing to load"):
        ml.load(tmp_path / "m")


def test_load_refuses_paths_outside_the_folder(tmp_path, data):
    ml.LogisticRegression().fit(*data).save(tmp_path / "m")
    meta_file = tmp_path / "m" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["state"]["coef_"]["__ndarray__"] = "../../etc/passwd"
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(PersistenceError, match="outside the model folder"):
        ml.load(tmp_path / "m")


# ----------------------------------------------------------------------------------
# model selection on a shoal.data Dataset: split by rows of the Dataset, never collected

from _cluster import cluster  # noqa: F401  (module-scoped fixture)


@pytest.fixture(scope="module")
def labelled_dataset(data):
    import shoal.data as sd
    X, y = data
    df = pd.DataFrame(X, columns=[f"f{j}" for j in range(X.shape[1])])
    df["label"] = y
    return df, sd.from_pandas(df).repartition(3)


@pytest.mark.usefixtures("cluster")
def test_cross_validator_folds_partition_the_dataset(labelled_dataset):
    df, ds = labelled_dataset
    cv = ml.CrossValidator(ml.LogisticRegression(), {"C": [1.0]}, num_folds=3, seed=4)
    splits = cv._dataset_splits(ds.materialize())
    tests = [set(t.to_pandas()["f0"]) for _, t in splits]
    assert sum(len(t) for t in tests) == len(df) and set().union(*tests) == set(df["f0"])
    for train, test in splits:
        assert train.count() + test.count() == len(df)
        assert not set(train.to_pandas()["f0"]) & set(test.to_pandas()["f0"])


@pytest.mark.usefixtures("cluster")
def test_cross_validator_on_dataset_picks_the_better_model(labelled_dataset):
    _, ds = labelled_dataset
    cv = ml.CrossValidator(ml.Pipeline([("s", ml.StandardScaler()), ("lr", ml.LogisticRegression())]),
                           {"lr__C": [1e-4, 1.0]}, num_folds=3, seed=0, scoring="roc_auc").fit(ds, "label")
    assert cv.split_scores_.shape == (2, 3)
    assert cv.best_params_ == {"lr__C": 1.0}
    assert cv.best_score_ > 0.8
    assert cv.predict(ds).to_numpy("prediction").shape == (ds.count(),)


@pytest.mark.usefixtures("cluster")
def test_train_validation_split_on_dataset_scores_held_out_rows(labelled_dataset):
    _, ds = labelled_dataset
    tvs = ml.TrainValidationSplit(ml.LogisticRegression(), {"C": [0.01, 1.0]}, train_ratio=0.8,
                                  seed=1).fit(ds, "label")
    [(train, test)] = tvs._dataset_splits(ds.materialize())
    assert (train.count(), test.count()) == (480, 120)
    assert tvs.split_scores_.shape == (2, 1) and 0.5 < tvs.best_score_ <= 1.0
    assert list(tvs.best_estimator_.feature_names_in_) == [f"f{j}" for j in range(5)]


@pytest.mark.usefixtures("cluster")
def test_search_on_dataset_needs_a_label(labelled_dataset):
    _, ds = labelled_dataset
    with pytest.raises(ValueError, match="label"):
        ml.CrossValidator(ml.LogisticRegression(), {"C": [1.0]}).fit(ds)
