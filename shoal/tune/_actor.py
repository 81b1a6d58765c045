"""The trial actor: runs one trial at a time, then the next one (``reuse_actors``).

The driver calls ``start`` (returns the trial's first event), then ``next``
after each result it accepted, ``save`` when it wants a checkpoint now and
``stop`` to end the trial early. Events are ("result", record),
("done", record or None) and ("error", {...}). A function trainable runs in
a thread and pauses in ``report`` until the driver's next call: the driver
decides (continue, stop, pause, exploit) before the trial goes on, so a
scheduler's decision lands at the iteration it was made for.
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
    def __init__(self, fn, params, info):
        self.fn, self.params, self.info = fn, params, info
        self.clock = _Clock(info)
        self.ckpt = info.get("checkpoint")
        self.context = TrialContext(info["trial_id"], info["trial_name"], info["trial_dir"],
                                    info.get("experiment_name", ""))
        self.out: queue.SimpleQueue = queue.SimpleQueue()
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._main, daemon=True,
                                       name=f"trial-{info['trial_id']}")
        self.started = False
        self.finished = False

    # -- the user's thread
    def report(self, metrics, checkpoint):
        rec = self.clock.stamp(metrics)
        path = None
        if checkpoint is not None:
            path = persist(checkpoint, self.info["trial_dir"], rec["training_iteration"])
            self.ckpt = path
        self.out.put(("result", {"metrics": rec, "checkpoint": path}))
        if self.inbox.get() == "stop":
            raise _StopTrial()
        self.clock.last = time.monotonic()  # the driver's time is not the trial's

    def get_checkpoint(self):
        return Checkpoint(path=self.ckpt) if self.ckpt else None

    def _main(self):
        _set_session(self)
        try:
            out = self.fn(self.info["config"], **self.params)
            rec = None
            if isinstance(out, dict):     # a returned dict is the final result, as in Ray Tune
                rec = {"metrics": self.clock.stamp(out), "checkpoint": None}
            self.out.put(("done", rec))
        except _StopTrial:
            self.out.put(("stopped", None))
        except BaseException as e:  # noqa: BLE001 - reported to the driver with its traceback
            self.out.put(_error_event(e))
        finally:
            _set_session(None)

    # -- the actor's thread
    def next(self):
        if not self.started:
            self.started = True
            self.thread.start()
        else:
            self.inbox.put("continue")
        ev = self.out.get()
        if ev[0] != "result":
            self.finished = True
        return ev

    def save(self):
        return self.ckpt

    def stop(self) -> bool:
        if self.started and not self.finished:
            self.inbox.put("stop")
            self.thread.join(_STOP_JOIN_S)
            self.finished = True
            return not self.thread.is_alive()
        return True


class _ClassRun:
    def __init__(self, cls, params, info):
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
        self._files = None

    def where(self):
        return socket.gethostname(), os.getpid()

    def start(self, key: str, boxed: list, info: dict):
        """Start a trial; returns its first event."""
        if self._run is not None:
            self._run.stop()
        entry = self._trainables.get(key)
        if entry is None:
            # the TrainableSpec and with_parameters' values, each put once by the driver
            spec = shoal.get(boxed[0])
            params = dict(zip(spec.parameters, shoal.get(list(boxed[1:])) if boxed[1:] else []))
            entry = (spec.trainable, spec.is_class, params)
            self._trainables = {key: entry}
        trainable, is_class, params = entry
        os.makedirs(info["trial_dir"], exist_ok=True)
        self._files = TrialFiles(info["trial_dir"])
        if not info.get("checkpoint") and not info.get("iteration"):
            self._files.write_params(info["config"])
        self._run = (_ClassRun if is_class else _FunctionRun)(trainable, params, info)
        return self.next()

    def start_many(self, key: str, boxed: list, infos: list) -> list:
        """Start trials one after another while each ends at its first event (it
        returned or failed without an intermediate report); stop at the first that
        reports, leaving it running. Returns their events (the rest were not started)."""
        events = []
        for info in infos:
            ev = self.start(key, boxed, info)
            events.append(ev)
            if ev[0] == "result":
                break
        return events

    def next(self):
        """Let the trial go on to its next event."""
        ev = self._run.next()
        if ev[1] is not None and "metrics" in ev[1]:
            self._files.append(ev[1]["metrics"])
        if ev[0] != "result":
            self._run = None
            self._files.close()
        else:
            self._files.flush()
        return ev

    def save(self):
        """A checkpoint of the trial now (a path), or its latest one."""
        return self._run.save() if self._run is not None else None

    def stop(self) -> bool:
        """End the running trial; False if it did not unwind (drop this actor)."""
        if self._run is None:
            return True
        ok = self._run.stop()
        self._run = None
        self._files.close()
        return ok
