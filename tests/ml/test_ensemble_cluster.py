"""Forests and boosting on a running shoal cluster: shards are actors that keep binned blocks."""
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_classification

import shoal.data as sd
from shoal.ml import use_executor
from shoal.ml.ensemble import GradientBoostingClassifier, RandomForestClassifier

from _cluster import cluster  # noqa: F401  (module-scoped fixture)

pytestmark = [pytest.mark.usefixtures("cluster"), pytest.mark.slow]


@pytest.fixture(scope="module")
def data():
    # 140k rows make three blocks, so the fit runs on two shard actors
    X, y = make_classification(140_000, 6, n_informative=4, n_redundant=0, random_state=0)
    return X, y


def test_forest_on_actors_equals_the_in_process_forest(data):
    X, y = data
    with use_executor("cluster"):
        remote = RandomForestClassifier(4, max_depth=4, random_state=0).fit(X, y)
    with use_executor("local"):
        local = RandomForestClassifier(4, max_depth=4, random_state=0).fit(X, y)
    np.testing.assert_array_equal(remote.predict_proba(X[:2000]), local.predict_proba(X[:2000]))


def test_boosting_on_actors_matches_the_in_process_model(data):
    X, y = data
    with use_executor("cluster"):
        remote = GradientBoostingClassifier(4, max_depth=3, random_state=0).fit(X, y)
    with use_executor("local"):
        local = GradientBoostingClassifier(4, max_depth=3, random_state=0).fit(X, y)
    # gradient sums are added in another order across shards: equal up to rounding
    np.testing.assert_allclose(remote.predict_proba(X[:2000]), local.predict_proba(X[:2000]), atol=1e-9)


def test_forest_fits_a_dataset_by_column_names(data):
    X, y = data
    df = pd.DataFrame(X[:20000], columns=[f"x{i}" for i in range(6)])
    df["label"] = y[:20000]
    ds = sd.from_pandas(df).repartition(2)
    est = RandomForestClassifier(4, max_depth=4, random_state=0).fit(ds, label="label")
    assert list(est.feature_names_in_) == [f"x{i}" for i in range(6)]
    with use_executor("local"):   # random draws follow global rows: the block layout does not matter
        ref = RandomForestClassifier(4, max_depth=4, random_state=0).fit(df, label="label")
    features = df[[f"x{i}" for i in range(6)]]
    np.testing.assert_array_equal(est.predict_proba(features), ref.predict_proba(features))


def _fit_inside_a_task(X, y):
    with use_executor("cluster"):
        return RandomForestClassifier(2, max_depth=3, random_state=0).fit(X, y).score(X, y)


def test_forest_fits_from_inside_a_task_that_holds_a_cpu(data):
    import shoal
    X, y = data
    # the task holds one of the two CPUs: shards must not wait for CPUs that never free up
    score = shoal.get(shoal.remote(_fit_inside_a_task).remote(X, y), timeout=100)
    assert score > 0.7
