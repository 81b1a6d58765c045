"""shoal.ml on a running shoal cluster: blocks in the object store, fits as tasks, Datasets."""
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_classification

import shoal
import shoal.data as sd
import shoal.ml as ml
from shoal.ml import metrics as M
from shoal.ml._input import as_design_matrix
from shoal.ml._stats import block_gram, block_sums

from _cluster import cluster  # noqa: F401  (module-scoped fixture)

pytestmark = pytest.mark.usefixtures("cluster")


@pytest.fixture(scope="module")
def frame():
    X, y = make_classification(6000, 4, n_informative=3, n_redundant=0, random_state=0)
    df = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    df["label"] = y
    return df


@pytest.fixture(scope="module")
def dataset(frame):
    return sd.from_pandas(frame).repartition(4)


def test_cluster_blocks_are_object_refs_and_tree_reduce_sums(frame):
    X = frame[["a", "b", "c", "d"]].to_numpy()
    y = frame["label"].to_numpy().astype(float)
    dm = as_design_matrix(X, y, target="regression", executor="cluster", block_rows=500)
    assert len(dm.blocks) == 12 and all(isinstance(b, shoal.ObjectRef) for b in dm.blocks)
    G, b, _ = dm.map_reduce(block_gram, None, None, fan_in=3)   # 12 -> 4 -> 2 partials folded in tasks
    np.testing.assert_allclose(G, X.T @ X)
    np.testing.assert_allclose(b, X.T @ y)
    assert dm.map_reduce(block_sums)[2] == 6000


def test_cluster_fit_equals_local_fit(frame):
    X, y = frame[["a", "b", "c", "d"]].to_numpy(), frame["label"].to_numpy()
    with ml.use_executor("cluster"):
        remote = ml.LogisticRegression(C=0.5).fit(X, y)
    with ml.use_executor("local"):
        local = ml.LogisticRegression(C=0.5).fit(X, y)
    np.testing.assert_allclose(remote.coef_, local.coef_, atol=1e-8)


def test_fit_on_dataset_matches_dataframe(frame, dataset):
    on_ds = ml.LogisticRegression().fit(dataset, "label")
    on_df = ml.LogisticRegression().fit(frame[["a", "b", "c", "d"]], frame["label"])
    assert list(on_ds.feature_names_in_) == ["a", "b", "c", "d"]
    np.testing.assert_allclose(on_ds.coef_, on_df.coef_, atol=1e-8)
    np.testing.assert_array_equal(on_ds.predict(dataset).to_numpy("prediction"), on_df.predict(frame[["a", "b", "c", "d"]]))
    assert on_ds.score(dataset, "label") == pytest.approx(on_df.score(frame[["a", "b", "c", "d"]], frame["label"]))


def test_dataset_features_subset(dataset, frame):
    dm = as_design_matrix(dataset, features=["b", "d"], label="label", target="regression")
    Xc, yc = dm.collect()
    np.testing.assert_array_equal(Xc, frame[["b", "d"]].to_numpy())
    np.testing.assert_array_equal(yc, frame["label"].to_numpy())


def test_dataset_missing_column_is_named(dataset):
    with pytest.raises(ValueError, match="column 'nope' is missing"):
        ml.LogisticRegression().fit(dataset, "nope")


def test_dataset_nan_feature_is_named(frame):
    bad = frame.copy()
    bad.loc[3, "c"] = np.nan
    with pytest.raises(ValueError, match="NaN in column 'c'"):
        ml.KMeans(2).fit(sd.from_pandas(bad[["a", "b", "c", "d"]]))


def test_dataset_string_label_for_regressor_is_rejected(frame):
    df = frame.copy()
    df["label"] = np.where(df["label"] > 0, "yes", "no")
    with pytest.raises(ValueError, match="label"):
        ml.LinearRegression().fit(sd.from_pandas(df), "label")


def test_empty_dataset_is_rejected(frame):
    with pytest.raises(ValueError, match="empty"):
        ml.LogisticRegression().fit(sd.from_pandas(frame.iloc[:0]), "label")


def test_pipeline_on_dataset_keeps_label_and_matches_pandas(dataset, frame):
    pipe = ml.Pipeline([("scale", ml.StandardScaler()), ("lr", ml.LogisticRegression())]).fit(dataset, "label")
    ref = ml.Pipeline([("scale", ml.StandardScaler()), ("lr", ml.LogisticRegression())]).fit(
        frame[["a", "b", "c", "d"]], frame["label"])
    np.testing.assert_allclose(pipe.named_steps["lr"].coef_, ref.named_steps["lr"].coef_, atol=1e-8)
    scaled = pipe.named_steps["scale"].transform(dataset)
    assert isinstance(scaled, sd.Dataset) and scaled.columns() == ["a", "b", "c", "d", "label"]
    assert pipe.score(dataset, "label") == pytest.approx(ref.score(frame[["a", "b", "c", "d"]], frame["label"]))


def test_metrics_on_dataset_match_arrays(frame):
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"t": frame["label"], "p": np.where(rng.random(6000) < 0.8, frame["label"], 1 - frame["label"]),
                       "s": rng.random(6000) + 0.3 * frame["label"]})
    ds = sd.from_pandas(df).repartition(3)
    assert M.accuracy_score(ds, label="t", prediction="p") == pytest.approx(M.accuracy_score(df.t, df.p))
    assert M.f1_score(ds, label="t", prediction="p") == pytest.approx(M.f1_score(df.t, df.p))
    assert M.roc_auc_score(ds, label="t", prediction="s") == pytest.approx(M.roc_auc_score(df.t, df.s))
    assert M.r2_score(ds, label="t", prediction="s") == pytest.approx(M.r2_score(df.t, df.s))


def test_cross_validation_fits_run_as_tasks(frame):
    X, y = frame[["a", "b", "c", "d"]].to_numpy(), frame["label"].to_numpy()
    grid = {"C": [0.001, 1.0]}
    with ml.use_executor("auto"):
        remote = ml.CrossValidator(ml.LogisticRegression(), grid, num_folds=3, seed=1).fit(X, y)
    with ml.use_executor("local"):
        local = ml.CrossValidator(ml.LogisticRegression(), grid, num_folds=3, seed=1).fit(X, y)
    np.testing.assert_allclose(remote.split_scores_, local.split_scores_)
    assert remote.best_params_ == local.best_params_


def test_kmeans_on_cluster_reaches_sklearn_inertia():
    from sklearn.cluster import KMeans as SkKMeans
    from sklearn.datasets import make_blobs
    X = make_blobs(20000, 6, centers=4, random_state=5)[0]
    with ml.use_executor("cluster"):
        ours = ml.KMeans(4, random_state=0).fit(X)
    assert ours.inertia_ == pytest.approx(SkKMeans(4, n_init=5, random_state=0).fit(X).inertia_, rel=1e-6)


def test_pca_transforms_a_dataset_lazily(dataset, frame):
    pca = ml.PCA(2).fit(dataset, "label")
    out = pca.transform(dataset)
    assert isinstance(out, sd.Dataset) and out.columns() == ["label", "pca0", "pca1"]
    np.testing.assert_allclose(out.to_pandas()[["pca0", "pca1"]].to_numpy(),
                               pca.transform(frame[["a", "b", "c", "d"]]), atol=1e-10)


def test_one_hot_encoder_on_dataset_leaves_label_out():
    df = pd.DataFrame({"color": ["red", "blue", "red", "green"], "label": [1, 0, 1, 0]})
    ds = sd.from_pandas(df)
    enc = ml.OneHotEncoder().fit(ds, "label")
    assert [list(c) for c in enc.categories_] == [["blue", "green", "red"]]
    out = enc.transform(ds).to_pandas()
    assert list(out.columns) == ["label", "color_blue", "color_green", "color_red"]
    np.testing.assert_array_equal(out["color_red"], [1, 0, 1, 0])


@pytest.mark.parametrize("steps", [
    lambda: [("s", ml.StandardScaler()), ("m", ml.LogisticRegression())],
    lambda: [("s", ml.MinMaxScaler()), ("p", ml.PCA(3)), ("m", ml.Ridge())],
    lambda: [("s", ml.MaxAbsScaler()), ("m", ml.KMeans(3, random_state=0))],
], ids=["scale-logreg", "minmax-pca-ridge", "maxabs-kmeans"])
def test_fused_pipeline_on_cluster_equals_in_process(frame, steps):
    X, y = frame[["a", "b", "c", "d"]].to_numpy(), frame["label"].to_numpy()
    with ml.use_executor("cluster"):
        fused = ml.Pipeline(steps()).fit(X, y)
    with ml.use_executor("local"):
        local = ml.Pipeline(steps()).fit(X, y)
    final = fused.steps[-1][1]
    assert final.n_features_in_ == local.steps[-1][1].n_features_in_
    if hasattr(final, "coef_"):
        np.testing.assert_allclose(final.coef_, local.steps[-1][1].coef_, atol=1e-8)
    np.testing.assert_allclose(fused.predict(X), local.predict(X), atol=1e-8)
