"""A driver killed by SIGKILL mid-experiment: Tuner.restore reruns no finished trial and
resumes the running ones from their last checkpoint."""
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from shoal import tune

pytestmark = [pytest.mark.usefixtures("cluster"), pytest.mark.slow]

DRIVER = textwrap.dedent("""
    import os, sys, time
    import shoal
    from shoal import tune

    def train(config):
        ckpt = tune.get_checkpoint()
        start = ckpt.to_dict()["i"] if ckpt else 0
        with open(os.path.join(config["log"], "starts.log"), "a") as f:
            f.write(f"{tune.get_context().get_trial_id()} {start}\\n")
        for i in range(start, 5):
            time.sleep(0.15)
            tune.report({"score": config["x"] * (i + 1), "i": i},
                        checkpoint=tune.Checkpoint.from_dict({"i": i + 1}))

    shoal.init(num_cpus=2)
    tune.Tuner(train, param_space={"x": tune.grid_search([1, 2, 3, 4, 5, 6]),
                                         "log": sys.argv[1]},
               tune_config=tune.TuneConfig(metric="score", mode="max", max_concurrent_trials=2),
               run_config=tune.RunConfig(storage_path=sys.argv[1], name="exp", verbose=0)).fit()
""")


def statuses(db):
    if not os.path.exists(db):
        return {}
    con = sqlite3.connect(db, timeout=5)
    try:
        rows = con.execute("SELECT t.trial_id, t.status, (SELECT count(*) FROM results r "
                           "WHERE r.trial_id = t.trial_id) FROM trials t").fetchall()
    except sqlite3.OperationalError:
        return {}
    finally:
        con.close()
    return {tid: (st, n) for tid, st, n in rows}


def test_restore_after_sigkill_loses_and_repeats_nothing(tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd()] + sys.path))
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path)], env=env,
                            start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    db = str(tmp_path / "exp" / "experiment.db")
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            st = statuses(db)
            done = [t for t, (s, _) in st.items() if s == "TERMINATED"]
            mid = [t for t, (s, n) in st.items() if s == "RUNNING" and n >= 2]
            if len(done) >= 2 and mid:
                break
            assert proc.poll() is None, proc.stdout.read().decode()
            time.sleep(0.05)
        else:
            pytest.fail(f"the driver did not get far enough: {statuses(db)}")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)     # the driver and its cluster's workers
        proc.wait(30)
    before = statuses(db)
    finished_before = {t for t, (s, _) in before.items() if s == "TERMINATED"}
    starts_before = (tmp_path / "starts.log").read_text().split("\n")

    assert tune.Tuner.can_restore(tmp_path / "exp")
    grid = tune.Tuner.restore(str(tmp_path / "exp")).fit()

    assert len(grid) == 6 and grid.num_terminated == 6 and grid.num_errors == 0, grid.errors
    for r in grid:
        assert [h["training_iteration"] for h in r.metrics_history] == [1, 2, 3, 4, 5]
        assert [h["i"] for h in r.metrics_history] == [0, 1, 2, 3, 4]
    starts = (tmp_path / "starts.log").read_text().split("\n")[len(starts_before) - 1:]
    restarted = {line.split()[0]: int(line.split()[1]) for line in starts if line}
    assert not finished_before & set(restarted)            # no finished trial ran again
    resumed = [t for t, (s, n) in before.items() if s == "RUNNING" and n >= 1]
    assert resumed and all(restarted[t] >= 1 for t in resumed)   # from their checkpoints
    assert grid.get_best_result().config["x"] == 6


BATCH_DRIVER = textwrap.dedent("""
    import os, sys, time
    import shoal
    from shoal import tune

    def quick(config):        # returns at once: batched trials on tasks
        time.sleep(0.01)
        with open(os.path.join(config["log"], "runs.log"), "a") as f:
            f.write(tune.get_context().get_trial_id() + "\\n")
        return {"loss": (config["x"] - 3) ** 2}

    shoal.init(num_cpus=2)
    tune.Tuner(quick, param_space={"x": tune.uniform(0, 10), "log": sys.argv[1]},
               tune_config=tune.TuneConfig(metric="loss", mode="min", num_samples=400, seed=0),
               run_config=tune.RunConfig(storage_path=sys.argv[1], name="exp", verbose=0)).fit()
""")


def test_restore_after_sigkill_of_a_sweep_of_batched_trials(tmp_path):
    # the database is written by a thread of the driver, behind the loop: what it
    # committed before the kill is kept and not run again, the rest runs once more
    script = tmp_path / "driver.py"
    script.write_text(BATCH_DRIVER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd()] + sys.path))
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path)], env=env,
                            start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    db = str(tmp_path / "exp" / "experiment.db")
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if sum(s == "TERMINATED" for s, _ in statuses(db).values()) >= 40:
                break
            assert proc.poll() is None, proc.stdout.read().decode()
            time.sleep(0.02)
        else:
            pytest.fail(f"the driver did not get far enough: {len(statuses(db))} trials")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    before = statuses(db)
    finished_before = {t for t, (s, n) in before.items() if s == "TERMINATED"}
    assert all(n == 1 for t, (s, n) in before.items() if s == "TERMINATED")
    assert len(finished_before) < 400, "the sweep ended before the kill; nothing to test"
    runs_before = len((tmp_path / "runs.log").read_text().split())

    grid = tune.Tuner.restore(str(tmp_path / "exp")).fit()

    assert len(grid) == 400 and grid.num_terminated == 400 and grid.num_errors == 0
    assert all(len(r.metrics_history) == 1 for r in grid)
    rerun = (tmp_path / "runs.log").read_text().split()[runs_before:]
    assert not finished_before & set(rerun)                  # no committed trial ran again
    assert {r.trial_id for r in grid} - finished_before <= set(rerun)   # the others did
