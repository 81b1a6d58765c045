"""Metrics on arrays match scikit-learn's."""
import numpy as np
import pytest
import sklearn.metrics as skm

from shoal.ml import metrics as M


@pytest.fixture(scope="module")
def labels():
    rng = np.random.RandomState(0)
    t = rng.randint(0, 3, 600)
    p = np.where(rng.rand(600) < 0.7, t, rng.randint(0, 3, 600))
    return t, p


def test_accuracy(labels):
    assert M.accuracy_score(*labels) == pytest.approx(skm.accuracy_score(*labels))


@pytest.mark.parametrize("average", ["macro", "weighted", "micro"])
def test_precision_recall_f1_multiclass(labels, average):
    t, p = labels
    assert M.precision_score(t, p, average=average) == pytest.approx(skm.precision_score(t, p, average=average))
    assert M.recall_score(t, p, average=average) == pytest.approx(skm.recall_score(t, p, average=average))
    assert M.f1_score(t, p, average=average) == pytest.approx(skm.f1_score(t, p, average=average))


def test_binary_f1_uses_pos_label(labels):
    t, p = (labels[0] > 0).astype(int), (labels[1] > 0).astype(int)
    assert M.f1_score(t, p) == pytest.approx(skm.f1_score(t, p))
    assert M.f1_score(t, p, pos_label=0) == pytest.approx(skm.f1_score(t, p, pos_label=0))


def test_roc_auc_with_ties():
    rng = np.random.RandomState(1)
    t = rng.randint(0, 2, 800)
    s = np.round(rng.rand(800) + 0.4 * t, 1)     # many ties
    assert M.roc_auc_score(t, s) == pytest.approx(skm.roc_auc_score(t, s))


def test_roc_auc_needs_both_classes():
    with pytest.raises(ValueError, match="both classes"):
        M.roc_auc_score(np.ones(4), np.random.rand(4))


def test_log_loss_binary_and_multiclass(labels):
    t = labels[0]
    P = np.random.RandomState(2).dirichlet([1, 1, 1], len(t))
    assert M.log_loss(t, P) == pytest.approx(skm.log_loss(t, P))
    tb = (t > 0).astype(int)
    assert M.log_loss(tb, P[:, 0]) == pytest.approx(skm.log_loss(tb, P[:, 0]))


def test_regression_metrics():
    rng = np.random.RandomState(3)
    yt = rng.randn(500)
    yp = yt + 0.3 * rng.randn(500)
    assert M.mean_squared_error(yt, yp) == pytest.approx(skm.mean_squared_error(yt, yp))
    assert M.root_mean_squared_error(yt, yp) == pytest.approx(skm.root_mean_squared_error(yt, yp))
    assert M.mean_absolute_error(yt, yp) == pytest.approx(skm.mean_absolute_error(yt, yp))
    assert M.r2_score(yt, yp) == pytest.approx(skm.r2_score(yt, yp))


def test_silhouette_matches_sklearn():
    rng = np.random.RandomState(4)
    lab = rng.randint(0, 4, 500)
    X = rng.randn(500, 3) + lab[:, None]
    assert M.silhouette_score(X, lab) == pytest.approx(skm.silhouette_score(X, lab), abs=1e-9)


def test_length_mismatch_is_rejected():
    with pytest.raises(ValueError, match="different lengths"):
        M.accuracy_score([1, 2, 3], [1, 2])
