"""In-memory sources and range against the data they were built from."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import shoal.data as sd

pytestmark = pytest.mark.usefixtures("cluster")


def test_range_rows_and_blocks():
    ds = sd.range(100, override_num_blocks=7)
    assert ds.num_blocks() == 7 and ds.count() == 100
    assert ds.to_numpy("id").tolist() == list(range(100))


def test_range_tensor_shape():
    arr = sd.range_tensor(6, shape=(2, 3), override_num_blocks=2).to_numpy("data")
    assert arr.shape == (6, 2, 3) and arr[4, 1, 2] == 4


def test_from_numpy_array_dict_and_tensors():
    images = np.random.default_rng(0).random((20, 4, 4)).astype(np.float32)
    ds = sd.from_numpy({"img": images, "y": np.arange(20)}, override_num_blocks=3)
    assert ds.num_blocks() == 3
    out = ds.to_numpy()
    np.testing.assert_array_equal(out["img"], images)
    np.testing.assert_array_equal(sd.from_numpy(np.arange(5)).to_numpy("data"), np.arange(5))


def test_tensor_columns_reach_map_batches_as_ndarrays():
    images = np.ones((8, 2, 2))
    ds = sd.from_numpy({"img": images}).map_batches(
        lambda b: {"total": b["img"].reshape(len(b["img"]), -1).sum(axis=1)})
    assert ds.to_numpy("total").tolist() == [4.0] * 8


def test_from_pandas_list_one_block_each():
    dfs = [pd.DataFrame({"a": [i, i]}) for i in range(3)]
    ds = sd.from_pandas(dfs)
    assert ds.num_blocks() == 3
    assert ds.to_pandas()["a"].tolist() == [0, 0, 1, 1, 2, 2]


def test_from_arrow_and_items():
    assert sd.from_arrow(pa.table({"a": [1, 2]})).take_all() == [{"a": 1}, {"a": 2}]
    assert sd.from_items([{"a": 1}, {"a": 2}, {"a": 3}]).count() == 3
    assert sd.from_items(["x", "y"]).to_numpy("item").tolist() == ["x", "y"]


def test_from_polars():
    pl = pytest.importorskip("polars")
    ds = sd.from_polars(pl.DataFrame({"a": [1, 2, 3]}))
    assert ds.to_numpy("a").tolist() == [1, 2, 3]
