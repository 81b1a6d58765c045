"""Plan building: fusion of one-to-one transforms, metadata known without running."""
from __future__ import annotations

import pyarrow as pa

from shoal.data._block import meta_of
from shoal.data._plan import (ActorCompute, BlocksNode, MapNode, ReadNode, add_transform,
                              known_num_rows, known_schema)
from shoal.data._read import plan_range
from shoal.data._transforms import Filter, MapBatches, SelectColumns


def _read():
    return ReadNode(plan_range(100, 4), "range")


def test_read_map_filter_select_fuse_into_one_stage():
    node = _read()
    for t in (MapBatches(lambda b: b), Filter(lambda r: True), SelectColumns(["id"])):
        node = add_transform(node, t)
    assert isinstance(node, MapNode) and isinstance(node.child, ReadNode)
    assert len(node.chain) == 3


def test_different_resources_start_a_new_stage():
    node = add_transform(_read(), MapBatches(lambda b: b))
    node = add_transform(node, MapBatches(lambda b: b), options={"num_cpus": 0.5})
    assert isinstance(node.child, MapNode)


def test_actor_stage_takes_over_the_tasks_before_it_and_after_it():
    class Model:
        def __call__(self, b):
            return b
    node = add_transform(_read(), MapBatches(lambda b: b))
    node = add_transform(node, MapBatches(Model), compute=ActorCompute(2))
    node = add_transform(node, Filter(lambda r: True))
    assert node.compute == ActorCompute(2)
    assert isinstance(node.child, ReadNode) and len(node.chain) == 3


def test_row_count_known_through_column_selection_not_through_filter():
    node = add_transform(_read(), SelectColumns(["id"]))
    assert known_num_rows(node) == 100
    assert known_num_rows(add_transform(node, Filter(lambda r: True))) is None


def test_schema_of_materialized_blocks_skips_empty_ones():
    empty = pa.table({"y": pa.array([], pa.int8())})
    full = pa.table({"x": [1]})
    node = BlocksNode([(None, meta_of(empty)), (None, meta_of(full))])
    assert known_schema(node).names == ["x"]


def test_data_context_rejects_bad_settings():
    import pytest

    from shoal.data import DataContext

    with pytest.raises(ValueError, match="max_tasks_in_flight"):
        DataContext(max_tasks_in_flight=0)
