"""Streaming execution: bounded windows, larger-than-store datasets, progress output."""
from __future__ import annotations

import os
import time

import pytest

import shoal
import shoal.data as sd
from shoal.data import DataContext

STORE_BYTES = 48 * 2**20


@pytest.fixture(scope="module")
def small_store():
    """A cluster whose object store is far smaller than the datasets below."""
    if shoal.is_initialized():
        shoal.shutdown()
    shoal.init(num_cpus=2, object_store_memory=STORE_BYTES)
    try:
        yield
    finally:
        shoal.shutdown()


def test_window_bounds_tasks_in_flight(small_store, tmp_path):
    DataContext.get_current().max_tasks_in_flight = 2
    marks = str(tmp_path)

    def mark(batch):
        open(os.path.join(marks, f"{int(batch['id'][0])}"), "w").close()
        time.sleep(0.05)
        return batch
    ds = sd.range(200, override_num_blocks=20).map_batches(mark)
    it = ds.iter_batches(batch_size=None, prefetch_batches=0)
    next(it)
    assert len(os.listdir(marks)) <= 2
    assert sum(len(b["id"]) for b in it) == 190
    assert len(os.listdir(marks)) == 20


@pytest.mark.slow
def test_dataset_larger_than_object_store_streams(small_store):
    # 40 blocks of 4 MiB = 160 MiB through a 48 MiB store.
    ds = sd.range_tensor(20480, shape=(32, 32), override_num_blocks=40).map_batches(
        lambda b: {"data": b["data"] * 2})
    rows, total = 0, 0
    for batch in ds.iter_batches(batch_size=1000):
        rows += len(batch["data"])
        total += int(batch["data"][:, 0, 0].sum())
    assert rows == 20480
    assert total == 2 * sum(range(20480))


@pytest.mark.slow
def test_materialize_larger_than_object_store_spills(small_store):
    ds = sd.range_tensor(12288, shape=(32, 32), override_num_blocks=24).materialize()
    assert ds.size_bytes() >= 2 * STORE_BYTES
    assert ds.count() == 12288
    last = ds.split_at_indices([12287])[1].to_numpy("data")
    assert last.shape == (1, 32, 32) and last[0, 5, 5] == 12287


def test_progress_line_forced_on_by_env(small_store, capfd, monkeypatch):
    monkeypatch.setenv("SHOAL_DATA_PROGRESS", "1")
    DataContext.get_current().progress_after_s = 0.0
    sd.range(100, override_num_blocks=4).map_batches(lambda b: b).materialize()
    assert "blocks" in capfd.readouterr().err


def test_no_progress_output_when_not_a_terminal(small_store, capfd, monkeypatch):
    monkeypatch.delenv("SHOAL_DATA_PROGRESS", raising=False)
    DataContext.get_current().progress_after_s = 0.0
    sd.range(100, override_num_blocks=4).map_batches(lambda b: b).materialize()
    assert "blocks" not in capfd.readouterr().err


def test_progress_line_counts_blocks_and_rows():
    import io

    from shoal.data._progress import ProgressLine

    out = io.StringIO()
    line = ProgressLine("read->map", total=4, enabled=True, after_s=0.0, stream=out)
    for _ in range(4):
        line._last = 0.0
        line.update(1, 25)
    line.close()
    text = out.getvalue()
    assert "read->map: 4/4 blocks, 100 rows" in text and text.endswith("\n")
    quiet = io.StringIO()
    silent = ProgressLine("x", None, enabled=False, stream=quiet)
    silent.update(1, 1)
    silent.close()
    assert quiet.getvalue() == ""
