"""Linear models match scikit-learn's coefficients on the same data."""
import numpy as np
import pytest
import sklearn.linear_model as sk
import sklearn.svm as sksvm
from sklearn.datasets import make_classification, make_regression

import shoal.ml as ml

TOL = 1e-6


@pytest.fixture(scope="module")
def regression():
    X, y = make_regression(1500, 8, noise=2.0, random_state=0)
    return X + 5.0, y        # an offset exercises the centering


@pytest.fixture(scope="module")
def binary():
    return make_classification(1500, 8, n_informative=5, random_state=1)


@pytest.fixture(scope="module")
def multiclass():
    return make_classification(1500, 8, n_informative=5, n_classes=4, random_state=2)


def _close(a, b, tol=TOL):
    np.testing.assert_allclose(a, b, atol=tol, rtol=tol)


def test_linear_regression_matches_sklearn(regression):
    X, y = regression
    a, b = ml.LinearRegression().fit(X, y), sk.LinearRegression().fit(X, y)
    _close(a.coef_, b.coef_, 1e-9)
    _close(a.intercept_, b.intercept_, 1e-8)
    assert a.score(X, y) == pytest.approx(b.score(X, y), abs=1e-12)


def test_linear_regression_without_intercept(regression):
    X, y = regression
    a = ml.LinearRegression(fit_intercept=False).fit(X, y)
    b = sk.LinearRegression(fit_intercept=False).fit(X, y)
    _close(a.coef_, b.coef_, 1e-9)


def test_linear_regression_reg_param_is_ridge_in_spark_scaling(regression):
    X, y = regression
    a = ml.LinearRegression(reg_param=0.1).fit(X, y)
    b = sk.Ridge(alpha=0.1 * len(y)).fit(X, y)
    _close(a.coef_, b.coef_, 1e-9)


def test_collinear_features_give_minimum_norm_solution():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(200)
    X = np.column_stack([x, x])
    a = ml.LinearRegression().fit(X, 2 * x)
    _close(a.coef_, [1.0, 1.0], 1e-8)


def test_ridge_matches_sklearn(regression):
    X, y = regression
    _close(ml.Ridge(alpha=7.0).fit(X, y).coef_, sk.Ridge(alpha=7.0).fit(X, y).coef_, 1e-9)


def test_lasso_matches_sklearn(regression):
    X, y = regression
    a = ml.Lasso(alpha=2.0).fit(X, y)
    b = sk.Lasso(alpha=2.0, tol=1e-10, max_iter=100000).fit(X, y)
    _close(a.coef_, b.coef_, 1e-5)
    _close(a.intercept_, b.intercept_, 1e-4)


def test_lasso_zeroes_weak_coefficients(regression):
    X, y = regression
    assert (ml.Lasso(alpha=40.0).fit(X, y).coef_ == 0).any()


def test_elastic_net_matches_sklearn(regression):
    X, y = regression
    a = ml.ElasticNet(alpha=1.0, l1_ratio=0.3).fit(X, y)
    b = sk.ElasticNet(alpha=1.0, l1_ratio=0.3, tol=1e-10, max_iter=100000).fit(X, y)
    _close(a.coef_, b.coef_, 1e-5)


@pytest.mark.parametrize("C", [0.01, 1.0, np.inf])
def test_logistic_binary_matches_sklearn(binary, C):
    X, y = binary
    a = ml.LogisticRegression(C=C, tol=1e-8, max_iter=1000).fit(X, y)
    b = sk.LogisticRegression(C=C, tol=1e-8, max_iter=1000).fit(X, y)
    _close(a.coef_, b.coef_, 1e-4)
    _close(a.predict_proba(X), b.predict_proba(X), 1e-5)


def test_logistic_multinomial_matches_sklearn(multiclass):
    X, y = multiclass
    a = ml.LogisticRegression(tol=1e-8, max_iter=1000).fit(X, y)
    b = sk.LogisticRegression(tol=1e-8, max_iter=1000).fit(X, y)
    assert a.coef_.shape == (4, 8)
    _close(a.predict_proba(X), b.predict_proba(X), 1e-5)
    np.testing.assert_array_equal(a.predict(X), b.predict(X))


@pytest.mark.parametrize("l1_ratio", [1.0, 0.5])
def test_logistic_l1_and_elastic_net_match_saga(binary, l1_ratio):
    X, y = binary
    a = ml.LogisticRegression(C=0.05, l1_ratio=l1_ratio, tol=1e-10, max_iter=5000).fit(X, y)
    b = sk.LogisticRegression(C=0.05, l1_ratio=l1_ratio, solver="saga", tol=1e-10, max_iter=100000).fit(X, y)
    _close(a.coef_, b.coef_, 1e-4)
    assert ((a.coef_ == 0) == (np.abs(b.coef_) < 1e-8)).all()


def test_logistic_string_labels_round_trip(binary):
    X, y = binary
    labels = np.where(y == 1, "spam", "ham")
    m = ml.LogisticRegression().fit(X, labels)
    assert set(m.predict(X)) <= {"spam", "ham"}
    assert list(m.classes_) == ["ham", "spam"]


def test_linear_svc_matches_liblinear(multiclass):
    X, y = multiclass
    a = ml.LinearSVC(tol=1e-8, max_iter=5000).fit(X, y)
    b = sksvm.LinearSVC(dual=False, tol=1e-8, max_iter=100000).fit(X, y)
    _close(a.coef_, b.coef_, 1e-4)
    _close(a.intercept_, b.intercept_, 1e-4)


def test_bad_hyperparameters_are_named():
    X, y = np.random.rand(10, 2), np.arange(10) % 2
    with pytest.raises(ValueError, match="C must be a positive"):
        ml.LogisticRegression(C=-1).fit(X, y)
    with pytest.raises(ValueError, match="l1_ratio"):
        ml.ElasticNet(l1_ratio=2).fit(X, y.astype(float))
