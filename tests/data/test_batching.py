"""map_batches and iter_batches cut batches of exactly ``batch_size`` rows.

Blocks are sliced when bigger than a batch and joined when smaller, so every
call of a task but its last gets ``batch_size`` rows (Ray Data's semantics).
Each test records the size and first row of every call and checks them in
row order.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import shoal.data as sd
from shoal.data._block import BlockMeta
from shoal.data._execution import apply_stage, group_bundles
from shoal.data._transforms import Filter, MapBatches

pytestmark = pytest.mark.usefixtures("cluster")


def record_calls(batch):
    """Each row carries the size and the first id of the call that saw it."""
    ids = batch["id"]
    return {"id": ids, "size": np.full(len(ids), len(ids)), "first": np.full(len(ids), ids[0])}


class RecordCalls:
    def __init__(self, offset=0):
        self.offset = offset

    def __call__(self, batch):
        out = record_calls(batch)
        out["id"] = out["id"] + self.offset
        return out


def call_sizes(out: pd.DataFrame) -> list[int]:
    calls = out.drop_duplicates("first").sort_values("first")
    return calls["size"].tolist()


def tiny_blocks(rows=1000, blocks=100):
    return sd.from_numpy(np.arange(rows)).rename_columns(["id"]).repartition(blocks)


def test_tiny_blocks_are_joined_into_full_batches():
    out = tiny_blocks().map_batches(record_calls, batch_size=64).to_pandas()
    # 10-row blocks join in groups of 7 (70 rows >= 64): one full call and the rest per task.
    assert call_sizes(out) == [64, 6] * 14 + [20]
    np.testing.assert_array_equal(out["id"], np.arange(1000))


def test_blocks_bigger_than_batch_are_sliced():
    ds = sd.from_pandas(pd.DataFrame({"id": np.arange(1000)}), override_num_blocks=2)
    out = ds.map_batches(record_calls, batch_size=128).to_pandas()
    assert call_sizes(out) == [128, 128, 128, 116] * 2
    np.testing.assert_array_equal(out["id"], np.arange(1000))


def test_batch_size_not_dividing_rows_leaves_one_short_call_per_task():
    ds = sd.from_pandas(pd.DataFrame({"id": np.arange(1000)}), override_num_blocks=4)
    out = ds.map_batches(record_calls, batch_size=300).to_pandas()
    assert call_sizes(out) == [300, 200, 300, 200]
    np.testing.assert_array_equal(out["id"], np.arange(1000))


def test_batch_size_none_is_one_call_per_block():
    out = tiny_blocks(blocks=8).map_batches(record_calls, batch_size=None).to_pandas()
    assert call_sizes(out) == [125] * 8


def test_small_read_tasks_are_joined():
    out = sd.range(1000, override_num_blocks=50).map_batches(record_calls,
                                                             batch_size=64).to_pandas()
    assert call_sizes(out) == [64, 16] * 12 + [40]
    np.testing.assert_array_equal(out["id"], np.arange(1000))


def test_callable_class_in_actor_pool_gets_full_batches():
    out = tiny_blocks().map_batches(RecordCalls, batch_size=64, concurrency=2,
                                    fn_constructor_args=(5,)).to_pandas()
    assert call_sizes(out) == [64, 6] * 14 + [20]
    np.testing.assert_array_equal(out["id"], np.arange(1000) + 5)


def test_joined_output_keeps_the_number_of_blocks():
    ds = tiny_blocks(blocks=20).map_batches(record_calls, batch_size=64).materialize()
    assert ds.num_blocks() == 20
    assert ds.count() == 1000


def test_iter_batches_joins_tiny_blocks():
    sizes = [len(b["id"]) for b in tiny_blocks().iter_batches(batch_size=64)]
    assert sizes == [64] * 15 + [40]


def test_iter_batches_slices_big_blocks_in_order():
    ds = sd.from_pandas(pd.DataFrame({"id": np.arange(1000)}), override_num_blocks=2)
    batches = list(ds.iter_batches(batch_size=128, batch_format="pyarrow"))
    assert [b.num_rows for b in batches] == [128] * 7 + [104]
    np.testing.assert_array_equal(np.concatenate([b["id"].to_numpy() for b in batches]),
                                  np.arange(1000))


# ------------------------------------------------------ pure stage pieces ---

def test_group_bundles_reaches_min_rows():
    meta = [BlockMeta(n, 0, pa.schema([])) for n in (10, 50, 5, 100, 3)]
    groups = list(group_bundles([(i, m) for i, m in enumerate(meta)], 60))
    assert [[i for i, _ in g] for g in groups] == [[0, 1], [2, 3], [4]]


def test_apply_stage_filters_each_block_before_joining():
    tables = [pa.table({"id": np.arange(i * 10, i * 10 + 10)}) for i in range(3)]
    chain = [Filter(fn=lambda row: row["id"] % 2 == 0), MapBatches(record_calls, batch_size=4)]
    outs = apply_stage(chain, tables, 3)
    assert len(outs) == 3
    joined = pa.concat_tables(outs).to_pandas()
    np.testing.assert_array_equal(joined["id"], np.arange(0, 30, 2))
    assert call_sizes(joined) == [4, 4, 4, 3]
