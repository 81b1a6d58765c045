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
        self.files: dict = {}     # trial_id -> (result.json file, progress.csv file, writer)

    # ---------------------------------------------------------------- writing
    def put(self, key: str, value) -> None:
        self.db.execute("INSERT OR REPLACE INTO experiment VALUES (?, ?)",
                        (key, cloudpickle.dumps(value)))

    def save_trial(self, trial, idx: int | None = None) -> None:
        row = (pickle.dumps(trial.config), trial.status, trial.trial_dir, trial.checkpoint,
               json.dumps(trial.checkpoints), trial.num_failures, trial.error,
               trial.error_traceback, int(trial.stopped_early), dumps(trial.last_result))
        if idx is not None:
            self.db.execute("INSERT OR REPLACE INTO trials VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                            (trial.trial_id, idx) + row)
            os.makedirs(trial.trial_dir, exist_ok=True)
            with open(os.path.join(trial.trial_dir, "params.json"), "w") as f:
                f.write(dumps(trial.config))
        else:
            self.db.execute("UPDATE trials SET config=?, status=?, trial_dir=?, checkpoint=?, "
                            "checkpoints=?, num_failures=?, error=?, traceback=?, "
                            "stopped_early=?, last_result=? WHERE trial_id=?",
                            row + (trial.trial_id,))

    def add_result(self, trial, rec: dict, checkpoint: str | None) -> None:
        line = dumps(rec)
        self.db.execute("INSERT INTO results VALUES (?,?,?,?)",
                        (trial.trial_id, rec.get("training_iteration", 0), line, checkpoint))
        files = self.files.get(trial.trial_id)
        if files is None:
            files = self._open(trial, rec)
        files[0].write(line + "\n")
        files[2].writerow(rec)

    def _open(self, trial, rec):
        rj = open(os.path.join(trial.trial_dir, "result.json"), "a")
        path = os.path.join(trial.trial_dir, "progress.csv")
        fresh = not os.path.exists(path) or os.path.getsize(path) == 0
        pc = open(path, "a", newline="")
        if fresh:
            fields = list(rec)
        else:
            with open(path, newline="") as f:
                fields = next(csv.reader(f), list(rec))
        w = csv.DictWriter(pc, fieldnames=fields, extrasaction="ignore")
        if fresh:
            w.writeheader()
        self.files[trial.trial_id] = (rj, pc, w)
        return self.files[trial.trial_id]

    def close_trial(self, trial_id: str) -> None:
        files = self.files.pop(trial_id, None)
        if files:
            files[0].close()
            files[1].close()

    def truncate(self, trial, iteration: int) -> None:
        """Forget a trial's results after ``iteration`` (it resumes from a checkpoint there)
        and rewrite its files to match."""
        self.close_trial(trial.trial_id)
        self.db.execute("DELETE FROM results WHERE trial_id=? AND iteration>?",
                        (trial.trial_id, iteration))
        trial.history = [r for r in trial.history if r.get("training_iteration", 0) <= iteration]
        trial.last_result = dict(trial.history[-1]) if trial.history else {}
        for name in ("result.json", "progress.csv"):
            p = os.path.join(trial.trial_dir, name)
            if os.path.exists(p):
                os.remove(p)
        for rec in trial.history:
            files = self.files.get(trial.trial_id) or self._open(trial, rec)
            files[0].write(dumps(rec) + "\n")
            files[2].writerow(rec)

    def commit(self) -> None:
        self.db.execute("COMMIT")
        for rj, pc, _ in self.files.values():
            rj.flush()
            pc.flush()
        self.db.execute("BEGIN")

    def close(self) -> None:
        try:
            self.db.execute("COMMIT")
        except sqlite3.OperationalError:
            pass
        for tid in list(self.files):
            self.close_trial(tid)
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
