"""shoal.ml.MultilayerPerceptronClassifier: exact gradients, accuracy against scikit-learn's
MLPClassifier, training over a Dataset, and bad input."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_classification
from sklearn.preprocessing import StandardScaler

import shoal.data as sd
import shoal.ml as ml
from shoal.exceptions import InvalidInputError
from shoal.ml import as_design_matrix
from shoal.ml.neural_network import _kernels as K
from tests.ml._cluster import cluster  # noqa: F401


def _data(n=1600, seed=0):
    X, y = make_classification(n, 8, n_informative=6, n_redundant=0, n_classes=3, random_state=seed)
    return StandardScaler().fit_transform(X), y


@pytest.mark.parametrize("activation", ["logistic", "tanh", "relu"])
def test_block_gradient_is_the_loss_derivative(activation):
    rng = np.random.default_rng(0)
    X, y, layers = rng.normal(size=(40, 4)), rng.integers(0, 3, 40), (4, 5, 3, 3)
    theta = rng.normal(size=sum(a * b + b for a, b in zip(layers[:-1], layers[1:])))
    _, grad = K.mlp_loss_grad(X, y, theta, layers, activation)
    eye = np.eye(len(theta)) * 1e-6
    numeric = [(K.mlp_loss_grad(X, y, theta + e, layers, activation)[0]
                - K.mlp_loss_grad(X, y, theta - e, layers, activation)[0]) / 2e-6 for e in eye]
    np.testing.assert_allclose(grad, numeric, atol=1e-6)


def test_accuracy_is_sklearns_mlp_with_lbfgs():
    # "roughly": different optimiser paths from different initial weights; within 3 points
    import warnings
    from sklearn.neural_network import MLPClassifier
    X, y = _data()
    train, test = slice(0, 1200), slice(1200, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = MLPClassifier((10,), activation="logistic", solver="lbfgs", alpha=1e-4, max_iter=200,
                               random_state=0).fit(X[train], y[train])
        dm = as_design_matrix(X[train], y[train], target="classification", block_rows=250, executor="local")
        ours = ml.MultilayerPerceptronClassifier(layers=[8, 10, 3], alpha=1e-4, max_iter=200,
                                                 random_state=0).fit(dm)
    assert ours.score(X[test], y[test]) >= theirs.score(X[test], y[test]) - 0.03
    assert [W.shape for W in ours.coefs_] == [(8, 10), (10, 3)]
    np.testing.assert_allclose(ours.predict_proba(X[:5]).sum(axis=1), 1.0)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_fits_a_dataset_with_the_same_result_as_in_memory(cluster):  # noqa: F811
    X, y = _data(900, seed=1)
    df = pd.DataFrame(X, columns=[f"f{i}" for i in range(8)]).assign(
        kind=np.array(["a", "b", "c"])[y], id=np.arange(len(y)))
    feats = [f"f{i}" for i in range(8)]
    ds = sd.from_pandas(df).repartition(3)
    kw = dict(hidden_layer_sizes=(6,), max_iter=30, random_state=0)
    on_ds = ml.MultilayerPerceptronClassifier(**kw).fit(ds, features=feats, label="kind")
    local = ml.MultilayerPerceptronClassifier(**kw).fit(df, features=feats, label="kind")
    for a, b in zip(on_ds.coefs_, local.coefs_):      # same sums, folded in another order
        np.testing.assert_allclose(a, b, atol=1e-6)
    out = on_ds.predict(ds).to_pandas()
    np.testing.assert_array_equal(out["id"], np.arange(len(y)))
    assert (out["prediction"] == df["kind"]).mean() > 0.8


def test_rejects_layers_that_do_not_fit_the_data():
    X, y = _data(100)
    with pytest.raises(InvalidInputError, match="8 feature column"):
        ml.MultilayerPerceptronClassifier(layers=[4, 5, 3]).fit(X, y)
    with pytest.raises(InvalidInputError, match="3 classes"):
        ml.MultilayerPerceptronClassifier(layers=[8, 5, 2]).fit(X, y)
    with pytest.raises(InvalidInputError, match="activation"):
        ml.MultilayerPerceptronClassifier(activation="gelu").fit(X, y)
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(8)]).assign(f3="x", kind=y)
    with pytest.raises(InvalidInputError, match="f3"):
        ml.MultilayerPerceptronClassifier().fit(frame, label="kind")


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_save_and_load_predict_the_same(tmp_path):
    X, y = _data(200)
    model = ml.MultilayerPerceptronClassifier(hidden_layer_sizes=(5, 4), max_iter=10, random_state=0).fit(X, y)
    model.save(tmp_path / "mlp")
    np.testing.assert_array_equal(ml.load(tmp_path / "mlp").predict_proba(X), model.predict_proba(X))
