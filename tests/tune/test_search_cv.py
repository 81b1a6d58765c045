"""TuneSearchCV: scikit-learn's search API with trials run by shoal.tune."""
import numpy as np
import pytest

from shoal import tune

sklearn = pytest.importorskip("sklearn")
pytestmark = pytest.mark.usefixtures("cluster")


def test_search_cv_finds_a_good_c_and_refits(tmp_path):
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression
    X, y = make_classification(n_samples=300, n_features=10, random_state=0)
    search = tune.TuneSearchCV(LogisticRegression(max_iter=200),
                               {"C": tune.loguniform(1e-4, 10), "fit_intercept": [True, False]},
                               n_trials=8, cv=3, random_state=0, storage_path=str(tmp_path))
    search.fit(X, y)
    assert set(search.best_params_) == {"C", "fit_intercept"}
    assert search.best_score_ == max(search.cv_results_["mean_test_score"])
    assert len(search.cv_results_["params"]) == 8
    assert search.cv_results_["rank_test_score"].min() == 1
    assert search.score(X, y) > 0.8
    assert search.predict(X).shape == (300,)


@pytest.mark.slow
def test_search_cv_with_shoal_ml_estimator(tmp_path):
    pytest.importorskip("numba")
    from shoal.ml import LogisticRegression
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 4))
    y = (X[:, 0] - X[:, 1] > 0).astype(int)
    search = tune.TuneSearchCV(LogisticRegression(), {"C": tune.grid_search([1e-4, 1.0])},
                               n_trials=1, cv=2, random_state=0, storage_path=str(tmp_path))
    search.fit(X, y)
    assert search.best_params_["C"] == 1.0 and len(search.cv_results_["params"]) == 2
    assert search.score(X, y) > 0.9


def _labelled_frame(n=400, seed=0):
    import pandas as pd
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    return pd.DataFrame({"a": X[:, 0], "b": X[:, 1], "c": X[:, 2],
                         "y": (X[:, 0] - X[:, 1] > 0).astype(int)})


@pytest.mark.slow
def test_search_cv_with_shoal_ml_estimator_on_a_dataset(tmp_path):
    pytest.importorskip("pyarrow")
    import shoal.data as sd
    from shoal.ml import LogisticRegression
    ds = sd.from_pandas(_labelled_frame()).repartition(4)
    search = tune.TuneSearchCV(LogisticRegression(), {"C": tune.grid_search([1e-5, 1.0])},
                               n_trials=1, cv=3, random_state=0, storage_path=str(tmp_path))
    search.fit(ds, label="y")
    assert search.best_params_["C"] == 1.0
    assert len(search.cv_results_["params"]) == 2
    assert {"split0_test_score", "split2_test_score"} <= set(search.cv_results_)
    assert search.cv_results_["mean_test_score"].max() > 0.9
    assert search.score(ds, label="y") > 0.9


def test_search_cv_on_a_dataset_rejects_what_it_cannot_do(tmp_path):
    pytest.importorskip("pyarrow")
    import shoal.data as sd
    from sklearn.linear_model import LogisticRegression as SkLR

    from shoal.ml import LogisticRegression
    ds = sd.from_pandas(_labelled_frame(50))
    with pytest.raises(TypeError, match="not a shoal.ml estimator"):
        tune.TuneSearchCV(SkLR(), {"C": [1.0]}, storage_path=str(tmp_path)).fit(ds, label="y")
    with pytest.raises(ValueError, match="label column by name"):
        tune.TuneSearchCV(LogisticRegression(), {"C": [1.0]},
                          storage_path=str(tmp_path)).fit(ds)
    with pytest.raises(ValueError, match="scoring=None"):
        tune.TuneSearchCV(LogisticRegression(), {"C": [1.0]}, scoring="f1",
                          storage_path=str(tmp_path)).fit(ds, label="y")
