"""shoal.ml.OneVsRest against scikit-learn's OneVsRestClassifier, on arrays and distributed over a
Dataset (classifiers that fit a DesignMatrix, and trees that read the Dataset), and bad input."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_classification

import shoal.data as sd
import shoal.ml as ml
from shoal.exceptions import InvalidInputError
from shoal.ml import as_design_matrix
from tests.ml._cluster import cluster  # noqa: F401


def _data(n=900, classes=4, seed=0):
    return make_classification(n, 5, n_informative=4, n_redundant=0, n_classes=classes,
                               n_clusters_per_class=1, random_state=seed)


def test_matches_sklearn_one_vs_rest_logistic_regression():
    from sklearn.linear_model import LogisticRegression as SkLogistic
    from sklearn.multiclass import OneVsRestClassifier
    X, y = _data()
    theirs = OneVsRestClassifier(SkLogistic(C=0.5, tol=1e-10, max_iter=1000)).fit(X, y)
    dm = as_design_matrix(X, y, target="classification", block_rows=200, executor="local")
    ours = ml.OneVsRest(ml.LogisticRegression(C=0.5, tol=1e-10, max_iter=1000)).fit(dm)
    assert len(ours.estimators_) == 4
    for a, b in zip(ours.estimators_, theirs.estimators_):
        np.testing.assert_allclose(a.coef_, b.coef_, atol=1e-5)
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), atol=1e-6)
    np.testing.assert_allclose(ours.decision_function(X), theirs.decision_function(X), atol=1e-5)
    np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))


def test_two_classes_fit_one_model_and_string_labels_come_back():
    X, y = _data(classes=2)
    labels = np.array(["no", "yes"])[y]
    ours = ml.OneVsRest(ml.LinearSVC()).fit(X, labels)
    assert len(ours.estimators_) == 1
    assert set(ours.predict(X)) <= {"no", "yes"}
    assert ours.score(X, labels) > 0.8
    assert not hasattr(ours, "predict_proba")       # LinearSVC has none: neither has OneVsRest


def test_on_a_dataset_with_a_design_matrix_classifier_and_with_a_tree(cluster):  # noqa: F811
    X, y = _data(600, classes=3, seed=1)
    df = pd.DataFrame(X, columns=[f"f{i}" for i in range(5)]).assign(
        kind=np.array(["a", "b", "c"])[y], id=np.arange(len(y)))
    ds = sd.from_pandas(df).repartition(3)
    feats = [f"f{i}" for i in range(5)]
    local = ml.OneVsRest(ml.LogisticRegression()).fit(df, features=feats, label="kind")
    for est in (ml.OneVsRest(ml.LogisticRegression(), parallelism=2),
                ml.OneVsRest(ml.DecisionTreeClassifier(max_depth=4))):
        est.fit(ds, features=feats, label="kind")
        assert len(est.estimators_) == 3
        out = est.predict(ds).to_pandas()
        np.testing.assert_array_equal(out["id"], np.arange(len(y)))
        assert (out["prediction"] == df["kind"]).mean() > 0.8
        assert "kind__one_vs_rest" not in out.columns
        assert est.score(ds, label="kind") == pytest.approx((out["prediction"] == df["kind"]).mean())
    # the distributed logistic fits are the in-memory ones
    lr = ml.OneVsRest(ml.LogisticRegression()).fit(ds, features=feats, label="kind")
    for a, b in zip(lr.estimators_, local.estimators_):
        np.testing.assert_allclose(a.coef_, b.coef_, atol=1e-6)


def test_rejects_bad_input():
    X, y = _data(100, classes=3)
    with pytest.raises(InvalidInputError, match="must be a classifier"):
        ml.OneVsRest(ml.Ridge()).fit(X, y)
    with pytest.raises(InvalidInputError, match="parallelism"):
        ml.OneVsRest(ml.LogisticRegression(), parallelism=0).fit(X, y)
    frame = pd.DataFrame(X, columns=list("abcde")).assign(kind=np.where(y == 0, np.nan, y))
    with pytest.raises(InvalidInputError, match="kind"):
        ml.OneVsRest(ml.LogisticRegression()).fit(frame, label="kind")


def test_save_and_load_predict_the_same(tmp_path):
    X, y = _data(200, classes=3)
    model = ml.OneVsRest(ml.LogisticRegression()).fit(X, y)
    model.save(tmp_path / "ovr")
    np.testing.assert_array_equal(ml.load(tmp_path / "ovr").predict_proba(X), model.predict_proba(X))
