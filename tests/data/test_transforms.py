"""Fused one-to-one transforms applied to a block directly (no cluster)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from shoal.data._transforms import (AddColumn, DropColumns, Filter, FlatMap, MapBatches, MapRows,
                                    RenameColumns, SelectColumns, apply_chain)
from shoal.exceptions import ColumnNotFoundError, UDFReturnTypeError

TABLE = pa.table({"a": np.arange(10), "b": np.arange(10) * 2.0})


@pytest.mark.parametrize("fmt", ["numpy", "pandas", "pyarrow"])
def test_map_batches_gives_the_requested_format(fmt):
    seen = []

    def double(batch):
        seen.append(type(batch))
        if fmt == "pyarrow":
            return batch.set_column(0, "a", pc.multiply(batch["a"], 2))
        batch["a"] = batch["a"] * 2
        return batch
    out = MapBatches(double, fmt)(TABLE)
    assert out.column("a").to_pylist() == list(range(0, 20, 2))
    assert seen[0] is {"numpy": dict, "pandas": pd.DataFrame, "pyarrow": pa.Table}[fmt]


def test_map_batches_batch_size_splits_block():
    sizes = []

    def record(batch):
        sizes.append(len(batch["a"]))
        return batch
    MapBatches(record, batch_size=4)(TABLE)
    assert sizes == [4, 4, 2]


def test_map_batches_passes_fn_args_and_kwargs():
    def shift(batch, k, scale=1):
        return {"a": (batch["a"] + k) * scale}
    out = MapBatches(shift, fn_args=(1,), fn_kwargs={"scale": 3})(TABLE)
    assert out.column("a").to_pylist() == [(i + 1) * 3 for i in range(10)]


def test_map_batches_wrong_return_type_names_function():
    def returns_list(batch):
        return [1, 2, 3]
    with pytest.raises(UDFReturnTypeError, match="returns_list"):
        MapBatches(returns_list)(TABLE)


def test_map_batches_callable_class_is_built_once_per_transform():
    class Counter:
        built = 0

        def __init__(self, offset):
            Counter.built += 1
            self.offset = offset

        def __call__(self, batch):
            return {"a": batch["a"] + self.offset}
    t = MapBatches(Counter, fn_constructor_args=(5,))
    t(TABLE)
    out = t(TABLE)
    assert Counter.built == 1
    assert out.column("a").to_pylist()[0] == 5


def test_map_rows_and_flat_map():
    out = MapRows(lambda r: {"c": r["a"] + r["b"]})(TABLE)
    assert out.column("c").to_pylist() == [i * 3.0 for i in range(10)]
    out = FlatMap(lambda r: [{"a": r["a"]}] * 2)(TABLE.slice(0, 3))
    assert out.column("a").to_pylist() == [0, 0, 1, 1, 2, 2]


def test_map_rows_must_return_dict():
    with pytest.raises(UDFReturnTypeError, match="dict"):
        MapRows(lambda r: r["a"])(TABLE)


def test_filter_by_function_and_by_expression_agree():
    by_fn = Filter(lambda r: r["a"] % 3 == 0)(TABLE)
    by_expr = Filter(expr=pc.field("a") < 4)(TABLE)
    assert by_fn.column("a").to_pylist() == [0, 3, 6, 9]
    assert by_expr.column("a").to_pylist() == [0, 1, 2, 3]


def test_filter_needs_exactly_one_of_fn_or_expr():
    with pytest.raises(ValueError, match="exactly one"):
        Filter()


def test_select_missing_column_names_it():
    with pytest.raises(ColumnNotFoundError, match="'zz'"):
        SelectColumns(["a", "zz"])(TABLE)


def test_column_operations_chain():
    chain = [SelectColumns(["a", "b"]), RenameColumns({"a": "x"}), DropColumns("b"),
             AddColumn("y", lambda df: df["x"] + 1)]
    out = apply_chain(chain, TABLE)
    assert out.column_names == ["x", "y"]
    assert out.column("y").to_pylist() == list(range(1, 11))


def test_add_column_wrong_length_is_rejected():
    with pytest.raises(UDFReturnTypeError, match="3 values"):
        AddColumn("z", lambda df: [1, 2, 3])(TABLE)


def test_transforms_pass_empty_blocks_without_calling_user_code():
    def boom(batch):
        raise AssertionError("called on an empty block")
    empty = TABLE.slice(0, 0)
    assert MapBatches(boom)(empty).num_rows == 0
    assert MapRows(boom)(empty).num_rows == 0
