"""Trials that end at once (a function that returns its result without an
intermediate ``report``), run in batches as plain tasks.

Tasks run on the cluster's pre-started workers, so a sweep of short trials
pays no actor start-up and no round trip per trial: a task runs its batch one
trial after another in its own thread and writes their files. Whether a
function reports is known only by running it; a trial that calls ``report``
here is cut short at that call (``_Reports``) and handed back to the driver,
which runs it again from the start on a trial actor, and sends every later
trial to actors too. The driver speculates only for a function whose code
does not name ``report``, so the cut (one trial's first iteration, once) is rare.
"""
from __future__ import annotations

import types

import shoal
from shoal.tune._actor import _Clock, _error_event
from shoal.tune._store import TrialFiles, dumps
from shoal.tune.trainable import TrialContext, _set_session

_cache: dict = {}    # key -> (trainable, parameters), one experiment per worker process


class _Reports(BaseException):
    """Raised in ``report`` of a batched trial: it must run on an actor."""


class _Session:
    def __init__(self, info):
        self.info = info
        self.context = TrialContext(info["trial_id"], info["trial_name"], info["trial_dir"],
                                    info.get("experiment_name", ""))

    def report(self, metrics, checkpoint):
        raise _Reports()

    def get_checkpoint(self):
        return None


def run_trials(key: str, boxed: list, infos: list) -> list:
    """Run fresh function trials one after another; their events. A trial that
    reports ends the batch with ("reports", None); the trials after it are not run."""
    entry = _cache.get(key)
    if entry is None:
        spec = shoal.get(boxed[0])
        params = dict(zip(spec.parameters, shoal.get(list(boxed[1:])) if boxed[1:] else []))
        entry = (spec.trainable, params)
        _cache.clear()
        _cache[key] = entry
    fn, params = entry
    events = []
    for info in infos:
        clock = _Clock(info)
        _set_session(_Session(info))
        try:
            out = fn(info["config"], **params)
            rec = {"metrics": clock.stamp(out), "checkpoint": None} if isinstance(out, dict) \
                else None
            ev = ("done", rec)
        except _Reports:
            events.append(("reports", None))
            break
        except BaseException as e:  # noqa: BLE001 - reported to the driver with its traceback
            ev = _error_event(e)
        finally:
            _set_session(None)
        if info.get("files", True):
            _write(info, ev)
        events.append(ev)
    return events


def _write(info: dict, ev: tuple) -> None:
    files = TrialFiles(info["trial_dir"])
    files.write_params(info["config"])
    if ev[1] is not None:
        rec = ev[1]["metrics"]
        files.append([rec], [dumps(rec)])


def may_report(fn) -> bool:
    """Whether ``fn``'s code (or code nested in it) names ``report``: then its
    trials go to actors from the start."""
    if not isinstance(fn, types.FunctionType):
        return True      # a class, a Trainer, a callable object: actors
    todo = [fn.__code__]
    while todo:
        c = todo.pop()
        if "report" in c.co_names or "get_checkpoint" in c.co_names:
            return True
        todo.extend(x for x in c.co_consts if isinstance(x, types.CodeType))
    return False

