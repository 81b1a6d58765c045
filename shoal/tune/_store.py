"""The experiment's state in SQLite (``experiment.db`` in the experiment directory),
plus each trial's ``params.json``, ``result.json`` (a line per result) and
``progress.csv``.

Written as things happen, one transaction per round of the driver loop (WAL,
synchronous=NORMAL: a killed driver loses nothing committed; only a crash of
the machine itself can lose the last round). ``Tuner.restore`` reads it back.
"""
from __future__ import annotations

import csv
import json
import math
import os
import pickle
import sqlite3

import cloudpickle

DB_FILE = "experiment.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS experiment (key TEXT PRIMARY KEY, value BLOB);
CREATE TABLE IF NOT EXISTS trials (
    trial_id TEXT PRIMARY KEY, idx INTEGER, config BLOB, status TEXT, trial_dir TEXT,
    checkpoint TEXT, checkpoints TEXT, num_failures INTEGER, error TEXT, traceback TEXT,
    stopped_early INTEGER, last_result TEXT);
CREATE TABLE IF NOT EXISTS results (
    trial_id TEXT, iteration INTEGER, metrics TEXT, checkpoint TEXT);
CREATE INDEX IF NOT EXISTS results_trial ON results (trial_id, iteration);
"""


def _default(v):
    if hasattr(v, "item"):          # numpy / torch scalars
        try:
            return v.item()
        except (ValueError, TypeError):
            pass
    if hasattr(v, "tolist"):
        return v.tolist()
    return str(v)


def dumps(rec: dict) -> str:
    """JSON of a result; NaN/inf as null (JSON has no such numbers)."""
    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x
    try:
        return json.dumps(rec, allow_nan=False)
    except (TypeError, ValueError):
        return json.dumps(clean(json.loads(json.dumps(rec, default=_default))))


class TrialFiles:
    """A trial's ``result.json`` (a JSON line per result) and ``progress.csv``, appended
    by the trial's actor as results happen."""

    def __init__(self, trial_dir: str):
        self.trial_dir = trial_dir
        self.rj = self.pc = self.writer = None

    def write_params(self, config: dict) -> None:
        with open(os.path.join(self.trial_dir, "params.json"), "w") as f:
            f.write(dumps(config))

    def append(self, rec: dict, line: str | None = None) -> None:
        if self.rj is None:
            self._open(rec)
        self.rj.write((line or dumps(rec)) + "\n")
        self.writer.writerow(rec)

    def flush(self) -> None:
        if self.rj is not None:
            self.rj.flush()
            self.pc.flush()

    def _open(self, rec):
        self.rj = open(os.path.join(self.trial_dir, "result.json"), "a")
        path = os.path.join(self.trial_dir, "progress.csv")
        fresh = not os.path.exists(path) or os.path.getsize(path) == 0
        if fresh:
            fields = list(rec)
        else:
            with open(path, newline="") as f:
                fields = next(csv.reader(f), list(rec))
        self.pc = open(path, "a", newline="")
        self.writer = csv.DictWriter(self.pc, fieldnames=fields, extrasaction="ignore")
        if fresh:
            self.writer.writeheader()

    def close(self) -> None:
        if self.rj is not None:
            self.rj.close()
            self.pc.close()
            self.rj = self.pc = self.writer = None


class ExperimentStore:
    """One experiment's SQLite database and per-trial files."""

    def __init__(self, exp_dir: str):
        self.exp_dir = exp_dir
        self.path = os.path.join(exp_dir, DB_FILE)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        self.db.execute("BEGIN")

    # ---------------------------------------------------------------- writing
    def put(self, key: str, value) -> None:
        self.db.execute("INSERT OR REPLACE INTO experiment VALUES (?, ?)",
                        (key, cloudpickle.dumps(value)))

    def add_trial(self, trial, idx: int) -> None:
        self.db.execute("INSERT OR REPLACE INTO trials VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                        (trial.trial_id, idx, pickle.dumps(trial.config), trial.status,
                         trial.trial_dir, trial.checkpoint, json.dumps(trial.checkpoints),
                         trial.num_failures, trial.error, trial.error_traceback,
                         int(trial.stopped_early), dumps(trial.last_result)))

    def save_status(self, trial) -> None:
        self.db.execute("UPDATE trials SET status=? WHERE trial_id=?",
                        (trial.status, trial.trial_id))

    def save_config(self, trial) -> None:
        self.db.execute("UPDATE trials SET config=? WHERE trial_id=?",
                        (pickle.dumps(trial.config), trial.trial_id))

    def save_trial(self, trial, last_line: str | None = None) -> None:
        self.db.execute("UPDATE trials SET status=?, checkpoint=?, checkpoints=?, "
                        "num_failures=?, error=?, traceback=?, stopped_early=?, last_result=? "
                        "WHERE trial_id=?",
                        (trial.status, trial.checkpoint, json.dumps(trial.checkpoints),
                         trial.num_failures, trial.error, trial.error_traceback,
                         int(trial.stopped_early), last_line or dumps(trial.last_result),
                         trial.trial_id))

    def add_result(self, trial, rec: dict, checkpoint: str | None) -> str:
        line = dumps(rec)
        self.db.execute("INSERT INTO results VALUES (?,?,?,?)",
                        (trial.trial_id, rec.get("training_iteration", 0), line, checkpoint))
        return line

    def truncate(self, trial, iteration: int) -> None:
        """Forget a trial's results after ``iteration`` (it resumes from a checkpoint there)
        and rewrite its files to match."""
        self.db.execute("DELETE FROM results WHERE trial_id=? AND iteration>?",
                        (trial.trial_id, iteration))
        trial.history = [r for r in trial.history if r.get("training_iteration", 0) <= iteration]
        trial.last_result = dict(trial.history[-1]) if trial.history else {}
        for name in ("result.json", "progress.csv"):
            p = os.path.join(trial.trial_dir, name)
            if os.path.exists(p):
                os.remove(p)
        files = TrialFiles(trial.trial_dir)
        for rec in trial.history:
            files.append(rec)
        files.close()

    def commit(self) -> None:
        self.db.execute("COMMIT")
        self.db.execute("BEGIN")

    def close(self) -> None:
        try:
            self.db.execute("COMMIT")
        except sqlite3.OperationalError:
            pass
        self.db.close()

    # ---------------------------------------------------------------- reading
    def get(self, key: str, default=None):
        row = self.db.execute("SELECT value FROM experiment WHERE key=?", (key,)).fetchone()
        return pickle.loads(row[0]) if row else default

    def load_trials(self) -> list:
        from shoal.tune.trial import Trial
        trials = []
        rows = self.db.execute("SELECT trial_id, config, status, trial_dir, checkpoint, "
                               "checkpoints, num_failures, error, traceback, stopped_early, "
                               "last_result FROM trials ORDER BY idx").fetchall()
        for (tid, cfg, status, tdir, ckpt, ckpts, nf, err, tb, se, last) in rows:
            t = Trial(tid, pickle.loads(cfg), status, tdir, json.loads(last), ckpt, nf, err, tb,
                      bool(se))
            t.checkpoints = [tuple(c) for c in json.loads(ckpts)]
            t.history = [json.loads(m) for (m,) in self.db.execute(
                "SELECT metrics FROM results WHERE trial_id=? ORDER BY rowid", (tid,))]
            trials.append(t)
        return trials
