"""The driver loop of an experiment: start trials on actors, react to their events.

Event-driven: the loop blocks in ``shoal.wait`` on the trials' outstanding
calls (a bounded timeout, for the time budget and the progress table), then
handles every event that is ready: record it, ask the stop criteria and the
scheduler, and send the trial's actor its next call. Actor calls from one
caller run in order, so "stop this trial" and "start the next one" go out
together without waiting for each other.
"""
from __future__ import annotations

import math
import os
import shutil
import time
import uuid

import shoal
from shoal.exceptions import ActorDiedError, ShoalError, TuneError, WorkerCrashedError
from shoal.tune._actor import TrialActor
from shoal.tune._oneshot import may_report, run_trials
from shoal.tune._progress import Progress
from shoal.tune.schedulers import CONTINUE, PAUSE, STOP
from shoal.tune.search import FINISHED
from shoal.tune.trainable import TrainableSpec, _trial_dir_name
from shoal.tune.trial import ERROR, PAUSED, PENDING, RUNNING, TERMINATED, Trial

_WAIT_S = 1.0          # longest block in shoal.wait (time budget, progress table)
_STOP_GRACE_S = 10.0   # at the end, stopping trials get this long before their actors are killed
_BATCH = 16            # trials sent to an actor or a task at once, when they end at once
_BATCH_S = 0.05        # ... then as many as take about this long (by the trials seen so far)
_MAX_BATCH = 256
_BATCH_AFTER = 8       # ... after this many trials all ended at their first event
_SYSTEM_KEYS = {"training_iteration", "time_this_iter_s", "time_total_s", "timestamp",
                "trial_id", "pid", "done"}


class Controller:
    def __init__(self, spec: TrainableSpec, store, exp_dir, tune_config, run_config, searcher,
                 scheduler, trials, limit):
        self.spec, self.store, self.exp_dir = spec, store, exp_dir
        self.tc, self.rc = tune_config, run_config
        self.searcher, self.scheduler = searcher, scheduler
        self.trials: list[Trial] = list(trials)
        self.limit = limit
        self.tag = (None if store.fresh else store.get("tag")) or uuid.uuid4().hex[:5]
        store.put("tag", self.tag)
        self.queue = [t for t in self.trials if t.status == PENDING]   # to (re)start
        self.paused: list[Trial] = [t for t in self.trials if t.status == PAUSED]
        self.inflight: dict = {}     # ObjectRef -> (trial, actor, kind)
        self.stopping: list = []     # refs of stop calls (a Trainer trial tears its gang down)
        self.stop_keys: dict = {}    # trial_id -> the key that stops its current run
        self.actor_of: dict = {}     # trial_id -> actor
        self.idle: list = []
        self.all_actors: list = []
        self.searcher_done = False
        # Trials that end at their first event (a function that returns at once) go
        # to an actor in batches: no round trip per trial. Only with the default
        # searcher, which learns nothing from results.
        from shoal.tune.search import BasicVariantGenerator
        self.batchable = isinstance(searcher, BasicVariantGenerator)
        self.first_event_ends = 0
        self.trial_s = None      # running mean of a batched trial's time (batch sizes)
        # A function that does not name report() likely returns at once: its trials go
        # in batches to plain tasks (pre-started workers, no actor start-up) until one
        # of them reports after all (see _oneshot).
        self.tasks = (self.batchable and not spec.is_class and not spec.actor_resources
                      and not may_report(spec.trainable))
        self.dirty = False
        self.metric_checked = False
        self.progress = Progress(run_config.verbose, tune_config.metric, tune_config.mode)
        self.deadline = (time.monotonic() + tune_config.time_budget_s
                         if tune_config.time_budget_s else None)
        self.key = uuid.uuid4().hex
        bare = TrainableSpec(spec.trainable, dict(spec.resources),
                             {k: None for k in spec.parameters})
        self.box = [shoal.put(bare)] + list(spec.parameters.values())
        res = dict(spec.actor_resources if spec.actor_resources is not None
                   else spec.resources)
        extra = {k: v for k, v in res.items() if k not in ("CPU", "GPU")}
        self.actor_cls = shoal.remote(TrialActor).options(
            num_cpus=res.get("CPU", 1), num_gpus=res.get("GPU", 0), resources=extra or None,
            max_restarts=0)
        self.task_fn = shoal.remote(run_trials).options(
            num_cpus=res.get("CPU", 1), num_gpus=res.get("GPU", 0), resources=extra or None,
            max_retries=0) if self.tasks else None
        self.files = getattr(run_config, "trial_files", None)
        self.exp_name = os.path.basename(exp_dir.rstrip(os.sep))
        ckc = run_config.checkpoint_config
        self.ckpt_opts = {"checkpoint_frequency": ckc.checkpoint_frequency,
                          "checkpoint_at_end": ckc.checkpoint_at_end}

    # ------------------------------------------------------------------ loop
    def run(self):
        try:
            while True:
                self._fill()
                if not self.inflight:
                    if self._nothing_left():
                        break
                    if not self.queue:
                        raise TuneError("the searcher suggests no trial while none is running "
                                        "(a ConcurrencyLimiter holding trials that ended?)")
                    continue
                timeout = _WAIT_S
                if self.deadline is not None:
                    timeout = max(0.0, min(timeout, self.deadline - time.monotonic()))
                refs = list(self.inflight)
                ready, rest = shoal.wait(refs, num_returns=1, timeout=timeout)
                if ready and rest:
                    more, _ = shoal.wait(rest, num_returns=len(rest), timeout=0)
                    ready += more
                for ref in ready:
                    self._handle(ref)
                if self.deadline is not None and time.monotonic() >= self.deadline:
                    self._stop_all("the time budget (time_budget_s) ran out")
                    break
                self._commit()
                self.progress.maybe_show(self.trials)
        finally:
            self._commit()
            if self.stopping:
                shoal.wait(self.stopping, num_returns=len(self.stopping), timeout=_STOP_GRACE_S)
            for a in self.all_actors:
                try:
                    shoal.kill(a)
                except Exception:  # noqa: BLE001, S110 - already gone
                    pass
        self.progress.show(self.trials, final=True)

    def _nothing_left(self) -> bool:
        if self.queue:
            return False
        if self.paused:
            t = self.scheduler.choose_trial_to_run(self.paused, True)
            if t is not None:
                self._resume(t)
                return False
            self._stop_dropped()
            for t in list(self.paused):   # nothing will ever resume them
                self.paused.remove(t)
                self._finish(t, TERMINATED)
            return not self.queue
        return self.searcher_done or self._ask() is None

    def _commit(self):
        if self.dirty:
            self.store.put("searcher_state", self.searcher.get_state())
            self.store.put("scheduler_state", self.scheduler.get_state())
            self.dirty = False
        self.store.commit()

    # ------------------------------------------------------------------ starting
    def _running(self) -> int:
        return len(self.inflight)      # one outstanding call per busy actor

    def _fill(self):
        # batches of tasks queue one deep behind the running ones: a worker goes on
        # to its next batch without waiting for the driver
        while self._running() < (2 * self.limit if self.tasks else self.limit):
            if self.deadline is not None and time.monotonic() >= self.deadline:
                return
            if self.queue:
                if self._batching():
                    self._start_batch()
                else:
                    self._start(self.queue.pop(0))
                continue
            if self.paused:
                t = self.scheduler.choose_trial_to_run(self.paused, self.searcher_done)
                self._stop_dropped()
                if t is not None:
                    self._resume(t)
                    continue
            if self.searcher_done or self._ask() is None:
                return

    def _stop_dropped(self):
        if hasattr(self.scheduler, "trials_to_stop"):
            for t in self.scheduler.trials_to_stop(self.paused):
                self.paused.remove(t)
                t.stopped_early = True
                self._finish(t, TERMINATED)

    def _resume(self, t: Trial):
        self.paused.remove(t)
        self._start(t)

    def _ask(self):
        """A new trial from the searcher, queued; None when there is none now."""
        tid = f"{self.tag}_{len(self.trials):05d}"
        cfg = self.searcher.suggest(tid)
        if cfg == FINISHED:
            self.searcher_done = True
            return None
        if cfg is None:
            return None
        t = Trial(tid, cfg, PENDING, os.path.join(
            self.exp_dir, _trial_dir_name(self.spec.name, tid)))
        self.trials.append(t)
        self.store.add_trial(t, len(self.trials) - 1)
        self.scheduler.on_trial_add(t)
        self.dirty = True
        self.queue.append(t)
        return t

    def _batching(self) -> bool:
        return (self.batchable and (self.tasks or self.first_event_ends >= _BATCH_AFTER)
                and not self.paused and self.deadline is None)

    def _start_batch(self):
        # as many trials as take about _BATCH_S, but no more than an even share of what
        # is left among all the slots (no worker left with a long tail at the end)
        target = _BATCH
        if self.trial_s is not None:
            target = max(1, min(_MAX_BATCH, int(_BATCH_S / max(self.trial_s, 1e-6))))
        slots = 2 * self.limit if self.tasks else self.limit
        left = len(self.queue)
        total = getattr(self.searcher, "total_samples", None)
        if isinstance(total, int) and isinstance(getattr(self.searcher, "index", None), int):
            left += max(0, total - self.searcher.index)
        else:
            left += target * slots
        n = max(1, min(target, -(-left // slots)))
        while len(self.queue) < n and not self.searcher_done and self._ask() is not None:
            pass
        batch, self.queue = self.queue[:n], self.queue[n:]
        if self.tasks:
            for t in batch:
                t.status = RUNNING   # not saved: a restore reruns RUNNING and PENDING alike
            infos = [self._info(t, task=True) for t in batch]
            self.inflight[self.task_fn.remote(self.key, self.box, infos)] = (batch, None, "tasks")
            return
        actor = self._actor()
        infos = [self._info(t) for t in batch]
        for t, info in zip(batch, infos):
            t.status = RUNNING
            self.store.save_status(t)
            self.actor_of[t.trial_id] = actor
        self.inflight[actor.start_many.remote(self.key, self.box, infos)] = (batch, actor, "batch")

    def _actor(self):
        if self.idle:
            return self.idle.pop()
        a = self.actor_cls.remote()
        self.all_actors.append(a)
        return a

    def _start(self, t: Trial, actor=None, checkpoint: str | None = None):
        actor = actor or self._actor()
        info = self._info(t, checkpoint)
        t.status = RUNNING
        self.store.save_status(t)
        self.actor_of[t.trial_id] = actor
        self.inflight[actor.start.remote(self.key, self.box, info)] = (t, actor, "event")

    def _info(self, t: Trial, checkpoint: str | None = None, task: bool = False) -> dict:
        ckpt = checkpoint or t.checkpoint
        files = self.files
        if files is None:     # the default: files for trials on actors, none for batched tasks
            files = not task
        info = {"trial_id": t.trial_id, "trial_name": os.path.basename(t.trial_dir),
                "trial_dir": t.trial_dir, "config": t.config, "checkpoint": ckpt,
                "iteration": t.iteration, "time_total_s": t.last_result.get("time_total_s", 0.0),
                "experiment_name": self.exp_name, "files": files, **self.ckpt_opts}
        if not task:          # a task's trial cannot be stopped; nothing reads a key
            info["stop_key"] = f"shoal-tune/stop/{uuid.uuid4().hex}"
            self.stop_keys[t.trial_id] = info["stop_key"]
        return info

    # ------------------------------------------------------------------ events
    def _handle(self, ref):
        t, actor, kind = self.inflight.pop(ref)
        if kind == "tasks":
            self._handle_tasks(ref, t)
            return
        if kind == "batch":
            self._handle_batch(ref, t, actor)
            return
        try:
            ev = shoal.get(ref)
        except (ActorDiedError, WorkerCrashedError) as e:
            self._drop_actor(actor)
            self._failed(t, f"{type(e).__name__}: the trial's process died ({e})",
                         f"{type(e).__name__}: {e}")
            return
        except ShoalError as e:
            self._drop_actor(actor)
            self._failed(t, f"{type(e).__name__}: {e}", getattr(e, "remote_traceback", str(e)))
            return
        if kind == "save":
            self._paused(t, actor, ev)
            return
        self._event(t, actor, ev, kind == "event" and t.iteration == 0)

    def _handle_batch(self, ref, batch, actor):
        try:
            events = shoal.get(ref)
        except ShoalError:
            # the actor died somewhere in the batch, which one is unknown: its trials
            # run again one by one (no batches from now on), where a culprit fails alone
            self._drop_actor(actor)
            self.batchable = False
            for t in batch:
                t.status = PENDING
                self.store.save_status(t)
            self.queue[:0] = batch
            return
        for i, (t, ev) in enumerate(zip(batch, events)):
            if i == len(events) - 1 and ev[0] == "result":
                self.first_event_ends = 0     # this one goes on: no more batches
                self._result(t, actor, ev[1])
                break
            self._event(t, None, ev, True)
        for t in batch[len(events):]:         # not started: back to the queue
            t.status = PENDING
            self.store.save_status(t)
        self.queue[:0] = batch[len(events):]
        if events and events[-1][0] != "result":
            self._release(actor)

    def _handle_tasks(self, ref, batch):
        try:
            events = shoal.get(ref)
        except ShoalError:
            # the task's worker died somewhere in the batch: its trials run again on
            # actors one by one, where a culprit fails alone
            events, self.tasks, self.batchable = [], False, False
        for t, ev in zip(batch, events):
            if ev[0] == "reports":      # it reports after all: actors from now on
                self.tasks = False
                break
            self._event(t, None, ev, True)
        done = sum(1 for ev in events if ev[0] != "reports")
        for t in batch[done:]:          # not run (or cut short): back to the queue
            t.status = PENDING
            self.store.save_status(t)
        self.queue[:0] = batch[done:]

    def _event(self, t, actor, ev, first: bool):
        """A trial's event; ``actor`` None: the actor is released by the caller."""
        what, payload = ev
        if first and what == "done" and payload is not None:
            dt = payload["metrics"].get("time_this_iter_s")
            if isinstance(dt, float):
                self.trial_s = dt if self.trial_s is None else 0.8 * self.trial_s + 0.2 * dt
        if first:
            self.first_event_ends = self.first_event_ends + 1 if what != "result" else 0
        if what == "result" and actor is None:
            raise TuneError("internal: a batched trial reported mid-batch")
        if what == "result":
            self._result(t, actor, payload)
        elif what == "done":
            rec = None
            if payload is not None:    # _finish saves and publishes the trial
                rec = self._record(t, payload, save=False, publish=False)
            if actor is not None:
                self._release(actor)
            self._finish(t, TERMINATED, rec, publish=rec)
        else:
            if actor is not None:
                self._release(actor)
            self._failed(t, payload["error"], payload["traceback"])

    def _record(self, t: Trial, payload: dict, save: bool = True, publish: bool = True) -> dict:
        rec = payload["metrics"]
        if not self.metric_checked:
            self._check_metrics(t, rec)
        ckpt = payload.get("checkpoint")
        t.last_result = rec
        t.history.append(rec)
        self._last_line = self.store.add_result(t, rec, ckpt)
        if ckpt:
            t.checkpoint = ckpt
            t.checkpoints.append((ckpt, {k: v for k, v in rec.items()
                                         if isinstance(v, (int, float, str, bool))}))
            self._prune_checkpoints(t)
        if save:
            self.store.save_trial(t, self._last_line)
        self.progress.result(t, rec)
        if publish:
            self._publish(t, rec)
        return rec

    def _publish(self, t: Trial, rec: dict | None = None) -> None:
        """Show the trial in shoal.state (the dashboard's tuning page, metrics)."""
        shoal.state.report_run("tune", t.trial_id, rec, status=t.status,
                               experiment=self.exp_name, config=t.config)

    def _check_metrics(self, t: Trial, rec: dict):
        wanted = []
        if self.tc.metric:
            wanted.append(("TuneConfig.metric", self.tc.metric))
        if isinstance(self.rc.stop, dict):
            wanted += [("RunConfig.stop", k) for k in self.rc.stop]
        for what, key in wanted:
            if key not in rec:
                keys = sorted(k for k in rec if k not in _SYSTEM_KEYS)
                raise TuneError(f"{what}={key!r} is not among the metrics trial {t.trial_id} "
                                f"reported: {keys} (and the automatic {sorted(_SYSTEM_KEYS)}); "
                                f"report {key!r} or change {what}")
        self.metric_checked = True

    def _result(self, t: Trial, actor, payload):
        rec = self._record(t, payload)
        self.searcher.on_trial_result(t.trial_id, rec)
        if rec.get("done") or self._should_stop(t, rec):
            self._end_early(t, actor, rec, by_scheduler=False)
            return
        decision = self.scheduler.on_trial_result(t, rec)
        self.dirty = True
        if decision == CONTINUE:
            self.inflight[actor.next.remote()] = (t, actor, "event")
        elif decision == STOP:
            # a trial stopped at the scheduler's horizon (max_t) ran to its end
            horizon = getattr(self.scheduler, "max_t", None)
            t_attr = getattr(self.scheduler, "time_attr", None)
            done = horizon is not None and isinstance(rec.get(t_attr), (int, float)) \
                and rec[t_attr] >= horizon
            self._end_early(t, actor, rec, by_scheduler=not done)
        elif decision == PAUSE:
            if t.exploit is not None:
                self._exploit(t, actor)
            else:
                self.inflight[actor.save.remote()] = (t, actor, "save")
        else:
            raise TuneError(f"{type(self.scheduler).__name__} returned {decision!r}; a "
                            "scheduler returns CONTINUE, PAUSE or STOP")

    def _should_stop(self, t: Trial, rec: dict) -> bool:
        stop = self.rc.stop
        if stop is None:
            return False
        if callable(stop):
            return bool(stop(t.trial_id, rec))
        for k, v in stop.items():
            got = rec.get(k)
            if isinstance(got, (int, float)) and got >= v:
                return True
        return False

    def _end_early(self, t, actor, rec, by_scheduler: bool):
        self._stop_call(actor)
        self._release(actor)
        t.stopped_early = by_scheduler
        self._finish(t, TERMINATED, rec)

    def _exploit(self, t: Trial, actor):
        """PBT: continue ``t`` from the donor's checkpoint with the explored config."""
        new_config, donor_ckpt = t.exploit
        t.exploit = None
        dest = os.path.join(t.trial_dir, f"checkpoint_{t.iteration:06d}")
        if os.path.abspath(donor_ckpt) != os.path.abspath(dest):
            tmp = dest + ".tmp_exploit"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(donor_ckpt, tmp)
            shutil.rmtree(dest, ignore_errors=True)
            os.rename(tmp, dest)
        t.config = new_config
        t.checkpoint = dest
        self.store.save_config(t)
        self._stop_call(actor)
        self._start(t, actor=actor, checkpoint=dest)

    def _paused(self, t: Trial, actor, ckpt):
        if ckpt:
            t.checkpoint = ckpt
        self._stop_call(actor)
        self._release(actor)
        t.status = PAUSED
        self.store.save_trial(t)
        self.paused.append(t)

    def _finish(self, t: Trial, status: str, result=None, publish: dict | None = None):
        t.status = status
        self.actor_of.pop(t.trial_id, None)
        self.store.save_trial(t)
        last = result if result is not None else (t.last_result or None)
        if status == ERROR:
            self.scheduler.on_trial_error(t)
            self.searcher.on_trial_complete(t.trial_id, None, error=True)
        else:
            self.scheduler.on_trial_complete(t, last)
            self.searcher.on_trial_complete(t.trial_id, last, error=False)
        self.dirty = True
        self.progress.finished(t)
        self._publish(t, publish)

    def _failed(self, t: Trial, error: str, tb: str):
        t.num_failures += 1
        fc = self.rc.failure_config
        self.progress.failed(t, error)
        if fc.max_failures == -1 or t.num_failures <= fc.max_failures:
            if t.checkpoint:
                _rewind_trial(self.store, t, self.files)
            else:
                self.store.truncate(t, 0, self.files)
            t.status = PENDING
            self.store.save_trial(t)
            self.queue.append(t)
            return
        t.error, t.error_traceback = error, tb
        self._finish(t, ERROR)
        if fc.fail_fast:
            self._stop_all("FailureConfig(fail_fast=True) and a trial failed")
            raise TuneError(f"trial {t.trial_id} failed and fail_fast is set: {error}\n\n{tb}")

    def _release(self, actor):
        if self.tc.reuse_actors:
            self.idle.append(actor)
        else:
            self._drop_actor(actor)

    def _drop_actor(self, actor):
        try:
            shoal.kill(actor)
        except Exception:  # noqa: BLE001, S110 - already dead
            pass
        if actor in self.all_actors:
            self.all_actors.remove(actor)

    def _prune_checkpoints(self, t: Trial):
        keep = self.rc.checkpoint_config.num_to_keep
        if keep is None or len(t.checkpoints) <= keep:
            return
        ckc = self.rc.checkpoint_config
        attr = ckc.checkpoint_score_attribute
        entries = list(t.checkpoints)
        if attr:
            def score(e):
                v = e[1].get(attr)
                ok = isinstance(v, (int, float)) and not math.isnan(v)
                return (ok, (v if ckc.checkpoint_score_order == "max" else -v) if ok else 0)
            best = sorted(entries[:-1], key=score, reverse=True)[:keep - 1]
        else:
            best = entries[-keep:-1]
        kept = set(p for p, _ in best) | {entries[-1][0]}
        for p, _ in entries:
            if p not in kept:
                shutil.rmtree(p, ignore_errors=True)
        t.checkpoints = [e for e in entries if e[0] in kept]

    def _stop_call(self, actor):
        ref = actor.stop.remote()
        if self.stopping:     # forget the stop calls already done
            _, self.stopping = shoal.wait(self.stopping, num_returns=len(self.stopping),
                                          timeout=0)
        self.stopping.append(ref)

    def _stop_all(self, why: str):
        # Running trials get their stop key (a Trainer trial ends its gang) and a stop
        # call; after a bounded grace their actors are killed.
        store = shoal.get_kv_store()
        for ref, (t, actor, _) in list(self.inflight.items()):
            for x in (t if isinstance(t, list) else [t]):
                if x.trial_id in self.stop_keys:
                    store.set(self.stop_keys[x.trial_id], b"1")
            if actor is not None:     # a batch of tasks ends by itself
                self._stop_call(actor)
        if self.inflight:
            shoal.wait(list(self.inflight), num_returns=len(self.inflight), timeout=_STOP_GRACE_S)
        for ref, (t, actor, _) in list(self.inflight.items()):
            for x in (t if isinstance(t, list) else [t]):
                if x.status == RUNNING:
                    x.stopped_early = True
                    self._finish(x, TERMINATED)
        self.inflight.clear()
        for t in self.queue + self.paused:
            t.stopped_early = True
            self._finish(t, TERMINATED)
        self.queue, self.paused = [], []
        self.progress.note(f"stopping: {why}")


def _rewind_trial(store, t: Trial, files: bool | None):
    try:
        it = int(os.path.basename(t.checkpoint).rsplit("_", 1)[1])
    except (IndexError, ValueError):
        it = t.iteration
    store.truncate(t, it, files)
