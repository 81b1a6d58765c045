"""Two-phase aggregation against pandas (no cluster)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from shoal.data import Count, Max, Mean, Min, Std, Sum
from shoal.data._aggregate import combine_partials, partial_aggregate, validate_aggs
from shoal.exceptions import ColumnNotFoundError

AGGS = [Count(), Sum("x"), Mean("x"), Min("x"), Max("x"), Std("x")]


def _run(df, keys, aggs=AGGS, pieces=7):
    table = pa.Table.from_pandas(df, preserve_index=False)
    bounds = np.linspace(0, len(df), pieces + 1).astype(int)
    parts = [partial_aggregate(table.slice(a, b - a), keys, aggs)
             for a, b in zip(bounds[:-1], bounds[1:])]
    return combine_partials(parts, keys, aggs).to_pandas()


def test_grouped_aggregates_match_pandas():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"k": rng.integers(0, 6, 2000), "x": rng.normal(size=2000)})
    out = _run(df, ["k"])
    g = df.groupby("k")["x"]
    np.testing.assert_array_equal(out["k"], sorted(df.k.unique()))
    np.testing.assert_array_equal(out["count()"], g.size().to_numpy())
    for name, ref in [("sum(x)", g.sum()), ("mean(x)", g.mean()), ("min(x)", g.min()),
                      ("max(x)", g.max()), ("std(x)", g.std())]:
        np.testing.assert_allclose(out[name], ref.to_numpy(), rtol=1e-10, err_msg=name)


def test_std_stays_accurate_with_a_large_mean():
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"k": np.zeros(5000, dtype=int), "x": 1e9 + rng.normal(size=5000)})
    out = _run(df, ["k"], [Std("x")], pieces=13)
    np.testing.assert_allclose(out["std(x)"][0], df.x.std(), rtol=1e-6)


def test_global_aggregate_without_keys():
    df = pd.DataFrame({"x": np.arange(100.0)})
    out = _run(df, [])
    assert out["count()"][0] == 100
    assert out["sum(x)"][0] == df.x.sum()
    np.testing.assert_allclose(out["std(x)"][0], df.x.std())


def test_null_values_are_skipped_like_pandas():
    df = pd.DataFrame({"k": [1, 1, 2, 2], "x": [1.0, None, None, None]})
    out = _run(df, ["k"], [Mean("x"), Count("x")], pieces=2)
    assert out["mean(x)"][0] == 1.0 and pd.isna(out["mean(x)"][1])
    assert list(out["count(x)"]) == [1, 0]


def test_multiple_string_keys_sorted_output():
    df = pd.DataFrame({"a": ["b", "a", "b", "a"], "b": ["y", "x", "x", "x"], "x": [1, 2, 3, 4]})
    out = _run(df, ["a", "b"], [Sum("x")], pieces=2)
    ref = df.groupby(["a", "b"]).x.sum().reset_index()
    assert out[["a", "b"]].values.tolist() == ref[["a", "b"]].values.tolist()
    assert out["sum(x)"].tolist() == ref["x"].tolist()


def test_missing_aggregate_column_names_it():
    with pytest.raises(ColumnNotFoundError, match="'nope'"):
        partial_aggregate(pa.table({"x": [1]}), [], [Sum("nope")])


def test_duplicate_aggregate_names_are_rejected():
    with pytest.raises(ValueError, match="alias_name"):
        validate_aggs([Sum("x"), Sum("x")])
