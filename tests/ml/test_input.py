"""The input layer: layout into blocks, map-reduce, and rejection of bad input."""
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import shoal.ml as ml
from shoal.exceptions import InvalidInputError, ShoalError
from shoal.ml._input import as_design_matrix, check_predict_input, tree_sum


def _gram(X, y):
    return X.T @ X, X.shape[0]


def test_blocks_cover_all_rows_in_order():
    X = np.arange(30.0).reshape(10, 3)
    dm = as_design_matrix(X, block_rows=3, executor="local")
    assert dm.block_rows == [3, 3, 3, 1]
    Xc, _ = dm.collect()
    np.testing.assert_array_equal(Xc, X)
    assert all(b[0].flags.c_contiguous and b[0].dtype == np.float64 for b in dm.blocks)


def test_map_reduce_sums_every_block():
    X = np.random.default_rng(0).standard_normal((1000, 4))
    dm = as_design_matrix(X, block_rows=128, executor="local")
    G, n = dm.map_reduce(_gram)
    np.testing.assert_allclose(G, X.T @ X)
    assert n == 1000


def test_tree_sum_adds_nested_partials():
    a = (np.ones(2), [1, 2], {"k": 3.0})
    out = tree_sum(a, a)
    np.testing.assert_array_equal(out[0], [2, 2])
    assert out[1] == [2, 4] and out[2] == {"k": 6.0}


def test_classification_labels_become_codes_and_classes():
    X = np.zeros((4, 1))
    dm = as_design_matrix(X, np.array(["b", "a", "b", "c"]), target="classification")
    np.testing.assert_array_equal(dm.classes, ["a", "b", "c"])
    np.testing.assert_array_equal(dm.collect()[1], [1, 0, 1, 2])


def test_dataframe_label_column_and_feature_names():
    df = pd.DataFrame({"x1": [1.0, 2, 3], "x2": [4.0, 5, 6], "lab": [0, 1, 0]})
    dm = as_design_matrix(df, label="lab", target="classification")
    assert list(dm.feature_names_in_) == ["x1", "x2"]
    assert dm.n_features == 2


def test_arrow_table_is_accepted():
    t = pa.table({"a": [1.0, 2.0], "b": [3.0, 4.0]})
    dm = as_design_matrix(t)
    assert list(dm.feature_names_in_) == ["a", "b"] and dm.n_rows == 2


def test_nan_feature_error_names_the_column():
    df = pd.DataFrame({"good": [1.0, 2.0], "bad": [1.0, np.nan]})
    with pytest.raises(InvalidInputError, match="NaN in column 'bad'"):
        ml.LinearRegression().fit(df, [1.0, 2.0])


def test_infinite_feature_error_names_the_column():
    X = np.ones((3, 3))
    X[1, 2] = np.inf
    with pytest.raises(InvalidInputError, match="infinity.*feature column 2"):
        ml.StandardScaler().fit(X)


def test_label_of_wrong_type_for_regressor_is_rejected():
    df = pd.DataFrame({"x": [1.0, 2.0], "y": ["a", "b"]})
    with pytest.raises(InvalidInputError, match="label y has dtype object.*regressor"):
        ml.LinearRegression().fit(df, "y")


def test_continuous_label_for_classifier_is_rejected():
    with pytest.raises(InvalidInputError, match="Unknown label type: continuous"):
        ml.LogisticRegression().fit(np.ones((3, 1)), [0.5, 1.5, 0.1])


def test_empty_input_is_rejected():
    with pytest.raises(InvalidInputError, match="0 sample"):
        ml.KMeans(2).fit(np.empty((0, 3)))


def test_single_class_is_rejected_by_classifiers():
    with pytest.raises(InvalidInputError, match="only one class"):
        ml.GaussianNB().fit(np.random.rand(5, 2), np.ones(5))


def test_missing_column_is_named():
    df = pd.DataFrame({"x": [1.0, 2.0], "y": [0, 1]})
    with pytest.raises(InvalidInputError, match="column 'label' is missing"):
        ml.LogisticRegression().fit(df, "label")


def test_non_numeric_feature_column_is_named():
    df = pd.DataFrame({"x": [1.0, 2.0], "city": ["a", "b"], "y": [0, 1]})
    with pytest.raises(InvalidInputError, match="feature column 'city'"):
        ml.LogisticRegression().fit(df, "y")


def test_wrong_number_of_features_at_predict_names_argument():
    m = ml.Ridge().fit(np.random.rand(10, 3), np.random.rand(10))
    with pytest.raises(InvalidInputError, match=r"X has 2 features, but Ridge is expecting 3.*argument X of predict"):
        m.predict(np.random.rand(4, 2))


def test_length_mismatch_between_x_and_y():
    with pytest.raises(InvalidInputError, match="inconsistent numbers of samples"):
        ml.LinearRegression().fit(np.random.rand(5, 2), np.random.rand(4))


def test_errors_are_shoal_errors_and_value_errors():
    with pytest.raises(ShoalError):
        as_design_matrix(np.empty((0, 2)))
    with pytest.raises(ValueError):
        as_design_matrix(np.empty((0, 2)))


def test_predict_input_reorders_dataframe_columns_by_fitted_names():
    df = pd.DataFrame({"a": [1.0, 2, 3, 4], "b": [0.0, 1, 0, 1]})
    m = ml.LinearRegression().fit(df, [1.0, 2, 3, 4])
    X = check_predict_input(m, df[["b", "a"]])
    np.testing.assert_array_equal(X, df[["a", "b"]].to_numpy())


def test_unknown_executor_is_rejected():
    with pytest.raises(InvalidInputError, match="executor"):
        ml.set_executor("gpu")


def test_predict_names_a_missing_fitted_column():
    df = pd.DataFrame({"a": [1.0, 2, 3, 4], "b": [0.0, 1, 0, 1]})
    m = ml.LinearRegression().fit(df, [1.0, 2, 3, 4])
    with pytest.raises(InvalidInputError, match="column 'b' seen by LinearRegression.fit\\(\\) is missing"):
        m.predict(df[["a"]])


def test_label_with_none_is_rejected():
    with pytest.raises(InvalidInputError, match="label y mixes"):
        ml.GaussianNB().fit(np.random.rand(3, 2), np.array(["a", None, "b"], dtype=object))


# ----------------------------------------------------------------------------------
# predict on a Dataset: block-parallel, rows in order, nothing collected to the driver

from _cluster import cluster  # noqa: F401  (module-scoped fixture)


@pytest.fixture
def no_collect(monkeypatch):
    """Fail a test that gathers a whole Dataset into the driver."""
    import shoal.data as sd

    def refuse(self, *args, **kwargs):
        raise AssertionError("the Dataset was collected to the driver")
    for name in ("to_pandas", "to_arrow", "take_all"):
        monkeypatch.setattr(sd.Dataset, name, refuse)


def _frame(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n), "c": rng.normal(size=n)})
    df["label"] = (df.a + 0.5 * df.b > 0).astype(int)
    return df


@pytest.mark.usefixtures("cluster")
def test_predict_on_dataset_keeps_row_order_over_uneven_and_empty_blocks():
    import shoal.data as sd
    df = _frame()
    model = ml.LogisticRegression().fit(df[["a", "b", "c"]], df["label"])
    # uneven blocks, some emptied by the filter
    ds = sd.from_pandas(df, override_num_blocks=7).filter(expr=pa.compute.field("a") > -0.5)
    kept = df[df.a > -0.5]
    np.testing.assert_array_equal(model.predict(ds).to_numpy("prediction"), model.predict(kept[["a", "b", "c"]]))
    np.testing.assert_allclose(model.predict_proba(ds).to_numpy("probability"),
                               model.predict_proba(kept[["a", "b", "c"]]))


@pytest.mark.usefixtures("cluster", "no_collect")
def test_pipeline_fit_and_predict_on_dataset_never_collect():
    import shoal.data as sd
    df = _frame(seed=1)
    ds = sd.from_pandas(df).repartition(4)
    pipe = ml.Pipeline([("scale", ml.StandardScaler()), ("assemble", ml.VectorAssembler(["a", "b", "c"])),
                        ("nb", ml.GaussianNB())])
    pipe.fit(ds, "label")
    out = pipe.predict(ds)   # lazy: consumed below block by block, never gathered as a table
    pred = np.concatenate([b["prediction"] for b in out.iter_batches(batch_size=None)])
    assert pred.shape == (len(df),)
    assert list(pipe.named_steps["nb"].feature_names_in_) == ["features"]
    assert pipe.named_steps["nb"].n_features_in_ == 3
    assert (pred == df["label"].to_numpy()).mean() > 0.8
    X = ml.StandardScaler().fit(df[["a", "b", "c"]]).transform(df[["a", "b", "c"]])
    np.testing.assert_array_equal(pred, ml.GaussianNB().fit(X, df["label"]).predict(X))


def test_an_empty_matrix_becomes_an_empty_vector_column_of_its_width():
    from shoal.ml._input import dense_to_vectors
    empty, full = dense_to_vectors(np.zeros((0, 3))), dense_to_vectors(np.ones((2, 3)))
    assert len(empty) == 0 and empty.type == full.type       # Arrow's own path refuses 0 rows
    assert pa.concat_arrays([empty, full]).to_numpy_ndarray().shape == (2, 3)
