"""Spark's evaluator classes over shoal.ml.metrics: on scored Datasets, tables, and as scorers."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

import shoal.data as sd
import shoal.ml as ml
from shoal.exceptions import InvalidInputError
from tests.ml._cluster import cluster  # noqa: F401

pytestmark = pytest.mark.usefixtures("cluster")


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 3))
    frame = pd.DataFrame(X, columns=["a", "b", "c"])
    frame["label"] = (X[:, 0] - X[:, 1] + 0.5 * rng.normal(size=600) > 0).astype(int)
    frame["target"] = X @ [1.0, 2.0, -1.0] + 0.3 * rng.normal(size=600)
    return frame


def test_regression_evaluator_matches_sklearn_on_a_dataset_and_a_frame(data):
    ds = sd.from_pandas(data, override_num_blocks=3)
    scored = ml.LinearRegression().fit(ds, features=["a", "b", "c"], label="target").predict(ds)
    frame = scored.to_pandas()
    for name, ref in (("rmse", skm.root_mean_squared_error), ("mae", skm.mean_absolute_error),
                      ("r2", skm.r2_score), ("mse", skm.mean_squared_error)):
        ev = ml.RegressionEvaluator(name, label_col="target")
        want = ref(frame["target"], frame["prediction"])
        assert ev.evaluate(scored) == pytest.approx(want, rel=1e-9)
        assert ev.evaluate(frame) == pytest.approx(want, rel=1e-9)
        assert ev.is_larger_better() == (name == "r2")


def test_classification_evaluators_match_sklearn(data):
    ds = sd.from_pandas(data, override_num_blocks=3)
    model = ml.LogisticRegression().fit(ds, features=["a", "b", "c"], label="label")
    frame = model.predict_proba(model.predict(ds)).to_pandas()
    proba = np.stack(frame["probability"])
    auc = ml.BinaryClassificationEvaluator().evaluate(frame)
    assert auc == pytest.approx(skm.roc_auc_score(frame["label"], proba[:, 1]))
    f1 = ml.MulticlassClassificationEvaluator().evaluate(frame)
    assert f1 == pytest.approx(skm.f1_score(frame["label"], frame["prediction"], average="weighted"))
    acc = ml.MulticlassClassificationEvaluator("accuracy").evaluate(frame)
    assert acc == pytest.approx(skm.accuracy_score(frame["label"], frame["prediction"]))
    loss = ml.MulticlassClassificationEvaluator("logLoss").evaluate(frame)
    assert loss == pytest.approx(skm.log_loss(frame["label"], proba))


def test_an_evaluator_is_a_scorer_for_cross_validation(data):
    X, y = data[["a", "b", "c"]].to_numpy(), data["target"].to_numpy()
    ev = ml.RegressionEvaluator("rmse")
    model = ml.Ridge().fit(X, y)
    assert ev(model, X, y) == pytest.approx(-skm.root_mean_squared_error(y, model.predict(X)))
    cv = ml.CrossValidator(ml.Ridge(), {"alpha": [0.01, 1000.0]}, num_folds=2, scoring=ev).fit(X, y)
    assert cv.best_params_ == {"alpha": 0.01}


def test_unknown_metric_and_missing_column_are_named(data):
    with pytest.raises(InvalidInputError, match="metric_name='auc'"):
        ml.RegressionEvaluator("auc").evaluate(data)
    with pytest.raises(InvalidInputError, match="'prediction' is missing"):
        ml.RegressionEvaluator(label_col="target").evaluate(data)


def test_ranking_evaluator_reproduces_sparks_ranking_metrics_example():
    # pyspark.mllib.evaluation.RankingMetrics' documented example; its docstring prints the
    # values to two digits, these are worked by hand from its definitions
    scored = pd.DataFrame({"prediction": [[1, 6, 2, 7, 8, 3, 9, 10, 4, 5], [4, 1, 5, 6, 2, 7, 3, 8, 9, 10],
                                          [1, 2, 3, 4, 5]],
                           "label": [[1, 2, 3, 4, 5], [1, 2, 3], []]})
    want = {("precisionAtK", 1): 1 / 3, ("precisionAtK", 5): 0.26666, ("precisionAtK", 15): 0.17777,
            ("meanAveragePrecision", 10): 0.35502, ("meanAveragePrecisionAtK", 1): 1 / 3,
            ("meanAveragePrecisionAtK", 2): 0.25, ("ndcgAtK", 3): 1 / 3, ("ndcgAtK", 10): 0.48791,
            ("recallAtK", 1): 0.06666, ("recallAtK", 5): 0.35555, ("recallAtK", 15): 0.66666}
    for (metric, k), value in want.items():
        got = ml.RankingEvaluator(metric, k=k).evaluate(scored)
        assert got == pytest.approx(value, abs=1e-5), (metric, k)
    on_ds = ml.RankingEvaluator("ndcgAtK", k=10).evaluate(sd.from_pandas(scored).repartition(2))
    assert on_ds == pytest.approx(0.48791, abs=1e-5)
    with pytest.raises(InvalidInputError, match="metric_name"):
        ml.RankingEvaluator("auc").evaluate(scored)
