"""Dataset.join against pandas.merge, zip and random_sample."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import shoal.data as sd
from shoal.data._join import hash_partition_ids
from shoal.exceptions import ColumnNotFoundError, SchemaMismatchError

pytestmark = pytest.mark.usefixtures("cluster")


@pytest.fixture(scope="module")
def frames():
    rng = np.random.default_rng(3)
    left = pd.DataFrame({"k": rng.integers(0, 400, 3000), "g": rng.choice(["a", "b", "c"], 3000),
                         "v": rng.normal(size=3000), "a": rng.integers(0, 9, 3000)})
    right = pd.DataFrame({"k": rng.integers(150, 600, 900).astype(np.int32),
                          "g": rng.choice(["a", "b", "d"], 900), "v": rng.normal(size=900),
                          "b": rng.choice(["x", "y", "z"], 900)})
    return left, right


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(list(df.columns), na_position="last").reset_index(drop=True)


def _same(out: pd.DataFrame, ref: pd.DataFrame) -> None:
    assert list(out.columns) == list(ref.columns)
    out, ref = _sorted(out), _sorted(ref)
    assert len(out) == len(ref)
    for c in ref.columns:
        if ref[c].dtype.kind in "fiu":
            np.testing.assert_allclose(out[c].to_numpy(float), ref[c].to_numpy(float))
        else:
            assert out[c].tolist() == ref[c].tolist(), c


@pytest.mark.parametrize("how", ["inner", "left", "right", "outer"])
def test_join_matches_pandas_merge(frames, how):
    left, right = frames
    ds = sd.from_pandas(left, override_num_blocks=4).join(
        sd.from_pandas(right, override_num_blocks=3), on="k", how=how, num_partitions=5)
    _same(ds.to_pandas(), left.merge(right, on="k", how=how))
    assert ds.num_blocks() == 5


@pytest.mark.parametrize("how", ["inner", "outer"])
def test_join_on_two_keys_with_a_string_key(frames, how):
    left, right = frames
    ds = sd.from_pandas(left, override_num_blocks=3).join(
        sd.from_pandas(right, override_num_blocks=2), on=["k", "g"], how=how)
    _same(ds.to_pandas(), left.merge(right, on=["k", "g"], how=how))


def test_semi_and_anti_join_keep_left_rows(frames):
    left, right = frames
    dl, dr = sd.from_pandas(left, override_num_blocks=3), sd.from_pandas(right)
    matched = left["k"].isin(right["k"])
    _same(dl.join(dr, on="k", how="semi").to_pandas(), left[matched])
    _same(dl.join(dr, on="k", how="anti").to_pandas(), left[~matched])


def test_null_keys_match_nothing_as_in_spark():
    left = sd.from_arrow(pa.table({"k": [1, None, 2], "x": [1, 2, 3]}))
    right = sd.from_arrow(pa.table({"k": [None, 2], "y": [10, 20]}))
    assert left.join(right, on="k").take_all() == [{"k": 2, "x": 3, "y": 20}]
    assert left.join(right, on="k", how="outer").count() == 4  # both nulls kept, unmatched


def test_join_key_of_different_types_names_the_column():
    left = sd.from_pandas(pd.DataFrame({"id": [1, 2], "x": [1.0, 2.0]}))
    right = sd.from_pandas(pd.DataFrame({"id": ["1", "2"], "y": [3.0, 4.0]}))
    with pytest.raises(SchemaMismatchError, match="'id'.*int64.*string"):
        left.join(right, on="id").to_pandas()


def test_join_int_and_float_keys_compare_as_numbers():
    left = sd.from_pandas(pd.DataFrame({"id": [1, 2, 3], "x": [1, 2, 3]}))
    right = sd.from_pandas(pd.DataFrame({"id": [2.0, 3.0, 3.5], "y": [5, 6, 7]}))
    out = left.join(right, on="id").to_pandas().sort_values("id")
    assert out["x"].tolist() == [2, 3] and out["y"].tolist() == [5, 6]


def test_join_missing_key_and_bad_arguments():
    ds = sd.from_pandas(pd.DataFrame({"id": [1], "x": [1]}))
    with pytest.raises(ColumnNotFoundError, match="'nope'.*join"):
        ds.join(ds, on="nope")
    with pytest.raises(ValueError, match="how='cross'"):
        ds.join(ds, on="id", how="cross")


def test_hash_partition_depends_only_on_key_values():
    a = pa.table({"k": pa.array([5, -1, 7, 5], pa.int64()), "s": ["p", "q", "p", "p"]})
    b = pa.table({"k": pa.array([5, 7], pa.int64()), "s": ["p", "p"]})
    ia, ib = hash_partition_ids(a, ["k", "s"], 8), hash_partition_ids(b, ["k", "s"], 8)
    assert ia[0] == ia[3] == ib[0] and ia[2] == ib[1]
    spread = hash_partition_ids(pa.table({"k": np.arange(8000)}), ["k"], 8)
    assert np.bincount(spread, minlength=8).min() > 800  # consecutive ids spread evenly


def test_zip_puts_columns_side_by_side_across_different_blocks():
    a = sd.from_pandas(pd.DataFrame({"x": np.arange(100)}), override_num_blocks=3)
    b = sd.from_pandas(pd.DataFrame({"x": np.arange(100) * 2, "y": np.arange(100)}),
                       override_num_blocks=4)
    out = a.zip(b).to_pandas()
    assert list(out.columns) == ["x", "x_1", "y"]
    assert (out["x_1"] == 2 * out["x"]).all() and (out["y"] == out["x"]).all()
    with pytest.raises(ValueError, match="same number of rows"):
        a.zip(b.limit(50)).to_pandas()


def test_random_sample_is_reproducible_with_a_seed():
    ds = sd.range(20000, override_num_blocks=4)
    first = ds.random_sample(0.1, seed=5).to_numpy("id")
    assert 1600 < len(first) < 2400
    np.testing.assert_array_equal(first, ds.random_sample(0.1, seed=5).to_numpy("id"))
    assert ds.random_sample(0.0).count() == 0 and ds.random_sample(1.0).count() == 20000
    with pytest.raises(ValueError, match="fraction"):
        ds.random_sample(1.5)

