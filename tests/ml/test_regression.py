"""shoal.ml.regression: IsotonicRegression and GeneralizedLinearRegression against
scikit-learn (and known values), distributed over a shoal.data Dataset, and bad input."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import shoal.data as sd
import shoal.ml as ml
from shoal.exceptions import InvalidInputError
from shoal.ml import as_design_matrix
from tests.ml._cluster import cluster  # noqa: F401


def _blocks(X, y, rows=70):
    """A DesignMatrix of several in-process blocks: the fold across blocks is exercised."""
    return as_design_matrix(X, y, target="regression", block_rows=rows, executor="local")


# ---------------------------------------------------------------------------- isotonic

def _isotonic_data(n=600, seed=0):
    rng = np.random.default_rng(seed)
    x = np.round(rng.uniform(0, 10, n), 1)          # ties: rows pool by distinct value
    return x, np.log1p(x) + rng.normal(0, 0.3, n)


@pytest.mark.parametrize("increasing", [True, False])
@pytest.mark.parametrize("out_of_bounds", ["nan", "clip"])
def test_isotonic_matches_sklearn(increasing, out_of_bounds):
    from sklearn.isotonic import IsotonicRegression as SkIsotonic
    x, y = _isotonic_data()
    y = y if increasing else -y
    theirs = SkIsotonic(increasing=increasing, out_of_bounds=out_of_bounds, y_min=-1.5, y_max=2.2).fit(x, y)
    ours = ml.IsotonicRegression(increasing=increasing, out_of_bounds=out_of_bounds, y_min=-1.5,
                                 y_max=2.2).fit(_blocks(x[:, None], y))
    np.testing.assert_allclose(ours.X_thresholds_, theirs.X_thresholds_, rtol=1e-12)
    np.testing.assert_allclose(ours.y_thresholds_, theirs.y_thresholds_, rtol=1e-10, atol=1e-12)
    t = np.linspace(-1, 11, 97)
    np.testing.assert_allclose(ours.predict(t[:, None]), theirs.predict(t), rtol=1e-10, equal_nan=True)
    np.testing.assert_allclose(ours.transform(t[:, None]), theirs.transform(t), rtol=1e-10, equal_nan=True)


def test_isotonic_feature_index_picks_the_column_spark_names():
    x, y = _isotonic_data(200)
    X = np.column_stack([np.zeros_like(x), x])
    ours = ml.IsotonicRegression(feature_index=1).fit(X, y)
    plain = ml.IsotonicRegression().fit(x[:, None], y)
    np.testing.assert_allclose(ours.predict(X), plain.predict(x[:, None]))
    with pytest.raises(InvalidInputError, match="feature_index=2"):
        ml.IsotonicRegression(feature_index=2).fit(X, y)
    with pytest.raises(InvalidInputError, match="out_of_bounds"):
        ml.IsotonicRegression(out_of_bounds="extend").fit(X, y)
    with pytest.raises(InvalidInputError, match="outside the fitted range"):
        ml.IsotonicRegression(out_of_bounds="raise").fit(x[:, None], y).predict(np.array([[20.0]]))


def test_isotonic_on_a_dataset(cluster):  # noqa: F811
    from sklearn.isotonic import IsotonicRegression as SkIsotonic
    x, y = _isotonic_data(900, seed=1)
    ds = sd.from_pandas(pd.DataFrame({"x": x, "y": y, "id": np.arange(len(x))})).repartition(4)
    ours = ml.IsotonicRegression(out_of_bounds="clip").fit(ds, features=["x"], label="y")
    theirs = SkIsotonic(out_of_bounds="clip").fit(x, y)
    out = ours.predict(ds).to_pandas()
    np.testing.assert_allclose(out["prediction"], theirs.predict(x), rtol=1e-10)
    np.testing.assert_array_equal(out["id"], np.arange(len(x)))
    assert ours.score(ds, label="y") == pytest.approx(theirs.score(x, y), rel=1e-9)


def test_isotonic_rejects_a_string_label_naming_the_column(cluster):  # noqa: F811
    table = pa.table({"x": [1.0, 2.0, 3.0], "grade": ["a", "b", "c"]})
    with pytest.raises(InvalidInputError, match="grade"):
        ml.IsotonicRegression().fit(sd.from_arrow(table), features=["x"], label="grade")
    with pytest.raises(InvalidInputError, match="x"):
        ml.IsotonicRegression().fit(pd.DataFrame({"x": [1.0, np.nan, 2.0], "y": [1.0, 2.0, 3.0]}),
                                    label="y")
