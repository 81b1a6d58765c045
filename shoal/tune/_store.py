"""The experiment's state in SQLite (``experiment.db`` in the experiment directory),
plus each trial's ``params.json``, ``result.json`` (a line per result) and
``progress.csv``.

The driver loop never waits for the disk: a writer thread owns the database
connection (it creates the file, its schema and WAL journal, then applies each
round of the driver loop as one transaction, several rounds at once when it
falls behind) and closes it after the experiment. ``commit`` hands a round
over and returns; ``sync`` and ``close`` wait (bounded) until everything
handed over is committed. In WAL mode with ``synchronous=NORMAL`` a committed
transaction survives a killed driver (the operating system holds it); only a
crash of the machine itself can lose the last transactions. ``Tuner.restore``
reads it back.
"""
from __future__ import annotations

import atexit
import csv
import io
import json
import math
import os
import pickle
import queue
import sqlite3
import threading
import time

import cloudpickle

from shoal.exceptions import TuneError

DB_FILE = "experiment.db"
_WAIT_S = 300.0      # longest wait for the writer (a commit, a read, the final flush)
_MAX_ROUNDS = 256    # rounds handed over but not yet committed, before commit() waits

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


_closing: dict = {}            # database path -> its writer thread, still closing it
_closing_lock = threading.Lock()


def _await_close(path: str, timeout: float = _WAIT_S) -> None:
    """Wait (bounded) until an earlier writer of ``path`` has closed it."""
    with _closing_lock:
        t = _closing.get(path)
    if t is not None:
        t.join(timeout)


def _await_all() -> None:
    # at exit: let closing writers finish (each merges its WAL into the database and
    # removes it); cutting one short loses nothing, the WAL is read back at the next open
    with _closing_lock:
        threads = list(_closing.values())
    deadline = time.monotonic() + 30.0
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))


atexit.register(_await_all)


class _Writer(threading.Thread):
    """Owns one experiment database's connection: opens it (file, WAL journal,
    schema), applies the rounds handed over, answers reads in order with them,
    and closes it."""

    def __init__(self, path: str):
        super().__init__(name="shoal-tune-db", daemon=True)
        self.path = path
        self.todo: queue.Queue = queue.Queue(maxsize=_MAX_ROUNDS)
        self.error: BaseException | None = None
        self.committed = threading.Event()    # set when the closing commit is done
        self.db = None

    def run(self):
        try:
            self._open()
        except BaseException as e:  # noqa: BLE001 - handed to the driver at its next call
            self.error = e
        try:
            while True:
                items = [self.todo.get()]
                # every round that waits joins one transaction
                while items[-1][0] == "round":
                    try:
                        items.append(self.todo.get_nowait())
                    except queue.Empty:
                        break
                rounds = [ops for kind, ops in items if kind == "round"]
                if rounds and self.error is None:
                    try:
                        self._apply(rounds)
                    except BaseException as e:  # noqa: BLE001 - as above
                        self.error = e
                kind, arg = items[-1]
                if kind == "call":
                    fn, box, done = arg
                    if self.error is None:
                        try:
                            box.append((True, fn(self.db)))
                        except BaseException as e:  # noqa: BLE001 - raised in the caller
                            box.append((False, e))
                    done.set()
                elif kind == "close":
                    self.committed.set()
                    return
        finally:
            self.committed.set()
            try:
                if self.db is not None:
                    self.db.close()      # merges the WAL into the database file
            except sqlite3.Error:
                pass
            with _closing_lock:
                if _closing.get(self.path) is self:
                    del _closing[self.path]

    def _open(self):
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                             timeout=30.0)
        self.db = db
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)

    def _apply(self, rounds: list) -> None:
        db = self.db
        db.execute("BEGIN")
        try:
            for ops in rounds:
                for sql, rows in ops:
                    db.executemany(sql, rows)
            db.execute("COMMIT")
        except BaseException:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise


class ExperimentStore:
    """One experiment's SQLite database (written by a thread of its own, see the
    module's docstring) and per-trial files.

    Args:
        exp_dir: the experiment directory.
        fresh: a new experiment (nothing to read back: the driver does not wait
            for the database to be created).
    """

    def __init__(self, exp_dir: str, fresh: bool = False):
        self.exp_dir = exp_dir
        self.path = os.path.join(exp_dir, DB_FILE)
        self.fresh = fresh
        _await_close(self.path)
        self._writer = _Writer(self.path)
        self._writer.start()
        self._closed = False
        self._ops: list = []         # this round's writes, in order: (sql, rows)
        self._kv: dict = {}          # experiment key -> pickled value, to write
        self._dirty: dict = {}       # trial_id -> Trial whose row is to be written
        self._lines: dict = {}       # trial_id -> JSON of its last result, made already
        self._results: list = []     # result rows to insert
        self._idx: dict = {} if fresh else dict(
            self._call(lambda db: db.execute("SELECT trial_id, idx FROM trials").fetchall()))

    # ---------------------------------------------------------------- writing
    # Trials' rows and results are buffered and handed to the writer at commit (once
    # per round of the driver loop): a trial that starts and ends within a round costs
    # one row write, not one per change.
    def put(self, key: str, value) -> None:
        self.put_bytes(key, cloudpickle.dumps(value))

    def put_bytes(self, key: str, data: bytes) -> None:
        self._kv[key] = data

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
            self._ops.append(("INSERT INTO results VALUES (?,?,?,?)", self._results))
            self._results = []
        if self._dirty:
            rows = []
            for tid, t in self._dirty.items():
                line = self._lines.pop(tid, None)
                rows.append((tid, self._idx[tid], pickle.dumps(t.config), t.status, t.trial_dir,
                             t.checkpoint, json.dumps(t.checkpoints), t.num_failures, t.error,
                             t.error_traceback, int(t.stopped_early),
                             line or dumps(t.last_result)))
            self._ops.append(("INSERT OR REPLACE INTO trials VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                              rows))
            self._dirty = {}
        if self._kv:
            self._ops.append(("INSERT OR REPLACE INTO experiment VALUES (?, ?)",
                              list(self._kv.items())))
            self._kv = {}

    def truncate(self, trial, iteration: int, files: bool | None = True) -> None:
        """Forget a trial's results after ``iteration`` (it resumes from a checkpoint there)
        and rewrite its files to match (``files`` None: only if it has them)."""
        self._flush()
        self._lines.pop(trial.trial_id, None)
        self._ops.append(("DELETE FROM results WHERE trial_id=? AND iteration>?",
                          [(trial.trial_id, iteration)]))
        trial.history = [r for r in trial.history if r.get("training_iteration", 0) <= iteration]
        trial.last_result = dict(trial.history[-1]) if trial.history else {}
        if files or (files is None and os.path.exists(
                os.path.join(trial.trial_dir, "params.json"))):
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
        """Hand this round's writes to the writer (one transaction); does not wait for it."""
        self._check()
        self._flush()
        if self._ops:
            self._send(("round", self._ops))
            self._ops = []

    def sync(self) -> None:
        """``commit``, then wait until the database holds everything handed over."""
        self.commit()
        self._call(lambda db: None)

    def close(self, check: bool = True) -> None:
        """Commit what is left and wait (bounded) until it is in the database; the
        writer then closes the file on its own. ``check`` False: raise no error of
        the writer (the caller is handling another)."""
        if self._closed:
            return
        self._closed = True
        w = self._writer
        try:
            if w.error is None:
                self._flush()
                if self._ops:
                    self._send(("round", self._ops))
                    self._ops = []
            with _closing_lock:
                _closing[self.path] = w
            self._send(("close", None))
            if not w.committed.wait(_WAIT_S):
                raise TuneError(f"the experiment database {self.path!r} took more than "
                                f"{_WAIT_S:.0f} s to write its last results (a hung or very "
                                "slow disk?); what it committed before is kept")
        except TuneError:
            if check:
                raise
            return
        if check:
            self._check()

    def _send(self, item) -> None:
        try:
            self._writer.todo.put(item, timeout=_WAIT_S)
        except queue.Full:
            raise TuneError(f"the experiment database {self.path!r} fell more than "
                            f"{_MAX_ROUNDS} rounds behind for {_WAIT_S:.0f} s (a hung or very "
                            "slow disk under storage_path?)") from None

    def _check(self) -> None:
        e = self._writer.error
        if e is not None:
            raise TuneError(f"writing the experiment database {self.path!r} failed "
                            f"({type(e).__name__}: {e}); free space or fix the permissions "
                            f"under {self.exp_dir!r}, then continue with "
                            f"Tuner.restore({self.exp_dir!r})") from e

    def _call(self, fn):
        """``fn(connection)`` on the writer, after everything handed over before."""
        self._check()
        box: list = []
        done = threading.Event()
        self._send(("call", (fn, box, done)))
        if not done.wait(_WAIT_S):
            raise TuneError(f"the experiment database {self.path!r} did not answer within "
                            f"{_WAIT_S:.0f} s (a hung or very slow disk?)")
        self._check()
        ok, value = box[0]
        if not ok:
            raise TuneError(f"reading the experiment database {self.path!r} failed "
                            f"({type(value).__name__}: {value}); is it a shoal.tune "
                            "experiment?") from value
        return value

    # ---------------------------------------------------------------- reading
    def get(self, key: str, default=None):
        if key in self._kv:
            return pickle.loads(self._kv[key])
        self.commit()
        row = self._call(lambda db: db.execute("SELECT value FROM experiment WHERE key=?",
                                               (key,)).fetchone())
        return pickle.loads(row[0]) if row else default

    def load_trials(self) -> list:
        from shoal.tune.trial import Trial
        self.commit()

        def read(db):
            rows = db.execute("SELECT trial_id, config, status, trial_dir, checkpoint, "
                              "checkpoints, num_failures, error, traceback, stopped_early, "
                              "last_result FROM trials ORDER BY idx").fetchall()
            hist: dict = {}
            for tid, m in db.execute("SELECT trial_id, metrics FROM results ORDER BY rowid"):
                hist.setdefault(tid, []).append(m)
            return rows, hist
        rows, hist = self._call(read)
        trials = []
        for (tid, cfg, status, tdir, ckpt, ckpts, nf, err, tb, se, last) in rows:
            t = Trial(tid, pickle.loads(cfg), status, tdir, json.loads(last), ckpt, nf, err, tb,
                      bool(se))
            t.checkpoints = [tuple(c) for c in json.loads(ckpts)]
            t.history = [json.loads(m) for m in hist.get(tid, ())]
            trials.append(t)
        return trials
