"""Iterative fits on the cluster keep their blocks on shard actors across passes."""
from __future__ import annotations

import os

import numpy as np
import pytest
from sklearn.datasets import make_classification

import shoal
import shoal.ml as ml
from shoal.ml import _executor as E
from shoal.ml._input import as_design_matrix
from shoal.ml._kernels import _block_lloyd, _logistic_block

from _cluster import cluster  # noqa: F401  (module-scoped fixture)

pytestmark = pytest.mark.usefixtures("cluster")


@pytest.fixture(scope="module")
def data():
    X, y = make_classification(6000, 8, random_state=0)
    return X, y


def _dm(data, block_rows=500):
    X, y = data
    return as_design_matrix(X, y, target="classification", executor="cluster", block_rows=block_rows)


def test_shards_give_the_tasks_results_and_are_reused(data):
    dm = _dm(data)
    assert len(dm.blocks) >= E._ShardPool.EAGER_BLOCKS
    W = np.full((9, 1), 0.1)
    want = dm.map_reduce(_logistic_block, W, 2, True)
    with E.held_by_shards(dm) as held:
        assert isinstance(held.executor, E.ShardExecutor) and held.executor.shards
        got = held.map_reduce(_logistic_block, W, 2, True)
        C = data[0][:3].copy()
        assert [np.allclose(a, b) for a, b in zip(held.map_reduce(_block_lloyd, C),
                                                    dm.map_reduce(_block_lloyd, C))] == [True, True]
        # per-block results keep block order (map_indexed sees global block indices)
        idx = held.map_indexed(lambda X, y, i: (i, X.shape[0]))
        assert idx == dm.map_indexed(lambda X, y, i: (i, X.shape[0]))
        first = list(held.executor.shards)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-12)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-12)
    with E.held_by_shards(dm) as again:              # the next fit reuses the same actors
        assert again.executor.shards == first


def test_small_fits_use_tasks_and_start_the_pool_for_later_ones(data):
    with E._ShardPool._lock:
        old, E._ShardPool._pool = E._ShardPool._pool, None
    E.kill_actors(shoal, old[1] if old else [])
    dm = _dm(data, block_rows=3000)                   # 2 blocks: not worth starting actors for
    with E.held_by_shards(dm) as held:
        assert held is dm
    assert E._ShardPool._pool is not None            # started when that fit ended
    shoal.get(E._ShardPool._pool[2], timeout=60)
    with E.held_by_shards(dm) as held:
        assert isinstance(held.executor, E.ShardExecutor)


def _die_once(X, y, marker):
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return float(X.sum())


def test_a_shard_that_dies_mid_fit_leaves_the_passes_to_tasks(data, tmp_path):
    dm = _dm(data)
    want = float(data[0].sum())
    with E.held_by_shards(dm) as held:
        got = held.map_reduce(_die_once, str(tmp_path / "died"))
        assert held.executor.shards == [] and held.executor.broken
        assert held.map_reduce(_die_once, str(tmp_path / "died")) == pytest.approx(want)
    assert got == pytest.approx(want)
    assert E._ShardPool._pool is None                 # the broken pool is gone ...
    with E.held_by_shards(dm) as held:                # ... and the next fit starts a new one
        assert held.executor.shards


def test_an_error_in_the_block_function_is_raised_not_retried(data):
    def bad(X, y):
        raise ValueError("bad block")
    with E.held_by_shards(_dm(data)) as held:
        with pytest.raises(Exception, match="bad block"):
            held.map_reduce(bad)
        assert held.executor.shards                  # the shards are still fine


def test_fits_on_shards_equal_fits_in_process(data):
    X, y = data
    with ml.use_executor("local"):
        lr0 = ml.LogisticRegression(max_iter=50).fit(X, y)
        km0 = ml.KMeans(4, max_iter=20, random_state=0).fit(X)
    with ml.use_executor("cluster"):
        for _ in range(2):                            # the second fit runs on the warm pool
            lr = ml.LogisticRegression(max_iter=50).fit(X, y)
            km = ml.KMeans(4, max_iter=20, random_state=0).fit(X)
    np.testing.assert_allclose(lr.coef_, lr0.coef_, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(km.cluster_centers_, km0.cluster_centers_, rtol=1e-9)
