"""ChiSqSelector and UnivariateFeatureSelector against scikit-learn's univariate selectors,
SciPy's contingency test and Spark's documented examples."""
import numpy as np
import pandas as pd
import pytest
from scipy.stats import chi2_contingency
from sklearn.feature_selection import (SelectFdr, SelectFpr, SelectFwe, SelectKBest, SelectPercentile,
                                       f_classif, f_regression)

import shoal.data as sd
import shoal.ml as ml
from shoal.exceptions import InvalidInputError
from shoal.ml._input import as_design_matrix
from tests.ml._cluster import cluster  # noqa: F401

# pyspark.ml.feature.ChiSqSelector's example: numTopFeatures=1 keeps feature 2 ([18], [12], [15])
SPARK_CHI_X = np.array([[0.0, 0.0, 18.0, 1.0], [0.0, 1.0, 12.0, 0.0], [1.0, 0.0, 15.0, 0.1]])
SPARK_CHI_Y = np.array([1.0, 0.0, 0.0])
# Spark's guide example of UnivariateFeatureSelector (continuous features, categorical label,
# numTopFeatures 1): the ANOVA F-test keeps feature 5 ([2.3], [4.1], [2.5], [3.8], [3.0], [2.1])
SPARK_UFS_X = np.array([[1.7, 4.4, 7.6, 5.8, 9.6, 2.3], [8.8, 7.3, 5.7, 7.3, 2.2, 4.1],
                        [1.2, 9.5, 2.5, 3.1, 8.7, 2.5], [3.7, 9.2, 6.1, 4.1, 7.5, 3.8],
                        [8.9, 5.2, 7.8, 8.3, 5.2, 3.0], [7.9, 8.5, 9.2, 4.0, 9.4, 2.1]])
SPARK_UFS_Y = np.array([3.0, 2.0, 3.0, 2.0, 4.0, 4.0])


def _classification(n=3000, d=12, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = (X[:, 0] + 0.6 * X[:, 3] - 0.3 * X[:, 7] + rng.normal(size=n) > 0).astype(int) \
        + (X[:, 5] > 1).astype(int)
    return X, y


def _regression(n=3000, d=12, seed=1):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    return X, X[:, 2] - 0.2 * X[:, 4] + 0.05 * X[:, 9] + rng.normal(size=n)


SKLEARN_MODES = [("numTopFeatures", 4, lambda f: SelectKBest(f, k=4)),
                 ("percentile", 0.25, lambda f: SelectPercentile(f, percentile=25)),
                 ("fpr", 0.01, lambda f: SelectFpr(f, alpha=0.01)),
                 ("fdr", 0.05, lambda f: SelectFdr(f, alpha=0.05)),
                 ("fwe", 0.05, lambda f: SelectFwe(f, alpha=0.05))]


@pytest.mark.parametrize("mode,threshold,make", SKLEARN_MODES)
def test_anova_f_selection_matches_sklearn(mode, threshold, make):
    X, y = _classification()
    ours = ml.UnivariateFeatureSelector(selection_mode=mode, selection_threshold=threshold).fit(X, y)
    theirs = make(f_classif).fit(X, y)
    np.testing.assert_allclose(ours.scores_, theirs.scores_, rtol=1e-8)
    np.testing.assert_allclose(ours.pvalues_, theirs.pvalues_, rtol=1e-6, atol=1e-300)
    np.testing.assert_array_equal(ours.get_support(), theirs.get_support())
    np.testing.assert_array_equal(ours.transform(X), theirs.transform(X))


@pytest.mark.parametrize("mode,threshold,make", SKLEARN_MODES)
def test_f_regression_selection_matches_sklearn(mode, threshold, make):
    X, y = _regression()
    X = X + 1e3     # far from the origin: the merged centred moments must not cancel
    ours = ml.UnivariateFeatureSelector(feature_type="continuous", label_type="continuous",
                                        selection_mode=mode, selection_threshold=threshold).fit(X, y)
    theirs = make(f_regression).fit(X, y)
    np.testing.assert_allclose(ours.scores_, theirs.scores_, rtol=1e-7)
    np.testing.assert_allclose(ours.pvalues_, theirs.pvalues_, rtol=1e-5, atol=1e-300)
    np.testing.assert_array_equal(ours.get_support(), theirs.get_support())


def _categorical(n=2000, seed=2):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    X = rng.integers(0, 4, size=(n, 8)).astype(float)
    X[:, 1] = np.where(rng.random(n) < 0.5, y, X[:, 1])         # strongly dependent
    X[:, 6] = np.where(rng.random(n) < 0.1, (y + 1) % 3, X[:, 6])   # weakly dependent
    return X, y


def _contingency_scores(X, y):
    stats, p = [], []
    for j in range(X.shape[1]):
        table = pd.crosstab(X[:, j], y).to_numpy()
        s, pv, _, _ = chi2_contingency(table, correction=False)
        stats.append(s)
        p.append(pv)
    return np.array(stats), np.array(p)


@pytest.mark.parametrize("mode,threshold,make", SKLEARN_MODES)
def test_chi_squared_selection_matches_scipy_and_sklearns_selection_rules(mode, threshold, make):
    X, y = _categorical()
    param = {"numTopFeatures": "num_top_features"}.get(mode, mode)
    ours = ml.ChiSqSelector(selector_type=mode, **{param: threshold}).fit(X, y)
    stats, p = _contingency_scores(X, y)
    np.testing.assert_allclose(ours.scores_, stats, rtol=1e-9)
    np.testing.assert_allclose(ours.pvalues_, p, rtol=1e-6, atol=1e-300)
    # scikit-learn's selection rules on the same test (its SelectKBest ranks by score: the
    # degrees of freedom here are equal for every feature, so score and p-value agree)
    theirs = make(lambda X_, y_: _contingency_scores(X_, y_)).fit(X, y)
    np.testing.assert_array_equal(ours.get_support(), theirs.get_support())
    same = ml.UnivariateFeatureSelector(feature_type="categorical", selection_mode=mode,
                                        selection_threshold=threshold).fit(X, y)
    np.testing.assert_array_equal(same.selected_features_, ours.selected_features_)


def test_sparks_documented_examples():
    chi = ml.ChiSqSelector(num_top_features=1).fit(SPARK_CHI_X, SPARK_CHI_Y)
    assert chi.selected_features_.tolist() == [2]
    np.testing.assert_array_equal(chi.transform(SPARK_CHI_X).ravel(), [18.0, 12.0, 15.0])
    # pyspark's own test of UnivariateFeatureSelector (continuous, categorical, 1) on that data
    assert ml.UnivariateFeatureSelector(selection_threshold=1).fit(
        SPARK_CHI_X, SPARK_CHI_Y).selected_features_.tolist() == [3]
    ufs = ml.UnivariateFeatureSelector(selection_threshold=1).fit(SPARK_UFS_X, SPARK_UFS_Y)
    assert ufs.selected_features_.tolist() == [5]
    np.testing.assert_array_equal(ufs.transform(SPARK_UFS_X).ravel(), [2.3, 4.1, 2.5, 3.8, 3.0, 2.1])


def test_statistics_are_the_same_however_the_rows_are_blocked():
    X, y = _classification(n=1000)
    whole = ml.UnivariateFeatureSelector(selection_threshold=3).fit(X, y)
    dm = as_design_matrix(X, y, target="classification", block_rows=77, executor="local")
    blocked = ml.UnivariateFeatureSelector(selection_threshold=3).fit(dm)
    np.testing.assert_allclose(blocked.scores_, whole.scores_, rtol=1e-10)
    np.testing.assert_array_equal(blocked.selected_features_, whole.selected_features_)


def test_selectors_fit_and_transform_a_dataset(cluster):  # noqa: F811
    X, y = _classification(n=600)
    X = X[:, :5]
    cols = [f"f{j}" for j in range(5)]
    frame = pd.DataFrame(X, columns=cols).assign(label=y, id=np.arange(600))
    ds = sd.from_pandas(frame).repartition(3)
    sel = ml.UnivariateFeatureSelector(selection_threshold=2).fit(ds, features=cols, label="label")
    ref = SelectKBest(f_classif, k=2).fit(X, y)
    np.testing.assert_allclose(sel.scores_, ref.scores_, rtol=1e-8)
    assert list(sel.get_feature_names_out()) == [cols[i] for i in ref.get_support(indices=True)]
    out = sel.transform(ds).to_pandas()
    assert set(out.columns) == set(sel.get_feature_names_out()) | {"label", "id"}
    Xc, yc = _categorical(n=600)
    cat_cols = [f"c{j}" for j in range(Xc.shape[1])]
    cat = sd.from_pandas(pd.DataFrame(Xc, columns=cat_cols).assign(label=yc)).repartition(2)
    chi = ml.ChiSqSelector(num_top_features=1).fit(cat, features=cat_cols, label="label")
    assert list(chi.get_feature_names_out()) == ["c1"]


def test_bad_parameters_and_input_are_named():
    X, y = _classification(n=100)
    X = X[:, :3]
    with pytest.raises(InvalidInputError, match="selection_mode='top'"):
        ml.UnivariateFeatureSelector(selection_mode="top").fit(X, y)
    with pytest.raises(InvalidInputError, match="selection_threshold=0.5 must be an int"):
        ml.UnivariateFeatureSelector(selection_threshold=0.5).fit(X, y)
    with pytest.raises(InvalidInputError, match=r"fpr=2.0 must be a number in \[0, 1\]"):
        ml.ChiSqSelector(selector_type="fpr", fpr=2.0).fit(X, y)
    with pytest.raises(InvalidInputError, match="label_type='ordinal'"):
        ml.UnivariateFeatureSelector(label_type="ordinal").fit(X, y)
    with pytest.raises(InvalidInputError, match="no test"):
        ml.UnivariateFeatureSelector(feature_type="categorical", label_type="continuous").fit(X, y)
    with pytest.raises(InvalidInputError, match="requires y"):
        ml.ChiSqSelector().fit(X)
    with pytest.raises(InvalidInputError, match="supervised.*label="):
        ml.ChiSqSelector().fit(pd.DataFrame(X, columns=["a", "b", "c"]), features=["a", "b"])


def test_a_fitted_selector_saves_and_loads(tmp_path):
    X, y = _categorical(n=300)
    model = ml.ChiSqSelector(num_top_features=2).fit(X, y)
    ml.save(model, tmp_path / "chi")
    back = ml.load(tmp_path / "chi")
    np.testing.assert_array_equal(back.transform(X), model.transform(X))
    np.testing.assert_array_equal(back.pvalues_, model.pvalues_)
