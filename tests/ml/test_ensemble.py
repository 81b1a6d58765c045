"""Random forests and gradient boosting: quality against scikit-learn, determinism, conventions."""
import numpy as np
import pytest
from sklearn import ensemble as sk_ens
from sklearn.datasets import make_classification, make_regression
from sklearn.utils.estimator_checks import check_estimator

from shoal.ml import _input
from shoal.ml._hist import bin_edges
from shoal.ml._hist_shards import ShardSet
from shoal.ml._tree import Gini
from shoal.ml._tree_grow import GrowParams, grow_trees
from shoal.ml.ensemble import (GradientBoostingClassifier, GradientBoostingRegressor,
                               RandomForestClassifier, RandomForestRegressor)

# see tests/ml/test_tree.py: the shared input layer raises ValueError where sklearn wants TypeError
EXPECTED_FAILED = {"check_dtype_object": "shared input validation raises ValueError, not TypeError"}


@pytest.fixture(scope="module")
def binary():
    X, y = make_classification(6000, 20, n_informative=8, random_state=0)
    return X[:4000], y[:4000], X[4000:], y[4000:]


@pytest.fixture(scope="module")
def multiclass():
    X, y = make_classification(5000, 10, n_informative=6, n_classes=4, random_state=1)
    return X[:4000], y[:4000], X[4000:], y[4000:]


@pytest.fixture(scope="module")
def regression():
    X, y = make_regression(6000, 20, n_informative=8, noise=5.0, random_state=0)
    return X[:4000], y[:4000], X[4000:], y[4000:]


def test_random_forest_classifier_accuracy_close_to_sklearn(binary):
    X, y, Xt, yt = binary
    ours = RandomForestClassifier(20, max_depth=8, random_state=0).fit(X, y).score(Xt, yt)
    ref = sk_ens.RandomForestClassifier(20, max_depth=8, random_state=0).fit(X, y).score(Xt, yt)
    assert ours > ref - 0.02


def test_random_forest_regressor_r2_close_to_sklearn(regression):
    X, y, Xt, yt = regression
    ours = RandomForestRegressor(20, max_depth=8, random_state=0).fit(X, y).score(Xt, yt)
    ref = sk_ens.RandomForestRegressor(20, max_depth=8, random_state=0).fit(X, y).score(Xt, yt)
    assert ours > ref - 0.02


@pytest.mark.parametrize("make", [lambda: RandomForestRegressor(5, max_depth=6, random_state=0),
                                  lambda: GradientBoostingRegressor(10, max_depth=4, random_state=0)])
def test_regression_trees_fit_a_target_far_from_zero_as_well_as_near_it(regression, make):
    # the split gains cancel catastrophically on raw targets far from 0 (a forest on
    # y + 1e7 made no split at all), and float32 gradients must keep their digits
    from sklearn.metrics import r2_score
    X, y, Xt, yt = regression
    near = make().fit(X, y).predict(Xt)
    far = make().fit(X, y + 1e7).predict(Xt) - 1e7
    assert r2_score(yt, far) > r2_score(yt, near) - 0.01
    assert np.mean(np.abs(far - near) < 1e-3 * np.std(y)) > 0.99     # the same trees, nearly


def test_gradient_boosting_binary_accuracy_close_to_sklearn(binary):
    X, y, Xt, yt = binary
    ours = GradientBoostingClassifier(20, max_depth=5, random_state=0).fit(X, y).score(Xt, yt)
    ref = sk_ens.GradientBoostingClassifier(n_estimators=20, max_depth=5, random_state=0).fit(X, y).score(Xt, yt)
    assert ours > ref - 0.02


def test_gradient_boosting_multiclass_accuracy_close_to_sklearn(multiclass):
    X, y, Xt, yt = multiclass
    est = GradientBoostingClassifier(10, max_depth=4, random_state=0).fit(X, y)
    ref = sk_ens.GradientBoostingClassifier(n_estimators=10, max_depth=4, random_state=0).fit(X, y).score(Xt, yt)
    assert est.score(Xt, yt) > ref - 0.03
    assert len(est.estimators_[0]) == 4      # one tree per class per round
    np.testing.assert_allclose(est.predict_proba(Xt).sum(axis=1), 1.0)


def test_gradient_boosting_regressor_r2_close_to_sklearn(regression):
    X, y, Xt, yt = regression
    ours = GradientBoostingRegressor(20, max_depth=5, random_state=0).fit(X, y).score(Xt, yt)
    ref = sk_ens.GradientBoostingRegressor(n_estimators=20, max_depth=5, random_state=0).fit(X, y).score(Xt, yt)
    assert ours > ref - 0.02


def test_boosting_loss_decreases_with_rounds(regression):
    X, y, Xt, yt = regression
    few = GradientBoostingRegressor(5, random_state=0).fit(X, y).score(Xt, yt)
    many = GradientBoostingRegressor(30, random_state=0).fit(X, y).score(Xt, yt)
    assert many > few


def test_random_forest_is_deterministic_with_a_seed(binary):
    X, y, Xt, _ = binary
    a = RandomForestClassifier(5, random_state=3).fit(X, y).predict_proba(Xt)
    b = RandomForestClassifier(5, random_state=3).fit(X, y).predict_proba(Xt)
    c = RandomForestClassifier(5, random_state=4).fit(X, y).predict_proba(Xt)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_subsampled_boosting_is_deterministic_with_a_seed(binary):
    X, y, Xt, _ = binary
    a = GradientBoostingClassifier(5, subsample=0.5, random_state=1).fit(X, y).predict_proba(Xt)
    b = GradientBoostingClassifier(5, subsample=0.5, random_state=1).fit(X, y).predict_proba(Xt)
    np.testing.assert_array_equal(a, b)


def test_forest_does_not_depend_on_how_rows_are_blocked_or_sharded(binary):
    X, y, _, _ = binary
    edges = bin_edges(X, 32)
    params = GrowParams(max_depth=4, max_features=4)
    trees = []
    for block_rows, n_shards in ((len(X), 1), (1000, 3)):
        dm = _input.as_design_matrix(X, y, target="classification", block_rows=block_rows,
                                     executor="local")
        shards = ShardSet(dm, edges, n_classes=2, n_shards=n_shards)
        shards.call("start_forest", 7, [0, 1], True, False)
        trees.append(grow_trees(shards.level, 2, Gini(2), edges, params, np.random.default_rng(0)))
    for a, b in zip(*trees):
        np.testing.assert_array_equal(a.feature, b.feature)
        np.testing.assert_array_equal(a.threshold, b.threshold)
        np.testing.assert_allclose(a.value, b.value)


def test_feature_importances_favor_informative_features():
    X, y = make_classification(4000, 10, n_informative=3, n_redundant=0, shuffle=False, random_state=0)
    imp = RandomForestClassifier(10, random_state=0).fit(X, y).feature_importances_
    assert abs(imp.sum() - 1.0) < 1e-9
    assert imp[:3].sum() > 0.6


def test_invalid_parameters_are_rejected(binary):
    X, y, _, _ = binary
    with pytest.raises(ValueError, match="n_estimators"):
        RandomForestClassifier(0).fit(X, y)
    with pytest.raises(ValueError, match="subsample"):
        GradientBoostingClassifier(subsample=1.5).fit(X, y)
    with pytest.raises(ValueError, match="max_features"):
        RandomForestClassifier(max_features="half").fit(X, y)


def test_regressor_rejects_string_labels(regression):
    X, _, _, _ = regression
    with pytest.raises(ValueError, match="numbers"):
        GradientBoostingRegressor().fit(X, np.array(["a", "b"] * 3000))


@pytest.mark.parametrize("Estimator", [RandomForestClassifier, RandomForestRegressor,
                                       GradientBoostingClassifier, GradientBoostingRegressor])
def test_check_estimator(Estimator):
    check_estimator(Estimator(n_estimators=5), expected_failed_checks=EXPECTED_FAILED)


@pytest.mark.parametrize("name, params", [
    ("DecisionTreeClassifier", {"max_depth": 3}),
    ("RandomForestRegressor", {"n_estimators": 3}),
    ("GradientBoostingClassifier", {"n_estimators": 3}),
])
def test_fitted_trees_save_and_load_without_pickle(name, params, tmp_path):
    import shoal.ml
    from shoal.ml import load, save
    make = lambda: getattr(shoal.ml, name)(**params)  # noqa: E731
    rng = np.random.default_rng(0)
    X = rng.random((500, 4))
    y = (X[:, 0] + X[:, 1] > 1).astype(int)
    est = make().fit(X, y)
    save(est, str(tmp_path / "model"))
    again = load(str(tmp_path / "model"))
    np.testing.assert_allclose(again.predict(X), est.predict(X))
