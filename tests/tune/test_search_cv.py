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
