"""from_spark / Dataset.to_spark against a real local Spark session (slow: Spark starts)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import shoal.data as sd

pytestmark = [pytest.mark.usefixtures("cluster"), pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def spark():
    pytest.importorskip("pyspark")
    from pyspark.sql import SparkSession

    session = (SparkSession.builder.master("local[1]").appName("shoal-test-exchange")
               .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
               .config("spark.sql.shuffle.partitions", "2").getOrCreate())
    try:
        yield session
    finally:
        session.stop()


def test_a_spark_dataframe_round_trips_through_arrow(spark):
    frame = pd.DataFrame({"id": np.arange(1000), "x": np.linspace(0, 1, 1000),
                          "s": ["a", "b"] * 500})
    ds = sd.from_spark(spark.createDataFrame(frame).filter("id % 2 = 0"), override_num_blocks=3)
    assert ds.num_blocks() == 3 and ds.count() == 500
    out = ds.to_pandas().sort_values("id").reset_index(drop=True)
    expected = frame[frame["id"] % 2 == 0].reset_index(drop=True)
    pd.testing.assert_frame_equal(out, expected, check_dtype=False)
    back = ds.map_batches(lambda b: {**b, "y": b["x"] * 2}).to_spark(spark)
    assert back.columns == ["id", "x", "s", "y"]
    row = back.filter("id = 10").first()
    assert row["y"] == pytest.approx(2 * frame["x"][10]) and row["s"] == "a"


def test_a_vector_column_becomes_a_spark_array(spark):
    ds = sd.from_numpy(np.arange(12.0).reshape(4, 3))
    rows = ds.to_spark(spark).collect()
    assert [list(r[0]) for r in rows][1] == [3.0, 4.0, 5.0]


def test_read_libsvm_reads_sparks_sample_data_as_spark_does(spark):
    import os

    import pyspark

    path = os.path.join(os.path.dirname(pyspark.__file__), "data", "mllib",
                        "sample_libsvm_data.txt")
    if not os.path.exists(path):
        pytest.skip(f"{path} is not shipped with this pyspark")
    ours = sd.read_libsvm(path).take_all()
    theirs = spark.read.format("libsvm").load(path).collect()
    assert len(ours) == len(theirs) == 100
    np.testing.assert_array_equal([r["label"] for r in ours], [r["label"] for r in theirs])
    np.testing.assert_array_equal(np.stack([r["features"] for r in ours]),
                                  np.stack([r["features"].toArray() for r in theirs]))
