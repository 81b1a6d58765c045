"""The trial actor: runs one trial at a time, then the next one (``reuse_actors``).

The driver calls ``start`` (returns the trial's first event), then ``next``
after each result it accepted, ``save`` when it wants a checkpoint now and
``stop`` to end the trial early. Events are ("result", record),
("done", record or None) and ("error", {...}). A function trainable runs in
a thread and pauses in ``report`` until the driver's next call: the driver
decides (continue, stop, pause, exploit) before the trial goes on, so a
scheduler's decision lands at the iteration it was made for. ``start_many``
takes a batch of trials that are expected to end at once: one thread runs
them back to back and one reply carries their events.
"""
from __future__ import annotations

import os
import queue
import shutil
import socket
import tempfile
import threading
import time
import traceback

import shoal
from shoal.tune._store import TrialFiles
from shoal.core.checkpoint import persist as _persist_copy
from shoal.tune.checkpoint import Checkpoint, persist
from shoal.tune.trainable import TrialContext, _set_session

_STOP_JOIN_S = 30.0   # a stopped function gets this long to unwind before its actor is dropped


class _StopTrial(BaseException):
    """Raised inside a function trainable's report() when the driver ends the trial."""


def _error_event(e: BaseException) -> tuple:
    return ("error", {"error": f"{type(e).__name__}: {e}",
                      "traceback": "".join(traceback.format_exception(type(e), e, e.__traceback__))})


class _Clock:
    def __init__(self, info):
        self.iteration = info.get("iteration", 0)
        self.time_total = info.get("time_total_s", 0.0)
        self.last = time.monotonic()
        self.trial_id = info["trial_id"]

    def stamp(self, metrics: dict) -> dict:
        now = time.monotonic()
        dt = now - self.last
        self.last = now
        self.iteration += 1
        self.time_total += dt
        rec = dict(metrics)
        rec.setdefault("training_iteration", self.iteration)
        rec.update(time_this_iter_s=dt, time_total_s=self.time_total, timestamp=time.time(),
                   trial_id=self.trial_id, pid=os.getpid())
        return rec


class _FunctionRun:
    """Function trials run one after another in one thread of the actor.

    While each trial ends without an intermediate report (a function that
    returns at once), the thread goes straight on to the next: a whole batch
    costs one hand-over between threads. The first trial that reports pauses
    in ``report`` until the driver's next call, and the batch ends with it
    (the trials after it are not started).
    """

    def __init__(self, fn, params, infos):
        self.fn, self.params, self.infos = fn, params, infos
        self.out: queue.SimpleQueue = queue.SimpleQueue()
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.ended: list = []     # events of the trials that ended before the hand-over
        self.handed = False       # the first hand-over (a list of events) happened
        self.finished = False
        self.thread = threading.Thread(target=self._main, daemon=True,
                                       name=f"trial-{infos[0]['trial_id']}")
        self._begin(infos[0])

    def _begin(self, info):
        self.info = info
        self.clock = _Clock(info)
        self.ckpt = info.get("checkpoint")
        self.context = TrialContext(info["trial_id"], info["trial_name"], info["trial_dir"],
                                    info.get("experiment_name", ""))

    # -- the user's thread
    def report(self, metrics, checkpoint):
        rec = self.clock.stamp(metrics)
        path = None
        if checkpoint is not None:
            path = persist(checkpoint, self.context.trial_dir, rec["training_iteration"])
            self.ckpt = path
        self._emit(("result", {"metrics": rec, "checkpoint": path}))
        if self.inbox.get() == "stop":
            raise _StopTrial()
        self.clock.last = time.monotonic()  # the driver's time is not the trial's

    def get_checkpoint(self):
        return Checkpoint(path=self.ckpt) if self.ckpt else None

    def _emit(self, ev):
        if self.handed:
            self.out.put(ev)
        else:
            self.handed = True
            self.out.put(self.ended + [ev])

    def _main(self):
        for info in self.infos:
            self._begin(info)
            _set_session(self)
            try:
                out = self.fn(info["config"], **self.params)
                rec = None
                if isinstance(out, dict):  # a returned dict is the final result, as in Ray Tune
                    rec = {"metrics": self.clock.stamp(out), "checkpoint": None}
                ev = ("done", rec)
            except _StopTrial:
                ev = ("stopped", None)
            except BaseException as e:  # noqa: BLE001 - reported to the driver with its traceback
                ev = _error_event(e)
            finally:
                _set_session(None)
            if self.handed:          # this trial reported: the batch ends with it
                self.out.put(ev)
                return
            self.ended.append(ev)
        self.handed = True
        self.out.put(self.ended)

    # -- the actor's thread
    def first(self) -> list:
        """Run the batch up to the first trial that reports (or to its end); their events."""
        self.thread.start()
        events = self.out.get()
        if events[-1][0] != "result":
            self.finished = True
        return events

    def next(self):
        self.inbox.put("continue")
        ev = self.out.get()
        if ev[0] != "result":
            self.finished = True
        return ev

    def save(self):
        return self.ckpt

    def stop(self) -> bool:
        if self.handed and not self.finished:
            self.inbox.put("stop")
            self.thread.join(_STOP_JOIN_S)
            self.finished = True
            return not self.thread.is_alive()
        return True


class _ClassRun:
    def __init__(self, cls, params, info):
        os.makedirs(info["trial_dir"], exist_ok=True)   # the instance may write into it
        self.info = info
        self.clock = _Clock(info)
        self.ckpt = info.get("checkpoint")
        self.instance = None
        self.cls, self.params = cls, params
        self.finished = False

    def next(self):
        try:
            if self.instance is None:
                self.instance = self.cls(self.info["config"], trial_id=self.info["trial_id"],
                                         trial_dir=self.info["trial_dir"], **self.params)
                self.instance.iteration = self.clock.iteration
                if self.ckpt:
                    self.instance.load_checkpoint(_load(self.ckpt))
            metrics = self.instance.step()
            if not isinstance(metrics, dict):
                raise TypeError(f"{self.cls.__name__}.step() must return a dict of metrics, got "
                                f"{type(metrics).__name__}")
            rec = self.clock.stamp(metrics)
            self.instance.iteration = self.clock.iteration
            freq = self.info.get("checkpoint_frequency", 0)
            path = None
            if (freq and self.clock.iteration % freq == 0) or (
                    rec.get("done") and self.info.get("checkpoint_at_end")):
                path = self.save()
            return ("result", {"metrics": rec, "checkpoint": path})
        except BaseException as e:  # noqa: BLE001 - reported with its traceback
            self.finished = True
            return _error_event(e)

    def save(self):
        if self.instance is None:
            return self.ckpt
        tmp = tempfile.mkdtemp(prefix=".tmp_save_", dir=self.info["trial_dir"])
        try:
            out = self.instance.save_checkpoint(tmp)
            if out is None and not os.listdir(tmp):
                return self.ckpt
            ckpt = Checkpoint.from_dict(out) if isinstance(out, dict) else Checkpoint(path=tmp)
            # always copied out of tmp (persist keeps a checkpoint already in the trial's
            # directory where it is, and tmp is in it and goes away below)
            self.ckpt = _persist_copy(ckpt, self.info["trial_dir"], self.clock.iteration).path
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return self.ckpt

    def stop(self) -> bool:
        if self.instance is not None:
            try:
                self.instance.cleanup()
            except Exception:  # noqa: BLE001, S110 - the trial is over either way
                pass
        self.finished = True
        return True


def _load(path: str):
    ckpt = Checkpoint(path=path)
    return ckpt.to_dict() if ckpt.holds_dict() else path


class TrialActor:
    """Runs trials one after another in one worker process."""

    def __init__(self):
        self._trainables: dict = {}   # key -> (trainable, is_class, parameters)
        self._run = None
        self._files: dict = {}     # trial_dir -> TrialFiles of the running trial

    def where(self):
        return socket.gethostname(), os.getpid()

    def start(self, key: str, boxed: list, info: dict):
        """Start a trial; returns its first event."""
        return self.start_many(key, boxed, [info])[0]

    def start_many(self, key: str, boxed: list, infos: list) -> list:
        """Start trials one after another while each ends at its first event (it
        returned or failed without an intermediate report); stop at the first that
        reports, leaving it running. Returns their events (the rest were not started)."""
        if self._run is not None:
            self.stop()
        trainable, is_class, params = self._entry(key, boxed)
        if is_class:
            events = []
            for info in infos:
                run = _ClassRun(trainable, params, info)
                events.append(run.next())
                self._write(info, events[-1], first=True)
                if events[-1][0] == "result":
                    self._run = run
                    break
            return events
        run = _FunctionRun(trainable, params, infos)
        events = run.first()
        for info, ev in zip(infos, events):
            self._write(info, ev, first=True)
        if events[-1][0] == "result":
            self._run = run
        return events

    def _entry(self, key: str, boxed: list):
        entry = self._trainables.get(key)
        if entry is None:
            # the TrainableSpec and with_parameters' values, each put once by the driver
            spec = shoal.get(boxed[0])
            params = dict(zip(spec.parameters, shoal.get(list(boxed[1:])) if boxed[1:] else []))
            entry = (spec.trainable, spec.is_class, params)
            self._trainables = {key: entry}
        return entry

    def _write(self, info: dict, ev: tuple, first: bool = False) -> None:
        """The trial's files: params.json at its start, a line per result."""
        if not info.get("files", True):
            return
        d = info["trial_dir"]
        files = None if first else self._files.get(d)
        if files is None:
            files = self._files[d] = TrialFiles(d)
            if not info.get("checkpoint") and not info.get("iteration"):
                files.write_params(info["config"])
            else:
                os.makedirs(d, exist_ok=True)
        payload = ev[1]
        if payload and "metrics" in payload:
            files.append([payload["metrics"]])
        if ev[0] != "result":
            self._files.pop(d, None)

    def next(self):
        """Let the trial go on to its next event."""
        run = self._run
        ev = run.next()
        self._write(run.info, ev)
        if ev[0] != "result":
            self._run = None
        return ev

    def save(self):
        """A checkpoint of the trial now (a path), or its latest one."""
        return self._run.save() if self._run is not None else None

    def stop(self) -> bool:
        """End the running trial; False if it did not unwind (drop this actor)."""
        if self._run is None:
            return True
        run, self._run = self._run, None
        self._files.pop(run.info["trial_dir"], None)
        return run.stop()
