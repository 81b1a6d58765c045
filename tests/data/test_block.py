"""Pure block operations (no cluster)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from shoal.data._block import (column_to_numpy, concat, dict_to_table, pandas_to_table, rebatch,
                               split_even, table_from_items, to_batch, to_block)
from shoal.exceptions import UDFReturnTypeError


def test_tensor_column_round_trips_through_numpy_batch():
    images = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    table = dict_to_table({"img": images, "label": np.array([0, 1])})
    assert isinstance(table.schema.field("img").type, pa.FixedShapeTensorType)
    batch = to_batch(table, "numpy")
    np.testing.assert_array_equal(batch["img"], images)
    assert batch["img"].dtype == np.float32


def test_tensor_column_survives_pandas_round_trip():
    images = np.random.default_rng(0).random((5, 2, 2))
    table = dict_to_table({"img": images})
    back = pandas_to_table(to_batch(table, "pandas"))
    np.testing.assert_array_equal(column_to_numpy(back.column("img")), images)


def test_ragged_arrays_become_list_column():
    table = dict_to_table({"seq": [np.arange(2), np.arange(3)]})
    assert pa.types.is_list(table.schema.field("seq").type)
    assert table.column("seq").to_pylist() == [[0, 1], [0, 1, 2]]


def test_to_block_accepts_dataframe_table_and_dict():
    df = pd.DataFrame({"a": [1, 2]})
    for value in (df, pa.table({"a": [1, 2]}), {"a": np.array([1, 2])}):
        assert to_block(value).column("a").to_pylist() == [1, 2]


def test_to_block_rejects_other_types_naming_the_function():
    def my_udf(batch):
        return [1, 2]
    with pytest.raises(UDFReturnTypeError, match="my_udf"):
        to_block(my_udf(None), my_udf)


def test_dict_with_unequal_column_lengths_is_rejected():
    with pytest.raises(ValueError, match="different lengths"):
        dict_to_table({"a": [1, 2], "b": [1]})


def test_rebatch_cuts_exact_batches_across_blocks():
    blocks = [pa.table({"x": np.arange(a, b)}) for a, b in [(0, 3), (3, 4), (4, 11), (11, 11)]]
    sizes = [t.num_rows for t in rebatch(blocks, 4)]
    assert sizes == [4, 4, 3]
    joined = pa.concat_tables(list(rebatch(blocks, 4)))
    assert joined.column("x").to_pylist() == list(range(11))


def test_rebatch_drop_last_drops_short_batch():
    blocks = [pa.table({"x": np.arange(10)})]
    assert [t.num_rows for t in rebatch(blocks, 4, drop_last=True)] == [4, 4]


def test_split_even_sizes_differ_by_at_most_one():
    parts = split_even(pa.table({"x": np.arange(10)}), 3)
    assert [p.num_rows for p in parts] == [3, 3, 4]


def test_concat_unifies_types_and_skips_empty_blocks_of_other_schema():
    a = pa.table({"x": pa.array([1, 2], pa.int32())})
    b = pa.table({"x": pa.array([3], pa.int64())})
    assert concat([a, b]).column("x").to_pylist() == [1, 2, 3]
    empty_other = pa.table({"y": pa.array([], pa.string())})
    assert concat([empty_other, a]).column_names == ["x"]


def test_items_that_are_not_dicts_become_item_column():
    assert table_from_items([1, 2, 3]).column("item").to_pylist() == [1, 2, 3]
    assert table_from_items([{"a": 1}, {"a": 2}]).column_names == ["a"]
