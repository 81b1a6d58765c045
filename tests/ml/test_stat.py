"""shoal.ml.stat against NumPy and SciPy (the same arithmetic: agreement to 1e-12)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.stats as st

import shoal.data as sd
import shoal.ml as ml
from shoal.exceptions import InvalidInputError
from tests.ml._cluster import cluster  # noqa: F401


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 4))
    X[:, 1] += X[:, 0]
    X[:, 3] = np.round(X[:, 2] * 2)       # ties: Spearman must average their ranks
    return X


def test_correlation_pearson_and_spearman_match_numpy_and_scipy(data):
    np.testing.assert_allclose(ml.Correlation.corr(data), np.corrcoef(data.T), atol=1e-12)
    np.testing.assert_allclose(ml.Correlation.corr(data, method="spearman"),
                               st.spearmanr(data).statistic, atol=1e-12)


def test_correlation_on_a_dataset_and_a_constant_column(data, cluster):  # noqa: F811
    ds = sd.from_pandas(pd.DataFrame(data, columns=list("abcd"))).repartition(3)
    np.testing.assert_allclose(ml.Correlation.corr(ds, method="spearman"),
                               st.spearmanr(data).statistic, atol=1e-12)
    np.testing.assert_allclose(ml.Correlation.corr(ds, features=["a", "b"]),
                               np.corrcoef(data[:, :2].T), atol=1e-12)
    R = ml.Correlation.corr(np.c_[data[:, 0], np.ones(len(data))])
    assert R[0, 0] == 1.0 and np.isnan(R[1, 1]) and np.isnan(R[0, 1])    # as Spark: NaN
    with pytest.raises(InvalidInputError, match="method="):
        ml.Correlation.corr(data, method="kendall")


def test_chi_square_test_matches_scipy(cluster):  # noqa: F811
    rng = np.random.default_rng(0)
    F = rng.integers(0, 4, size=(2000, 3)).astype(float)
    y = np.where(F[:, 0] + rng.integers(0, 2, 2000) > 2, "yes", "no")
    frame = pd.DataFrame(F, columns=["f0", "f1", "f2"]).assign(label=y)
    for X, args in ((F, {"y": y}), (sd.from_pandas(frame).repartition(2), {"label": "label"})):
        r = ml.ChiSquareTest.test(X, **args)
        for j in range(3):
            ref = st.chi2_contingency(pd.crosstab(F[:, j], y), correction=False)
            assert r.statistics[j] == pytest.approx(ref.statistic, abs=1e-9)
            assert r.p_values[j] == pytest.approx(ref.pvalue, abs=1e-12)
            assert r.degrees_of_freedom[j] == ref.dof
    assert r.p_values[0] < 1e-6 < r.p_values[1]


def test_chi_square_test_rejects_continuous_features():
    X = np.arange(20_002, dtype=float)[:, None]
    with pytest.raises(InvalidInputError, match="10000 categories"):
        ml.ChiSquareTest.test(X, np.arange(20_002) % 2)


def test_summarizer_matches_numpy(data):
    s = ml.Summarizer.summary(data)
    assert s["count"] == len(data)
    for name, ref in (("mean", data.mean(0)), ("sum", data.sum(0)), ("variance", data.var(0, ddof=1)),
                      ("std", data.std(0, ddof=1)), ("min", data.min(0)), ("max", data.max(0)),
                      ("norm_l2", np.linalg.norm(data, axis=0)), ("norm_l1", np.abs(data).sum(0)),
                      ("num_nonzeros", (data != 0).sum(0))):
        np.testing.assert_allclose(s[name], ref, atol=1e-10, err_msg=name)
    assert set(ml.Summarizer.summary(data, metrics=["mean", "max"])) == {"mean", "max"}
    with pytest.raises(InvalidInputError, match="'median'"):
        ml.Summarizer.summary(data, metrics=["median"])
