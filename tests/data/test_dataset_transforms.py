"""Dataset transforms end to end, each checked against pandas on the same data."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pytest

import shoal
import shoal.data as sd
from shoal.exceptions import ColumnNotFoundError, UDFReturnTypeError

pytestmark = pytest.mark.usefixtures("cluster")


@pytest.fixture(scope="module")
def frame():
    rng = np.random.default_rng(42)
    return pd.DataFrame({"id": np.arange(1000), "g": rng.integers(0, 7, 1000),
                         "x": rng.normal(size=1000), "s": rng.choice(["a", "b", "c"], 1000)})


@pytest.fixture
def ds(frame):
    return sd.from_pandas(frame, override_num_blocks=5)


def test_map_batches_numpy_matches_pandas(ds, frame):
    out = ds.map_batches(lambda b: {"id": b["id"], "y": b["x"] * 2 + 1}).to_pandas()
    np.testing.assert_allclose(out["y"], frame.x * 2 + 1)


def test_map_batches_pandas_format_with_batch_size(ds, frame):
    def center(df):
        df["x"] = df["x"] - 1.0
        return df
    out = ds.map_batches(center, batch_format="pandas", batch_size=64).to_pandas()
    pd.testing.assert_series_equal(out["x"], frame.x - 1.0)


def test_map_and_flat_map_match_pandas(ds, frame):
    out = ds.map(lambda r: {"id": r["id"], "z": r["g"] * 10}).to_pandas()
    assert out["z"].tolist() == (frame.g * 10).tolist()
    out = ds.limit(10).flat_map(lambda r: [{"id": r["id"]}, {"id": -r["id"]}]).to_pandas()
    assert len(out) == 20 and out["id"].tolist()[:4] == [0, 0, 1, -1]


def test_filter_fn_and_expr_match_pandas(ds, frame):
    ref = frame[frame.x > 0.5]
    assert ds.filter(lambda r: r["x"] > 0.5).to_pandas()["id"].tolist() == ref.id.tolist()
    assert ds.filter(expr=pc.field("x") > 0.5).to_pandas()["id"].tolist() == ref.id.tolist()


def test_column_operations_match_pandas(ds, frame):
    out = (ds.select_columns(["id", "x", "s"]).drop_columns("s")
             .rename_columns({"x": "value"})
             .add_column("double", lambda df: df["value"] * 2).to_pandas())
    ref = frame[["id", "x"]].rename(columns={"x": "value"})
    ref["double"] = ref["value"] * 2
    pd.testing.assert_frame_equal(out, ref)


def test_chained_transforms_run_as_one_stage(ds):
    out = ds.map_batches(lambda b: b).filter(expr=pc.field("g") > 2).select_columns(["id"])
    out.materialize()
    lines = out.stats().splitlines()
    assert len(lines) == 1
    assert "<lambda>)->filter((g > 2))->select_columns(['id']): 5 blocks" in lines[0]


def test_limit_union_match_pandas(ds, frame):
    assert ds.limit(123).to_pandas()["id"].tolist() == list(range(123))
    both = ds.limit(5).union(ds.limit(3))
    assert both.to_pandas()["id"].tolist() == [0, 1, 2, 3, 4, 0, 1, 2]


def test_callable_class_runs_on_an_actor_pool_and_loads_once(ds):
    class Tagger:
        def __init__(self, offset):
            import os
            self.pid = os.getpid()
            self.offset = offset

        def __call__(self, batch):
            return {"id": batch["id"] + self.offset,
                    "pid": np.full(len(batch["id"]), self.pid)}
    out = ds.map_batches(Tagger, fn_constructor_args=(1000,), concurrency=2,
                         batch_size=50).to_pandas()
    assert out["id"].tolist() == list(range(1000, 2000))
    assert 1 <= out["pid"].nunique() <= 2


def test_function_concurrency_limits_its_stage(ds, frame):
    out = ds.map_batches(lambda b: {"id": b["id"] * 2}, concurrency=1)
    assert out.to_pandas()["id"].tolist() == (frame.id * 2).tolist()
    with pytest.raises(ValueError, match="concurrency"):
        ds.map_batches(lambda b: b, concurrency=0)


def test_user_function_error_reaches_caller_with_its_type(ds):
    def fails(batch):
        raise ValueError("bad row in batch")
    with pytest.raises(ValueError, match="bad row in batch"):
        ds.map_batches(fails).take_all()


def test_select_missing_column_names_column_before_running(ds):
    with pytest.raises(ColumnNotFoundError, match="'nope'"):
        ds.select_columns(["id", "nope"])


def test_missing_column_in_lazy_plan_fails_at_execution_naming_it():
    lazy = sd.range(10, override_num_blocks=2).select_columns(["missing"])
    with pytest.raises(ColumnNotFoundError, match="'missing'"):
        lazy.take_all()


def test_map_batches_returning_wrong_type_names_function(ds):
    def bad_udf(batch):
        return 42
    with pytest.raises(UDFReturnTypeError, match="bad_udf"):
        ds.map_batches(bad_udf).take_all()


def test_union_with_mismatched_schema_is_rejected(ds):
    other = sd.from_items([{"id": "text"}])
    with pytest.raises(sd.SchemaMismatchError if hasattr(sd, "SchemaMismatchError")
                       else shoal.exceptions.SchemaMismatchError, match="'id'"):
        ds.select_columns(["id"]).union(other).take_all()


def test_an_actor_of_the_pool_that_dies_is_restarted_and_its_batches_redone(ds, frame, tmp_path):
    marker = str(tmp_path / "died")

    class DiesOnce:
        def __init__(self, marker):
            self.marker = marker

        def __call__(self, batch):
            import os
            if batch["id"][0] >= 500 and not os.path.exists(self.marker):
                open(self.marker, "w").close()
                os._exit(1)              # the actor's process dies mid-stage
            return {"id": batch["id"] * 2}
    out = ds.map_batches(DiesOnce, fn_constructor_args=(marker,), concurrency=2,
                         batch_size=100).to_pandas()
    assert (tmp_path / "died").exists()
    assert sorted(out["id"].tolist()) == (frame.id * 2).tolist()


def test_an_actor_that_keeps_dying_fails_the_dataset_with_a_clear_error(ds):
    class AlwaysDies:
        def __call__(self, batch):
            import os
            os._exit(1)
    from shoal.exceptions import ActorDiedError
    with pytest.raises(ActorDiedError):
        ds.map_batches(AlwaysDies, concurrency=1).take_all()


def test_an_error_raised_in_a_pool_actor_is_not_retried(ds, tmp_path):
    calls = tmp_path / "calls"

    class Raises:
        def __call__(self, batch):
            with open(calls, "a") as f:
                f.write("x")
            raise ValueError("bad batch")
    with pytest.raises(ValueError, match="bad batch"):
        ds.map_batches(Raises, concurrency=1, batch_size=1000).take_all()
    assert calls.read_text() == "x"          # raised once: a user error is not a lost actor
