"""shoal.data.Dataset.to_tf / iter_tf_batches (in a rank process, where TensorFlow is)."""
import pytest

pytestmark = pytest.mark.timeout(600)


def _to_tf(comm):
    import numpy as np
    import pandas as pd
    import tensorflow as tf
    import shoal
    import shoal.data as sd
    shoal.init(num_cpus=1)
    try:
        return _to_tf_checks(np, pd, tf, sd)
    finally:
        shoal.shutdown()


def _to_tf_checks(np, pd, tf, sd):
    df = pd.DataFrame({"a": np.arange(10, dtype=np.float32), "b": np.arange(10) * 2,
                       "y": np.arange(10) % 2})
    ds = sd.from_pandas(df)
    batches = list(ds.iter_tf_batches(batch_size=4, dtypes={"b": tf.float32}))
    full = ds.to_tf(["a", "b"], "y", batch_size=4)
    got = [(f["a"].numpy().tolist(), y.numpy().tolist()) for f, y in full]
    shards = [[x.numpy().tolist() for x in ds.to_tf("a", batch_size=2, rank=r, world_size=2)]
              for r in range(2)]
    try:
        ds.to_tf("nope")
        missing = None
    except Exception as e:  # noqa: BLE001
        missing = f"{type(e).__name__}: {e}"
    return ([b["b"].dtype.name for b in batches], [len(b["a"]) for b in batches], got, shards,
            missing)


def test_to_tf_and_iter_tf_batches_with_per_rank_shards(tf_pool):
    dtypes, sizes, got, shards, missing = tf_pool.run(_to_tf, 1)[0]
    assert dtypes == ["float32"] * 3 and sizes == [4, 4, 2]
    assert got[0] == ([0.0, 1.0, 2.0, 3.0], [0, 1, 0, 1]) and len(got) == 3
    flat = [v for shard in shards for batch in shard for v in batch]
    assert sorted(flat) == [float(i) for i in range(10)]          # each row in one shard
    assert len(shards[0]) == len(shards[1])                         # equal parts
    assert missing is not None and "nope" in missing
