"""The experiment database's writer thread: rounds committed in order, reads after the
writes handed over before them, a bounded flush at close, errors that name the file."""
import os
import sqlite3

import pytest

from shoal.exceptions import TuneError
from shoal.tune._store import DB_FILE, ExperimentStore
from shoal.tune.trial import PENDING, RUNNING, TERMINATED, Trial


def rows(path, sql):
    con = sqlite3.connect(os.path.join(path, DB_FILE), timeout=5)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def new_trial(exp_dir, i):
    return Trial(f"t_{i:05d}", {"x": i}, PENDING, os.path.join(exp_dir, f"t_{i}"))


def test_close_returns_once_every_round_is_committed(tmp_path):
    store = ExperimentStore(str(tmp_path), fresh=True)
    trials = [new_trial(str(tmp_path), i) for i in range(50)]
    for i, t in enumerate(trials):
        store.add_trial(t, i)
        t.status = TERMINATED
        t.last_result = {"loss": float(i), "training_iteration": 1}
        t.history.append(t.last_result)
        store.add_result(t, t.last_result, None)
        store.save_trial(t)
        if i % 7 == 0:
            store.commit()          # hands the round over, does not wait
    store.put("searcher_state", {"index": 50})
    store.close()
    assert rows(str(tmp_path), "SELECT count(*) FROM trials WHERE status='TERMINATED'") == [(50,)]
    assert rows(str(tmp_path), "SELECT count(*) FROM results") == [(50,)]
    again = ExperimentStore(str(tmp_path))
    try:
        assert again.get("searcher_state") == {"index": 50}
        loaded = again.load_trials()
        assert [t.trial_id for t in loaded] == [t.trial_id for t in trials]
        assert [t.history for t in loaded] == [t.history for t in trials]
    finally:
        again.close()


def test_reads_see_the_writes_handed_over_before_them(tmp_path):
    store = ExperimentStore(str(tmp_path), fresh=True)
    try:
        t = new_trial(str(tmp_path), 0)
        store.add_trial(t, 0)
        for it in (1, 2, 3):
            rec = {"v": it, "training_iteration": it}
            t.history.append(rec)
            store.add_result(t, rec, None)
        t.status = RUNNING
        store.save_trial(t)
        store.commit()
        store.truncate(t, 1, files=False)     # a resume from the checkpoint at iteration 1
        store.sync()
        assert rows(str(tmp_path), "SELECT iteration FROM results") == [(1,)]
        assert [h["v"] for h in store.load_trials()[0].history] == [1]
        store.put("k", [1, 2])
        assert store.get("k") == [1, 2]       # not committed yet: read from the round
    finally:
        store.close()


def test_a_database_that_cannot_be_written_is_a_clear_error(tmp_path):
    os.mkdir(tmp_path / DB_FILE)              # a directory where the file should be
    store = ExperimentStore(str(tmp_path), fresh=True)
    store.put("k", 1)
    with pytest.raises(TuneError, match="experiment database .*Tuner.restore"):
        store.sync()
    store.close(check=False)                  # and closing after the error does not hang


def test_a_second_writer_of_the_same_file_waits_for_the_first_to_close(tmp_path):
    for i in range(5):
        store = ExperimentStore(str(tmp_path), fresh=i == 0)
        store.put("n", i)
        store.close()
    store = ExperimentStore(str(tmp_path))
    try:
        assert store.get("n") == 4
    finally:
        store.close()
