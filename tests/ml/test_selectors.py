"""VarianceThresholdSelector against scikit-learn's VarianceThreshold and Spark's documented example."""
import numpy as np
import pandas as pd
import pytest
from sklearn.feature_selection import VarianceThreshold

import shoal.data as sd
import shoal.ml as ml
from shoal.exceptions import InvalidInputError
from tests.ml._cluster import cluster  # noqa: F401

# pyspark.ml.feature.VarianceThresholdSelector's example (varianceThreshold=8.0): it keeps
# features 0, 2, 3 and 5 (sample variances 16.7, 8.17, 10.2, 11.5)
SPARK_ROWS = np.array([[6.0, 7.0, 0.0, 7.0, 6.0, 0.0], [0.0, 9.0, 6.0, 0.0, 5.0, 9.0],
                       [0.0, 9.0, 3.0, 0.0, 5.0, 5.0], [0.0, 9.0, 8.0, 5.0, 6.0, 4.0],
                       [8.0, 9.0, 6.0, 5.0, 4.0, 4.0], [8.0, 9.0, 6.0, 0.0, 0.0, 0.0]])


@pytest.mark.parametrize("threshold", [0.0, 0.05, 0.5])
def test_variance_threshold_matches_sklearn(threshold):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 6)) * np.array([0.0, 0.1, 0.5, 1.0, 2.0, 0.2]) + 100.0
    ours = ml.VarianceThresholdSelector(threshold).fit(X)
    theirs = VarianceThreshold(threshold).fit(X)
    np.testing.assert_allclose(ours.variances_, theirs.variances_, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(ours.get_support(), theirs.get_support())
    np.testing.assert_array_equal(ours.transform(X), theirs.transform(X))


def test_sample_variance_reproduces_sparks_example():
    sel = ml.VarianceThresholdSelector(8.0, ddof=1).fit(SPARK_ROWS)
    assert list(sel.get_support(indices=True)) == [0, 2, 3, 5]
    np.testing.assert_array_equal(sel.transform(SPARK_ROWS)[0], [6.0, 0.0, 7.0, 0.0])
    # the population variance of feature 2 (6.81) is under 8: scikit-learn's convention drops it
    assert list(ml.VarianceThresholdSelector(8.0).fit(SPARK_ROWS).get_support(indices=True)) == [0, 3, 5]


def test_selector_on_a_dataset_keeps_the_selected_columns(cluster):
    cols = [f"f{j}" for j in range(6)]
    frame = pd.DataFrame(SPARK_ROWS, columns=cols).assign(id=np.arange(6))
    ds = sd.from_pandas(frame).repartition(2)
    sel = ml.VarianceThresholdSelector(8.0, ddof=1).fit(ds, features=cols)
    assert list(sel.get_feature_names_out()) == ["f0", "f2", "f3", "f5"]
    out = sel.transform(ds).to_pandas()
    assert set(out.columns) == {"f0", "f2", "f3", "f5", "id"}
    np.testing.assert_array_equal(out[["f0", "f2", "f3", "f5"]].to_numpy(), SPARK_ROWS[:, [0, 2, 3, 5]])


def test_no_feature_above_the_threshold_is_a_clear_error():
    with pytest.raises(InvalidInputError, match="variance threshold"):
        ml.VarianceThresholdSelector(100.0).fit(SPARK_ROWS)
    with pytest.raises(InvalidInputError, match="ddof"):
        ml.VarianceThresholdSelector(ddof=2).fit(SPARK_ROWS)
