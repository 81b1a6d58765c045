"""Consumers end to end: counts, takes, conversions, iterators, splits, writers."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import shoal
import shoal.data as sd

pytestmark = pytest.mark.usefixtures("cluster")


@pytest.fixture(scope="module")
def frame():
    rng = np.random.default_rng(1)
    return pd.DataFrame({"id": np.arange(1000), "x": rng.normal(size=1000).astype(np.float32),
                         "s": rng.choice(["a", "b"], 1000)})


@pytest.fixture
def ds(frame):
    return sd.from_pandas(frame, override_num_blocks=4)


def test_count_schema_columns(ds, frame):
    assert ds.count() == 1000
    assert ds.columns() == ["id", "x", "s"]
    assert ds.schema().field("x").type == pa.float32()
    lazy = ds.map_batches(lambda b: {"y": b["x"]})
    assert lazy.schema().names == ["y"]


def test_take_take_all_take_batch(ds, frame):
    assert ds.take(2) == frame.iloc[:2].to_dict("records")
    assert len(ds.take_all()) == 1000
    batch = ds.take_batch(5)
    np.testing.assert_array_equal(batch["id"], np.arange(5))
    with pytest.raises(ValueError, match="more than 10 rows"):
        ds.take_all(limit=10)


def test_to_numpy_and_to_arrow(ds, frame):
    arrays = ds.to_numpy()
    np.testing.assert_array_equal(arrays["x"], frame.x.to_numpy())
    np.testing.assert_array_equal(ds.to_numpy("id"), frame.id.to_numpy())
    assert ds.to_arrow().num_rows == 1000


def test_iter_batches_exact_sizes_in_order(ds):
    batches = list(ds.iter_batches(batch_size=300))
    assert [len(b["id"]) for b in batches] == [300, 300, 300, 100]
    np.testing.assert_array_equal(np.concatenate([b["id"] for b in batches]), np.arange(1000))
    dropped = list(ds.iter_batches(batch_size=300, drop_last=True, batch_format="pandas"))
    assert [len(b) for b in dropped] == [300, 300, 300]


def test_iter_batches_local_shuffle_keeps_rows(ds):
    ids = np.concatenate([b["id"] for b in ds.iter_batches(
        batch_size=100, local_shuffle_buffer_size=200, local_shuffle_seed=0)])
    assert sorted(ids.tolist()) == list(range(1000)) and ids.tolist() != list(range(1000))


def test_iter_torch_batches_dtypes(ds):
    torch = pytest.importorskip("torch")
    batch = next(iter(ds.select_columns(["id", "x"]).iter_torch_batches(
        batch_size=64, dtypes={"x": torch.float64})))
    assert batch["x"].dtype == torch.float64 and batch["id"].dtype == torch.int64
    assert batch["id"].shape == (64,)


def test_iter_rows(ds):
    rows = list(ds.limit(3).iter_rows())
    assert [r["id"] for r in rows] == [0, 1, 2]


def test_split_equal_gives_equal_rows_in_order(ds):
    splits = ds.split(3, equal=True)
    assert [s.count() for s in splits] == [333, 333, 333]
    assert splits[1].take(1)[0]["id"] == 333


def test_split_unequal_moves_whole_blocks(ds):
    splits = ds.split(2)
    assert [s.count() for s in splits] == [500, 500]
    split_refs = [r for s in splits for r in s.get_internal_block_refs()]
    assert split_refs == ds.get_internal_block_refs()


def test_split_more_ways_than_blocks(ds):
    splits = ds.split(6)
    assert sum(s.count() for s in splits) == 1000 and min(s.count() for s in splits) > 0


def test_train_test_split_fraction_and_shuffle(ds):
    train, test = ds.train_test_split(0.25)
    assert (train.count(), test.count()) == (750, 250)
    assert test.take(1)[0]["id"] == 750
    train, test = ds.train_test_split(100, shuffle=True, seed=0)
    ids = [r["id"] for r in train.take_all()] + [r["id"] for r in test.take_all()]
    assert sorted(ids) == list(range(1000)) and test.count() == 100


def test_write_parquet_and_csv_round_trip(ds, frame, tmp_path):
    files = ds.write_parquet(str(tmp_path / "pq"))
    assert len(files) == 4 and all(os.path.exists(f) for f in files)
    pd.testing.assert_frame_equal(sd.read_parquet(str(tmp_path / "pq")).to_pandas(), frame)
    ds.write_csv(str(tmp_path / "csv"))
    back = sd.read_csv(str(tmp_path / "csv")).to_pandas()
    np.testing.assert_allclose(back["x"], frame["x"], rtol=1e-6)
    ds.limit(5).write_json(str(tmp_path / "js"))
    assert sd.read_json(str(tmp_path / "js")).count() == 5


def test_block_refs_round_trip(ds, frame):
    refs = ds.get_internal_block_refs()
    assert all(isinstance(shoal.get(r), pa.Table) for r in refs)
    again = sd.Dataset.from_block_refs(refs)
    assert again.count() == 1000 and again.num_blocks() == 4
    assert ds._block_refs() == refs


def test_size_bytes_stats_and_repr(ds):
    assert ds.size_bytes() > 1000 * 12
    lazy = ds.map_batches(lambda b: b)
    assert "not executed" in lazy.stats()
    mat = lazy.materialize()
    assert "map_batches" in mat.stats() and "1,000 rows" in mat.stats()
    assert "num_rows=1000" in repr(mat)


def test_splits_are_consumed_inside_tasks_like_training_workers(ds, frame):
    @shoal.remote
    def consume(shard):
        return sum(int(b["id"].sum()) for b in shard.iter_batches(batch_size=100))
    shards = ds.split(2, equal=True)
    assert shoal.get([consume.remote(s) for s in shards]) == [
        int(frame.id[:500].sum()), int(frame.id[500:].sum())]
    lazy = ds.map_batches(lambda b: {"id": b["id"] + 1})
    assert shoal.get(consume.remote(lazy)) == int((frame.id + 1).sum())


def test_streaming_split_shares_rows_between_consumers_over_epochs():
    ds = sd.range(400, override_num_blocks=8).map_batches(lambda b: {"id": b["id"] * 2})

    @shoal.remote
    def consume(it, epochs):
        return [[int(i) for b in it.iter_batches(batch_size=None) for i in b["id"]]
                for _ in range(epochs)]
    a, b = ds.streaming_split(2)
    got_a, got_b = shoal.get([consume.remote(a, 2), consume.remote(b, 2)])
    for epoch in range(2):
        ids = got_a[epoch] + got_b[epoch]
        assert sorted(ids) == list(range(0, 800, 2))
    with pytest.raises(ValueError, match="split"):
        ds.streaming_split(2, equal=True)


def test_show_prints_rows(ds, capsys):
    ds.show(2)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and "'id': 1" in lines[1]


def test_empty_result_keeps_working(ds):
    empty = ds.filter(expr=pc.field("id") < 0)
    assert empty.count() == 0
    assert empty.take_all() == []
    assert list(empty.iter_batches(batch_size=10)) == []
    assert empty.sort("id").count() == 0
