"""Sort and groupby on several keys: boundaries are key tuples, so a skewed first key
still spreads over the output blocks, and results match pandas."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import shoal.data as sd
from shoal.data._aggregate import sort_table
from shoal.data._shuffle import choose_tuple_boundaries, tuple_partition_ids

pytestmark = pytest.mark.usefixtures("cluster")


@pytest.fixture(scope="module")
def skewed():
    rng = np.random.default_rng(7)
    n = 4000
    a = np.where(rng.random(n) < 0.9, 0, rng.integers(1, 4, n))   # 90% of rows share a = 0
    return pd.DataFrame({"a": a, "b": rng.permutation(n), "s": rng.choice(["x", "y"], n),
                         "v": rng.normal(size=n)})


def test_multi_key_sort_with_skewed_first_key_matches_pandas(skewed):
    out = sd.from_pandas(skewed, override_num_blocks=8).sort(["a", "b"]).to_pandas()
    ref = skewed.sort_values(["a", "b"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(out, ref)


def test_multi_key_sort_with_skewed_first_key_is_balanced(skewed):
    ds = sd.from_pandas(skewed, override_num_blocks=8).sort(["a", "b"]).materialize()
    rows = [meta.num_rows for _, meta in ds._bundles()]
    # one hot value of "a" would put 90% of the rows in one block; tuples split it by "b"
    assert max(rows) < 0.4 * len(skewed)


def test_multi_key_sort_descending_mix_matches_pandas(skewed):
    ds = sd.from_pandas(skewed, override_num_blocks=6)
    out = ds.sort(["a", "s", "b"], descending=[True, False, True]).to_pandas()
    ref = skewed.sort_values(["a", "s", "b"], ascending=[False, True, False]).reset_index(drop=True)
    pd.testing.assert_frame_equal(out, ref)


def test_multi_key_groupby_with_skewed_first_key_matches_pandas(skewed):
    df = skewed.assign(b=skewed.b % 50)
    out = sd.from_pandas(df, override_num_blocks=8).groupby(["a", "b"]).aggregate(
        sd.Count(), sd.Sum("v")).to_pandas()
    ref = df.groupby(["a", "b"]).agg(n=("v", "size"), total=("v", "sum")).reset_index()
    assert out[["a", "b"]].values.tolist() == ref[["a", "b"]].values.tolist()
    np.testing.assert_array_equal(out["count()"], ref["n"])
    np.testing.assert_allclose(out["sum(v)"], ref["total"])


def test_multi_key_map_groups_sees_whole_groups(skewed):
    df = skewed.assign(b=skewed.b % 20)
    out = sd.from_pandas(df, override_num_blocks=8).groupby(["a", "b"]).map_groups(
        lambda g: {"a": g["a"][:1], "b": g["b"][:1], "n": np.array([len(g["a"])])}).to_pandas()
    ref = df.groupby(["a", "b"]).size().reset_index(name="n")
    assert out.values.tolist() == ref.values.tolist()


# ------------------------------------------------------------- pure parts ---

def test_tuple_partition_ids_put_ties_right_and_nulls_last():
    boundaries = pa.table({"a": [0, 0, 2], "b": [5, 9, 1]})
    rows = pa.table({"a": [0, 0, 0, 1, 2, None, 3], "b": [1, 5, 9, 0, 1, 0, 0]})
    ids = tuple_partition_ids(rows, ["a", "b"], boundaries, False)
    assert ids.tolist() == [0, 1, 2, 2, 3, 3, 3]


def test_choose_tuple_boundaries_are_distinct_and_sorted():
    sample = pa.table({"a": [0] * 90 + [1] * 10, "b": list(range(100))})
    bounds = choose_tuple_boundaries([sample.slice(0, 50), sample.slice(50)], ["a", "b"], 4, False)
    assert bounds.num_rows == 3
    assert sort_table(bounds, ["a", "b"]).equals(bounds)
    assert bounds.column("a").to_pylist() == [0, 0, 0]
