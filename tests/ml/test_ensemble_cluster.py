"""Forests and boosting on a running shoal cluster: shards are actors that keep binned blocks."""
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_classification

import shoal.data as sd
from shoal.ml import use_executor
from shoal.ml.ensemble import GradientBoostingClassifier, RandomForestClassifier

from _cluster import cluster  # noqa: F401  (module-scoped fixture)

pytestmark = [pytest.mark.usefixtures("cluster"), pytest.mark.slow]


@pytest.fixture(scope="module")
def data():
    # 140k rows make three blocks, so the fit runs on two shard actors
    X, y = make_classification(140_000, 6, n_informative=4, n_redundant=0, random_state=0)
    return X, y


def test_forest_on_actors_equals_the_in_process_forest(data):
    X, y = data
    with use_executor("cluster"):
        remote = RandomForestClassifier(4, max_depth=4, random_state=0).fit(X, y)
    with use_executor("local"):
        local = RandomForestClassifier(4, max_depth=4, random_state=0).fit(X, y)
    np.testing.assert_array_equal(remote.predict_proba(X[:2000]), local.predict_proba(X[:2000]))


def test_boosting_on_actors_matches_the_in_process_model(data):
    X, y = data
    with use_executor("cluster"):
        remote = GradientBoostingClassifier(4, max_depth=3, random_state=0).fit(X, y)
    with use_executor("local"):
        local = GradientBoostingClassifier(4, max_depth=3, random_state=0).fit(X, y)
    # gradient sums are added in another order across shards: equal up to rounding
    np.testing.assert_allclose(remote.predict_proba(X[:2000]), local.predict_proba(X[:2000]), atol=1e-9)


def test_forest_fits_a_dataset_by_column_names(data):
    X, y = data
    df = pd.DataFrame(X[:20000], columns=[f"x{i}" for i in range(6)])
    df["label"] = y[:20000]
    ds = sd.from_pandas(df).repartition(2)
    est = RandomForestClassifier(4, max_depth=4, random_state=0).fit(ds, label="label")
    assert list(est.feature_names_in_) == [f"x{i}" for i in range(6)]
    with use_executor("local"):   # random draws follow global rows: the block layout does not matter
        ref = RandomForestClassifier(4, max_depth=4, random_state=0).fit(df, label="label")
    features = df[[f"x{i}" for i in range(6)]]
    np.testing.assert_array_equal(est.predict_proba(features), ref.predict_proba(features))


def _fit_inside_a_task(X, y):
    from shoal.ml import _executor as E
    with use_executor("cluster"):
        score = RandomForestClassifier(2, max_depth=3, random_state=0).fit(X, y).score(X, y)
    return score, E._ShardPool._pool is None      # no shard pool left behind in the worker


def test_forest_fits_from_inside_a_task_that_holds_a_cpu(data):
    import shoal
    X, y = data
    # the task holds one of the two CPUs: shards must not wait for CPUs that never free up
    score, no_pool = shoal.get(shoal.remote(_fit_inside_a_task).remote(X, y), timeout=100)
    assert score > 0.7 and no_pool


# -- a shard actor that dies mid-fit: replaced, its state rebuilt, the fit unchanged ----------

def _kill_shard(monkeypatch, when):
    """Kill shard 0's actor (as a crashed worker) right before the shard call ``when`` picks."""
    import shoal
    from shoal.ml._hist_shards import ShardSet
    seen = {"level": 0, "killed": 0}
    call = ShardSet.call

    def killing_call(self, method, *args, only=None):
        if method == "level":
            seen["level"] += 1
        if when(method, seen, args):
            shoal.kill(self.shards[0])
            seen["killed"] += 1
        return call(self, method, *args, only=only)
    monkeypatch.setattr(ShardSet, "call", killing_call)
    return seen


def _refit_with_one_kill(monkeypatch, make, X, y, when):
    """(uninterrupted model, model of a fit whose shard 0 was killed once at ``when``, calls seen)."""
    with use_executor("cluster"):
        want = make().fit(X, y)
        seen = _kill_shard(monkeypatch, lambda m, s, a: not s["killed"] and when(m, s, a))
        got = make().fit(X, y)
    assert seen["killed"] == 1
    np.testing.assert_array_equal(got.predict_proba(X[:2000]), want.predict_proba(X[:2000]))
    return seen


def test_boosting_survives_a_shard_killed_mid_round(data, monkeypatch):
    seen = _refit_with_one_kill(
        monkeypatch, lambda: GradientBoostingClassifier(5, max_depth=3, random_state=0), *data,
        lambda m, s, a: m == "level" and s["level"] == 8)
    assert seen["level"] > 8     # round 3 was grown again


def test_boosting_survives_a_shard_killed_as_a_round_ends(data, monkeypatch):
    # round 3's first call adds round 2 on each shard: the other shard has added it when the
    # call is repeated, and must not add it twice
    _refit_with_one_kill(
        monkeypatch, lambda: GradientBoostingClassifier(4, max_depth=2, random_state=0), *data,
        lambda m, s, a: m == "next_round" and a[0] is not None and a[0][2] == 2)


def test_forest_survives_a_killed_shard(data, monkeypatch):
    _refit_with_one_kill(
        monkeypatch, lambda: RandomForestClassifier(4, max_depth=4, random_state=0), *data,
        lambda m, s, a: m == "level" and s["level"] == 3)


def test_a_fit_whose_shards_keep_dying_gives_up_with_a_clear_error(data, monkeypatch):
    from shoal.exceptions import WorkerCrashedError
    from shoal.ml._hist_shards import MAX_SHARD_LOSSES
    X, y = data
    seen = _kill_shard(monkeypatch, lambda m, s, a: m == "level")
    with use_executor("cluster"), pytest.raises(WorkerCrashedError, match="lost its shard actors"):
        GradientBoostingClassifier(3, max_depth=2, random_state=0).fit(X, y)
    assert seen["killed"] == MAX_SHARD_LOSSES + 1


def _pool_up():
    """Start the session's shard pool (if needed) and wait until its actors are ready."""
    import shoal
    from shoal.ml import _executor as E
    E._ShardPool.start_later(shoal, E.pool_size(shoal))
    shoal.get(E._ShardPool._pool[2], timeout=60)
    return E._ShardPool._pool[1]


def _record_shards(monkeypatch):
    from shoal.ml._hist_shards import ShardSet
    used, close = [], ShardSet.close

    def recording_close(self):
        used.append((list(self.shards), list(getattr(self, "_pooled", []))))
        close(self)
    monkeypatch.setattr(ShardSet, "close", recording_close)
    return used


def test_tree_fits_use_the_pooled_shard_actors_when_they_are_up(data, monkeypatch):
    from shoal.ml import _executor as E
    X, y = data
    pool = _pool_up()
    used = _record_shards(monkeypatch)
    with use_executor("cluster"):
        got = GradientBoostingClassifier(4, max_depth=3, random_state=0).fit(X, y)
    shards, pooled = used[0]
    assert all(pooled) and shards == pool[:len(shards)] and len(shards) == 2
    assert not E._ShardPool._busy and E._ShardPool._pool[1] == pool   # given back, kept
    with use_executor("local"):
        local = GradientBoostingClassifier(4, max_depth=3, random_state=0).fit(X, y)
    np.testing.assert_allclose(got.predict_proba(X[:2000]), local.predict_proba(X[:2000]), atol=1e-9)


def test_a_pooled_shard_that_dies_is_replaced_and_the_pool_restarted_later(data, monkeypatch):
    from shoal.ml import _executor as E
    X, y = data
    with use_executor("cluster"):
        want = RandomForestClassifier(3, max_depth=4, random_state=0).fit(X, y)
        _pool_up()
        used = _record_shards(monkeypatch)
        seen = _kill_shard(monkeypatch, lambda m, s, a: m == "level" and s["level"] == 2
                           and not s["killed"])
        got = RandomForestClassifier(3, max_depth=4, random_state=0).fit(X, y)
    assert seen["killed"] == 1 and used[0][1] == [False, True]   # shard 0 now has its own actor
    assert E._ShardPool._pool is None and not E._ShardPool._busy  # the broken pool was dropped
    np.testing.assert_array_equal(got.predict_proba(X[:2000]), want.predict_proba(X[:2000]))
