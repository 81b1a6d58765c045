"""The experiment's state in SQLite (``experiment.db`` in the experiment directory),
plus each trial's ``params.json``, ``result.json`` (a line per result) and
``progress.csv``.

Written as things happen, one transaction per round of the driver loop (WAL,
synchronous=NORMAL: a killed driver loses nothing committed; only a crash of
the machine itself can lose the last round). ``Tuner.restore`` reads it back.
"""
from __future__ import annotations

import csv
import io
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
    """A trial's ``params.json``, ``result.json`` (a JSON line per result) and
    ``progress.csv``. Each call opens, appends and closes (no handle stays open
    between a trial's results), with plain ``os`` calls: the file system is the
    dearest part of a short trial."""

    def __init__(self, trial_dir: str):
        self.trial_dir = trial_dir
        self.fields: list | None = None    # progress.csv's columns, once known

    def write_params(self, config: dict) -> None:
        os.makedirs(self.trial_dir, exist_ok=True)
        _write(os.path.join(self.trial_dir, "params.json"), dumps(config).encode(), truncate=True)

    def append(self, recs: list, lines: list | None = None) -> None:
        """Append results (dicts; ``lines`` their JSON if already made)."""
        if not recs:
            return
        lines = lines or [dumps(r) for r in recs]
        _write(os.path.join(self.trial_dir, "result.json"),
               "".join(ln + "\n" for ln in lines).encode())
        path = os.path.join(self.trial_dir, "progress.csv")
        buf = io.StringIO()
        if self.fields is None:
            fresh = not os.path.exists(path) or os.path.getsize(path) == 0
            if fresh:
                self.fields = list(recs[0])
            else:
                with open(path, newline="") as f:
                    self.fields = next(csv.reader(f), None) or list(recs[0])
            if fresh:
                csv.writer(buf).writerow(self.fields)
        w = csv.DictWriter(buf, fieldnames=self.fields, extrasaction="ignore")
        w.writerows(recs)
        _write(path, buf.getvalue().encode())


def _write(path: str, data: bytes, truncate: bool = False) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if truncate else os.O_APPEND)
    fd = os.open(path, flags, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


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
        self._idx = dict(self.db.execute("SELECT trial_id, idx FROM trials"))
        self._dirty: dict = {}       # trial_id -> Trial whose row is to be written
        self._lines: dict = {}       # trial_id -> JSON of its last result, made already
        self._results: list = []     # result rows to insert

    # ---------------------------------------------------------------- writing
    # Trials' rows and results are buffered and written at commit (once per round of
    # the driver loop) with executemany: a trial that starts and ends within a round
    # costs one row write, not one per change.
    def put(self, key: str, value) -> None:
        self.db.execute("INSERT OR REPLACE INTO experiment VALUES (?, ?)",
                        (key, cloudpickle.dumps(value)))

    def add_trial(self, trial, idx: int) -> None:
        self._idx[trial.trial_id] = idx
        self._dirty[trial.trial_id] = trial

    def save_status(self, trial) -> None:
        self._dirty[trial.trial_id] = trial

    save_config = save_status

    def save_trial(self, trial, last_line: str | None = None) -> None:
        if last_line is not None:
            self._lines[trial.trial_id] = last_line
        self._dirty[trial.trial_id] = trial

    def add_result(self, trial, rec: dict, checkpoint: str | None) -> str:
        line = dumps(rec)
        self._results.append((trial.trial_id, rec.get("training_iteration", 0), line,
                              checkpoint))
        self._lines[trial.trial_id] = line
        return line

    def _flush(self) -> None:
        if self._results:
            self.db.executemany("INSERT INTO results VALUES (?,?,?,?)", self._results)
            self._results = []
        if self._dirty:
            rows = []
            for tid, t in self._dirty.items():
                line = self._lines.pop(tid, None)
                rows.append((tid, self._idx[tid], pickle.dumps(t.config), t.status, t.trial_dir,
                             t.checkpoint, json.dumps(t.checkpoints), t.num_failures, t.error,
                             t.error_traceback, int(t.stopped_early),
                             line or dumps(t.last_result)))
            self.db.executemany("INSERT OR REPLACE INTO trials VALUES "
                                "(?,?,?,?,?,?,?,?,?,?,?,?)", rows)
            self._dirty = {}

    def truncate(self, trial, iteration: int, files: bool = True) -> None:
        """Forget a trial's results after ``iteration`` (it resumes from a checkpoint there)
        and rewrite its files to match."""
        self._flush()
        self._lines.pop(trial.trial_id, None)
        self.db.execute("DELETE FROM results WHERE trial_id=? AND iteration>?",
                        (trial.trial_id, iteration))
        trial.history = [r for r in trial.history if r.get("training_iteration", 0) <= iteration]
        trial.last_result = dict(trial.history[-1]) if trial.history else {}
        if files:
            self.rewrite_files(trial)

    @staticmethod
    def rewrite_files(trial) -> None:
        """Write a trial's params.json, result.json and progress.csv anew from what the
        driver holds (after a rewind, or when the actor that wrote them died first)."""
        for name in ("result.json", "progress.csv"):
            p = os.path.join(trial.trial_dir, name)
            if os.path.exists(p):
                os.remove(p)
        files = TrialFiles(trial.trial_dir)
        files.write_params(trial.config)
        files.append(trial.history)

    def commit(self) -> None:
        self._flush()
        self.db.execute("COMMIT")
        self.db.execute("BEGIN")

    def close(self) -> None:
        try:
            self._flush()
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
        self._flush()
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
