"""All-to-all operators end to end against pandas: sort, groupby, shuffle, repartition."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import shoal.data as sd
from shoal.exceptions import ColumnNotFoundError

pytestmark = pytest.mark.usefixtures("cluster")


@pytest.fixture(scope="module")
def frame():
    rng = np.random.default_rng(7)
    x = rng.normal(size=2000)
    x[::97] = np.nan
    return pd.DataFrame({"id": np.arange(2000), "g": rng.integers(0, 9, 2000),
                         "s": rng.choice(["ant", "bee", "cat", "dog"], 2000), "x": x})


@pytest.fixture
def ds(frame):
    return sd.from_pandas(frame, override_num_blocks=6)


def test_sort_single_key_matches_pandas(ds, frame):
    out = ds.sort("x").to_pandas()
    ref = frame.sort_values("x", kind="stable", na_position="last")
    np.testing.assert_array_equal(out["x"].to_numpy(), ref["x"].to_numpy())


def test_sort_descending_multi_key_matches_pandas(ds, frame):
    out = ds.sort(["s", "id"], descending=[True, False]).to_pandas()
    ref = frame.sort_values(["s", "id"], ascending=[False, True])
    assert out["id"].tolist() == ref["id"].tolist()


def test_sort_missing_key_names_it(ds):
    with pytest.raises(ColumnNotFoundError, match="'nope'"):
        ds.sort("nope")


def test_groupby_aggregates_match_pandas(ds, frame):
    out = ds.groupby("g").aggregate(sd.Count(), sd.Sum("x"), sd.Mean("x"), sd.Min("x"),
                                    sd.Max("x"), sd.Std("x")).to_pandas()
    g = frame.groupby("g")["x"]
    assert out["g"].tolist() == sorted(frame.g.unique())
    assert out["count()"].tolist() == g.size().tolist()
    for name, ref in [("sum(x)", g.sum()), ("mean(x)", g.mean()), ("min(x)", g.min()),
                      ("max(x)", g.max()), ("std(x)", g.std())]:
        np.testing.assert_allclose(out[name].to_numpy(), ref.to_numpy(), rtol=1e-9,
                                   err_msg=name)


def test_groupby_shortcuts_and_string_keys(ds, frame):
    out = ds.groupby(["s", "g"]).count().to_pandas()
    ref = frame.groupby(["s", "g"]).size().reset_index(name="count()")
    pd.testing.assert_frame_equal(out, ref)
    means = ds.groupby("s").mean("id").to_pandas()
    np.testing.assert_allclose(means["mean(id)"], frame.groupby("s").id.mean().to_numpy())


def test_groupby_missing_key_names_it(ds):
    with pytest.raises(ColumnNotFoundError, match="'nope'"):
        ds.groupby("nope")


def test_map_groups_sees_whole_groups(ds, frame):
    def summarize(batch):
        return {"g": batch["g"][:1], "n": np.array([len(batch["g"])])}
    out = ds.groupby("g").map_groups(summarize).to_pandas()
    assert out["n"].tolist() == frame.groupby("g").size().tolist()


def test_global_aggregates_match_pandas(ds, frame):
    assert ds.sum("id") == frame.id.sum()
    assert ds.min("id") == 0 and ds.max("id") == 1999
    np.testing.assert_allclose(ds.mean("x"), frame.x.mean())
    np.testing.assert_allclose(ds.std("x"), frame.x.std())
    assert ds.unique("s") == ["ant", "bee", "cat", "dog"]


def test_random_shuffle_is_a_seeded_permutation(ds, frame):
    a = ds.random_shuffle(seed=3).to_pandas()["id"].tolist()
    b = ds.random_shuffle(seed=3).to_pandas()["id"].tolist()
    assert a == b
    assert a != frame.id.tolist()
    assert sorted(a) == frame.id.tolist()


def test_repartition_keeps_order_and_balances(ds, frame):
    parts = ds.repartition(4).materialize()
    assert parts.num_blocks() == 4
    assert [m.num_rows for _, m in parts._block_bundles()] == [500] * 4
    assert parts.to_pandas()["id"].tolist() == frame.id.tolist()


def test_repartition_with_shuffle_keeps_all_rows(ds, frame):
    parts = ds.repartition(3, shuffle=True).materialize()
    assert parts.num_blocks() == 3
    assert sorted(parts.to_pandas()["id"].tolist()) == frame.id.tolist()


def test_sort_and_shuffle_carry_tensor_columns():
    rng = np.random.default_rng(0)
    images, keys = rng.random((60, 3, 2)), rng.permutation(60)
    ds = sd.from_numpy({"img": images, "k": keys}, override_num_blocks=4)
    out = ds.sort("k").to_numpy()
    np.testing.assert_array_equal(out["img"], images[np.argsort(keys)])
    shuffled = ds.random_shuffle(seed=0).to_numpy()
    np.testing.assert_array_equal(shuffled["img"], images[np.argsort(keys)][shuffled["k"]])
