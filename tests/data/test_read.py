"""Path expansion, read planning and the readers end to end."""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import shoal.data as sd
from shoal.data._read import _group_units, expand_paths, plan_parquet
from shoal.exceptions import DatasetPathError


@pytest.fixture
def parquet_dir(tmp_path):
    rng = np.random.default_rng(0)
    frames = []
    for i in range(3):
        df = pd.DataFrame({"id": np.arange(i * 100, (i + 1) * 100),
                           "x": rng.normal(size=100), "g": rng.integers(0, 4, 100)})
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False),
                       tmp_path / f"part-{i}.parquet", row_group_size=25)
        frames.append(df)
    (tmp_path / "_SUCCESS").write_text("")
    return tmp_path, pd.concat(frames, ignore_index=True)


def test_expand_paths_handles_folder_glob_and_file(parquet_dir):
    folder, _ = parquet_dir
    assert len(expand_paths(str(folder), (".parquet",))) == 3
    assert len(expand_paths(str(folder / "part-*.parquet"), ())) == 3
    assert expand_paths(folder / "part-1.parquet", ()) == [str(folder / "part-1.parquet")]


def test_missing_path_is_named_in_the_error(tmp_path):
    with pytest.raises(DatasetPathError, match="nowhere.parquet"):
        expand_paths(str(tmp_path / "nowhere.parquet"), ())
    with pytest.raises(DatasetPathError, match="matches no file"):
        expand_paths(str(tmp_path / "*.csv"), ())


def test_group_units_balances_and_splits():
    groups = _group_units(list("abcdef"), np.ones(6), 3)
    assert [g for g, _ in groups] == [["a", "b"], ["c", "d"], ["e", "f"]]
    split = _group_units(["a", "b"], np.array([30, 10]), 4)
    assert [k for _, k in split] == [3, 1]


def test_parquet_plan_is_row_group_aware(parquet_dir):
    folder, _ = parquet_dir
    tasks = plan_parquet(str(folder), num_blocks=12)
    assert len(tasks) == 12                      # 3 files x 4 row groups of 25 rows
    assert all(t.num_rows == 25 for t in tasks)
    table = tasks[5]()
    assert table.num_rows == 25 and table.column("id")[0].as_py() == 125


def test_parquet_plan_splits_row_groups_when_asked_for_more_blocks(parquet_dir):
    folder, _ = parquet_dir
    tasks = plan_parquet(str(folder / "part-0.parquet"), num_blocks=8)
    assert sum(t.num_blocks for t in tasks) == 8


def test_read_parquet_matches_pandas(cluster, parquet_dir):
    folder, df = parquet_dir
    ds = sd.read_parquet(str(folder))
    assert ds.count() == len(df)
    pd.testing.assert_frame_equal(ds.to_pandas(), df)


def test_read_parquet_columns_and_filter(cluster, parquet_dir):
    folder, df = parquet_dir
    ds = sd.read_parquet(str(folder), columns=["id", "g"], filter=pc.field("g") == 2,
                         override_num_blocks=5)
    out = ds.to_pandas()
    assert list(out.columns) == ["id", "g"]
    assert out["id"].tolist() == df[df.g == 2]["id"].tolist()
    # The filter may use a column that is not read out.
    out = sd.read_parquet(str(folder), columns=["id"], filter=pc.field("x") > 1.0).to_pandas()
    assert out["id"].tolist() == df[df.x > 1.0]["id"].tolist()


def test_read_csv_folder_with_more_blocks_than_files(cluster, tmp_path):
    df = pd.DataFrame({"a": np.arange(50), "b": [f"s{i}" for i in range(50)]})
    df.iloc[:20].to_csv(tmp_path / "one.csv", index=False)
    df.iloc[20:].to_csv(tmp_path / "two.csv", index=False)
    ds = sd.read_csv(str(tmp_path), override_num_blocks=5)
    assert ds.num_blocks() == 5
    pd.testing.assert_frame_equal(ds.to_pandas(), df)


def test_read_json_lines(cluster, tmp_path):
    rows = [{"a": i, "b": i * 0.5} for i in range(10)]
    (tmp_path / "x.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert sd.read_json(str(tmp_path / "x.jsonl")).take_all() == rows


def test_read_parquet_missing_path_raises_before_running(cluster, tmp_path):
    with pytest.raises(DatasetPathError, match="does not exist"):
        sd.read_parquet(os.path.join(tmp_path, "missing"))
