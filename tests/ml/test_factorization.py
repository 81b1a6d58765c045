"""shoal.ml.FMRegressor / FMClassifier: exact gradients, the pairwise term against its definition,
recovery of interaction data a linear model cannot fit, training over a Dataset, bad input."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import shoal.data as sd
import shoal.ml as ml
from shoal.exceptions import InvalidInputError
from shoal.ml import as_design_matrix
from shoal.ml.factorization import _kernels as K
from tests.ml._cluster import cluster  # noqa: F401


@pytest.mark.parametrize("kind", ["regression", "classification"])
def test_block_gradient_is_the_loss_derivative(kind):
    rng = np.random.default_rng(0)
    X, k = rng.normal(size=(30, 4)), 3
    y = rng.integers(0, 2, 30) if kind == "classification" else rng.normal(size=30)
    theta = rng.normal(size=1 + 4 + 4 * k) * 0.5
    _, grad = K.fm_loss_grad(X, y, theta, k, kind)
    eye = np.eye(len(theta)) * 1e-6
    numeric = [(K.fm_loss_grad(X, y, theta + e, k, kind)[0] - K.fm_loss_grad(X, y, theta - e, k, kind)[0])
               / 2e-6 for e in eye]
    np.testing.assert_allclose(grad, numeric, atol=1e-6)


def test_prediction_is_the_factorization_machine_equation():
    rng = np.random.default_rng(1)
    X, k, d = rng.normal(size=(7, 5)), 3, 5
    theta = rng.normal(size=1 + d + d * k)
    w0, w, V = K.unpack(theta, d, k)
    explicit = [w0 + x @ w + sum(V[i] @ V[j] * x[i] * x[j] for i in range(d) for j in range(i + 1, d))
                for x in X]
    np.testing.assert_allclose(K.fm_predict(X, theta, k)[0], explicit, rtol=1e-12)


def _interaction_data(n, seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6))
    V = np.random.default_rng(99).normal(size=(6, 2)) * 0.7     # one model for every sample
    y = 0.5 + X @ np.array([1.0, -1.0, 0.5, 0, 0, 0.2]) + 0.5 * (((X @ V) ** 2).sum(1)
                                                                   - ((X ** 2) @ (V ** 2)).sum(1))
    return X, y + 0.05 * rng.normal(size=n)


def test_regressor_recovers_interactions_a_linear_model_cannot():
    X, y = _interaction_data(3000, 0)
    Xt, yt = _interaction_data(1000, 1)
    dm = as_design_matrix(X, y, target="regression", block_rows=700, executor="local")
    fm = ml.FMRegressor(factor_size=4, max_iter=300, init_std=0.1, random_state=0).fit(dm)
    assert fm.score(Xt, yt) > 0.98
    assert ml.LinearRegression().fit(X, y).score(Xt, yt) < 0.7


def test_classifier_separates_an_xor_a_linear_model_cannot():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(2000, 3))
    y = (X[:, 0] * X[:, 1] > 0).astype(int)
    fm = ml.FMClassifier(factor_size=2, max_iter=200, init_std=0.1, random_state=0).fit(X, y)
    assert fm.score(X, y) > 0.95
    assert ml.LogisticRegression().fit(X, y).score(X, y) < 0.65
    p = fm.predict_proba(X[:5])
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_array_equal(fm.predict(X[:5]), (fm.decision_function(X[:5]) > 0).astype(int))


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_intercept_and_linear_terms_can_be_left_out():
    X, y = _interaction_data(500, 3)
    fm = ml.FMRegressor(fit_intercept=False, fit_linear=False, max_iter=20, random_state=0).fit(X, y)
    assert fm.intercept_ == 0.0 and not fm.linear_.any()
    assert fm.factors_.shape == (6, 8)


def test_fits_a_dataset_like_in_memory(cluster):  # noqa: F811
    X, y = _interaction_data(900, 4)
    df = pd.DataFrame(X, columns=[f"f{i}" for i in range(6)]).assign(target=y, id=np.arange(len(y)))
    ds = sd.from_pandas(df).repartition(3)
    feats = [f"f{i}" for i in range(6)]
    kw = dict(factor_size=3, max_iter=40, init_std=0.1, random_state=0)
    on_ds = ml.FMRegressor(**kw).fit(ds, features=feats, label="target")
    local = ml.FMRegressor(**kw).fit(df, features=feats, label="target")
    np.testing.assert_allclose(on_ds.factors_, local.factors_, atol=1e-6)
    out = on_ds.predict(ds).to_pandas()
    np.testing.assert_array_equal(out["id"], np.arange(len(y)))
    np.testing.assert_allclose(out["prediction"], local.predict(X), atol=1e-5)


def test_rejects_bad_input():
    rng = np.random.default_rng(5)
    frame = pd.DataFrame(rng.normal(size=(60, 3)), columns=list("abc")).assign(kind=rng.integers(0, 3, 60))
    with pytest.raises(InvalidInputError, match="label 'kind' has 3 classes.*OneVsRest"):
        ml.FMClassifier().fit(frame, label="kind")
    with pytest.raises(InvalidInputError, match="factor_size"):
        ml.FMRegressor(factor_size=0).fit(frame, label="a")
    with pytest.raises(InvalidInputError, match="'b'"):
        ml.FMRegressor().fit(frame.assign(b=np.where(frame.a > 0, np.inf, frame.b)), label="kind")
    # a multiclass label goes through OneVsRest
    ovr = ml.OneVsRest(ml.FMClassifier(factor_size=2, max_iter=30, random_state=0)).fit(frame, label="kind")
    assert len(ovr.estimators_) == 3


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_save_and_load_predict_the_same(tmp_path):
    X, y = _interaction_data(200, 6)
    for model in (ml.FMRegressor(max_iter=10, random_state=0).fit(X, y),
                  ml.FMClassifier(max_iter=10, random_state=0).fit(X, (y > 0).astype(int))):
        model.save(tmp_path / type(model).__name__)
        np.testing.assert_array_equal(ml.load(tmp_path / type(model).__name__).predict(X), model.predict(X))
