"""The driver of an elastic run: keep between ``min`` and ``max`` workers training.

Every worker is an actor of its own (no gang placement group: the run starts
with whatever fits, at least ``min``); ``max`` actors are always asked for,
so one that could not be placed starts as soon as a slot frees and joins at
the next step boundary. The driver publishes each membership as a new
generation (``_membership``); workers re-form their group from it. A dead
worker is dropped at once and a replacement is asked for; a worker whose
loop raised is dropped too, and the same exception ``max_repeated_failures``
times stops the run with its traceback. Losing every member at once leaves
nobody holding the committed state: new workers continue only from a
reported checkpoint, and without one the run stops with an error.
"""
from __future__ import annotations

import os
import time
import uuid

import shoal
from shoal.exceptions import ActorDiedError, ShoalError, TaskError, TrainingFailedError
from shoal.collective.membership import Generations, describe_change
from shoal.train.context import TrainContext

_TICK_S = 0.02


class _Slot:
    def __init__(self, wid: int, actor):
        self.wid, self.actor = wid, actor
        self.where_ref = actor.where.remote()
        self.where = None
        self.run_ref = None
        self.asked = time.monotonic()


class ElasticDriver:
    """One elastic run of ``trainer`` (see the module docstring)."""

    def __init__(self, trainer, run_dir: str, manager, progress):
        from shoal.train.trainer import _TrainWorker, _dumps_by_value
        self.t, self.run_dir, self.manager, self.progress = trainer, run_dir, manager, progress
        self.cfg = trainer.elastic_config
        self.run_id = uuid.uuid4().hex[:12]
        self.store = shoal.get_kv_store()
        self.report_prefix = f"shoal-train/{self.run_id}/0/report"
        self.gens = Generations(self.store, f"shoal-train/{self.run_id}/elastic")
        self.actor_cls = shoal.remote(_TrainWorker)
        self.payload = _dumps_by_value(trainer.train_loop, trainer.config)
        self.slots: dict[int, _Slot] = {}
        self.next_wid = 0
        self.changes: list[dict] = []
        self.failures: dict[str, int] = {}
        self.next_index = 0
        self.lost: dict[int, str] = {}        # wid -> why, since the last generation
        self.done: set[int] = set()
        self.below_min_since: float | None = None

    # ------------------------------------------------------------ actors
    def _spawn(self) -> None:
        res = self.t.resources_per_worker
        extra = {k: v for k, v in res.items() if k not in ("CPU", "GPU")}
        actor = self.actor_cls.options(num_cpus=res.get("CPU", 0), num_gpus=res.get("GPU", 0),
                                       resources=extra or None, max_restarts=0).remote()
        self.slots[self.next_wid] = _Slot(self.next_wid, actor)
        self.next_wid += 1

    def _kill(self, slot: _Slot) -> None:
        try:
            shoal.kill(slot.actor)
        except Exception:  # noqa: BLE001, S110 - already dead
            pass

    def _placed(self, timeout: float = 0.0) -> list[int]:
        """Slots whose actor started since the last call (their ``where`` is known now)."""
        waiting = {s.where_ref: s for s in self.slots.values() if s.where is None}
        if not waiting:
            return []
        ready, _ = shoal.wait(list(waiting), num_returns=len(waiting), timeout=timeout)
        out = []
        for ref in ready:
            s = waiting[ref]
            try:
                s.where = shoal.get(ref)
                out.append(s.wid)
            except ShoalError as e:          # died before it started: ask again
                del self.slots[s.wid]
                self._note_failure(s.wid, e)
                self._spawn()
        return sorted(out)

    def _start(self, wid: int) -> None:
        t = self.t
        s = self.slots[wid]
        start = self.manager.latest
        ctx = TrainContext(0, 1, 0, 1, 0, os.path.basename(self.run_dir), 0)
        setup = {"context": ctx, "strategy": t.strategy, "group": f"train-{self.run_id}",
                 "run_dir": self.run_dir, "report_prefix": self.report_prefix,
                 "checkpoint": start.path if start is not None else None,
                 "report_index": self.next_index, "timeout": t.collective_timeout,
                 "use_gpu": bool(t.resources_per_worker.get("GPU")),
                 "elastic": {"prefix": self.gens.prefix, "wid": wid,
                             "join_timeout": t.collective_timeout + self.cfg.min_workers_timeout}}
        s.run_ref = s.actor.run.remote(self.payload, setup)

    # ------------------------------------------------------------ failures
    def _note_failure(self, wid: int, error: BaseException) -> None:
        """Count a worker's exception; the same one too often stops the run."""
        if not isinstance(error, TaskError):
            return          # a death (SIGKILL, lost node) is what elastic runs absorb
        from shoal.train.trainer import _describe
        sig = error.cause_repr
        self.failures[sig] = self.failures.get(sig, 0) + 1
        if self.failures[sig] >= self.cfg.max_repeated_failures:
            raise _Stop(TrainingFailedError(
                f"worker {wid} failed with the same exception {self.failures[sig]} times "
                f"(ElasticConfig.max_repeated_failures={self.cfg.max_repeated_failures}), so the "
                f"run stops instead of replacing it again: {_describe(error)}"), error)

    # ------------------------------------------------------------ run
    def run(self):
        """Train to the end; returns (error or None, membership changes)."""
        try:
            for _ in range(self.t.max_workers):
                self._spawn()
            self._first_generation()
            while True:
                if self._tick():
                    break
            return None
        except _Stop as stop:
            return stop.error
        finally:
            from shoal.train.trainer import _drain_reports
            self.next_index = _drain_reports(self.t, self.store, self.report_prefix,
                                             self.next_index, self.manager, self.progress,
                                             self.run_dir)
            self._collect_resumed()
            for s in self.slots.values():
                self._kill(s)
            self.gens.clear()
            for k in self.store.keys(self.report_prefix + "/"):
                self.store.delete(k)

    def _missing_text(self, placed: int) -> str:
        res = self.t.resources_per_worker
        return (f"only {placed} of the minimum {self.t.min_workers} workers could be placed "
                f"within {self.cfg.min_workers_timeout}s (ElasticConfig.min_workers_timeout): "
                f"each needs {res} and the cluster has {shoal.available_resources()} free. "
                "Add capacity, lower the minimum of num_workers or resources_per_worker")

    def _first_generation(self) -> None:
        t0 = time.monotonic()
        reached = None
        while True:
            for wid in self._placed(timeout=0.05):
                self._start(wid)        # it builds its model and data, then says it is ready
            self._check_runs()
            ready = sorted(w for w in self.gens.ready() if w in self.slots)
            now = time.monotonic()
            if len(ready) >= self.t.max_workers:
                break
            if len(ready) >= self.t.min_workers:
                reached = reached or now
                if now - reached >= self.cfg.settle_s:
                    break
            elif now - t0 > self.cfg.min_workers_timeout:
                placed = sum(1 for s in self.slots.values() if s.where is not None)
                if placed >= self.t.min_workers:
                    raise _Stop(TrainingFailedError(
                        f"{placed} workers were placed but only {len(ready)} of the minimum "
                        f"{self.t.min_workers} reached their first elastic.run call within "
                        f"{self.cfg.min_workers_timeout}s (ElasticConfig.min_workers_timeout): "
                        "the others are still building their model and data (a loaded "
                        "machine: raise min_workers_timeout), or the loop never calls a "
                        "function decorated with elastic.run"))
                raise _Stop(TrainingFailedError(self._missing_text(placed)))
        self._publish(ready, left=[], joined=ready, reason="start")

    def _publish(self, members, left, joined, reason) -> None:
        old = self.gens.members
        limit = self.cfg.max_resets
        if self.gens.generation >= 0 and limit is not None and len(self.changes) > limit:
            raise _Stop(TrainingFailedError(
                f"the gang changed membership more than ElasticConfig.max_resets={limit} "
                f"times; the last change: {reason}"))
        g = self.gens.publish(members, {w: self.slots[w].where for w in members})
        self.changes.append({
            "generation": g, "time": time.time(), "reason": reason,
            "left": [{"worker": w, "rank": old.index(w), "why": self.lost.get(w, "")}
                     for w in left if w in old],
            "joined": list(joined), "world_size": len(members),
            "previous_world_size": len(old), "resumed_step": None, "took_s": None,
            "_t0": time.monotonic()})
        self.lost = {}

    def _check_runs(self) -> None:
        """Collect finished runs: a success marks the worker done, a failure drops it."""
        running = {s.run_ref: s for s in self.slots.values() if s.run_ref is not None}
        ready = []
        if running:
            ready, _ = shoal.wait(list(running), num_returns=len(running), timeout=_TICK_S)
        else:
            time.sleep(_TICK_S)
        for ref in ready:
            s = running[ref]
            s.run_ref = None
            try:
                shoal.get(ref)
                self.done.add(s.wid)
                continue
            except (TaskError, ActorDiedError, ShoalError) as e:
                error = e
            del self.slots[s.wid]
            self._kill(s)
            self.lost[s.wid] = _why(error)
            self._note_failure(s.wid, error)
            if not self.done:
                self._spawn()            # a replacement starts when a slot frees

    def _tick(self) -> bool:
        self._check_runs()
        from shoal.train.trainer import _drain_reports
        self.next_index = _drain_reports(self.t, self.store, self.report_prefix,
                                         self.next_index, self.manager, self.progress,
                                         self.run_dir)
        self._collect_resumed()
        members = self.gens.members
        if self.done:
            # the loop ended on some rank: the job is finishing; no more changes. Members of a
            # generation that never started (added as the others finished) have nothing to do
            if self.gens.resumed(self.gens.generation) is None:
                for w in members:
                    if w not in self.done and w in self.slots:
                        self._kill(self.slots.pop(w))
            return all(w in self.done or w not in self.slots for w in members)
        for wid in self._placed():
            self._start(wid)
        self._drop_hung(members)
        alive = [w for w in members if w in self.slots]
        left = [w for w in members if w not in self.slots]
        room = self.t.max_workers - len(alive)
        joiners = sorted(w for w in self.gens.ready()
                         if w in self.slots and w not in members)[:max(room, 0)]
        if not left and not joiners:
            self.below_min_since = None
            return False
        new = alive + joiners
        if not alive and joiners and self.manager.latest is None and not self._nothing_committed(left):
            # every worker holding the committed state is gone and nothing is on disk: new
            # workers would start from step 0 and silently lose the training so far
            raise _Stop(TrainingFailedError(
                f"every worker of generation {self.gens.generation} (holding the run's "
                f"committed state) was lost at once ({len(left)} of them: "
                + "; ".join(f"worker {w}: {self.lost.get(w, 'lost')}" for w in left)
                + ") and the run reported no checkpoint, so it cannot continue. Report a "
                "checkpoint every few steps (report(..., checkpoint=)) and load "
                "get_checkpoint() in the loop: new workers then continue from it"))
        if len(new) < self.t.min_workers:
            now = time.monotonic()
            self.below_min_since = self.below_min_since or now
            if now - self.below_min_since > self.cfg.min_workers_timeout:
                raise _Stop(TrainingFailedError(self._missing_text(len(new))))
            return False
        self.below_min_since = None
        reason = ", ".join(filter(None, [
            f"{len(left)} left" if left else "", f"{len(joiners)} joined" if joiners else ""]))
        self._publish(new, left=left, joined=joiners, reason=reason)
        return False

    def _nothing_committed(self, left) -> bool:
        """Every lost worker's loop raised before committing a step: new workers starting
        from step 0 lose nothing (a repeating exception is stopped by max_repeated_failures)."""
        store, prefix = self.gens.store, self.gens.prefix
        for w in left:
            key = f"{prefix}/raised/{w}"
            try:
                if not store.check([key]) or int(store.get(key, timeout=1)) != 0:
                    return False
            except (ValueError, ShoalError):
                return False
        return True

    def _drop_hung(self, members) -> None:
        """Members that others reported broken and that did not report themselves within
        the collective timeout are stuck (alive, not progressing): kill them."""
        reports = self.gens.failures()
        if not reports:
            self._first_report = None
            return
        now = time.monotonic()
        first = getattr(self, "_first_report", None) or now
        self._first_report = first
        if now - first < self.t.collective_timeout:
            return
        for w in members:
            if w in self.slots and w not in reports:
                self._kill(self.slots[w])       # its run ref fails next tick: a death
        self._first_report = None

    def _collect_resumed(self) -> None:
        for ch in self.changes:
            if ch["resumed_step"] is not None:
                continue
            rec = self.gens.resumed(ch["generation"])
            if rec is None:
                continue
            ch["resumed_step"] = rec["step"]
            ch["took_s"] = round(time.monotonic() - ch.pop("_t0"), 3)
            if self.t.run_config.verbose:
                print("[shoal.train] " + describe_change(ch), flush=True)


def _why(error: BaseException) -> str:
    if isinstance(error, TaskError):
        return f"raised {error.cause_repr}"[:200]
    return f"{type(error).__name__}: {error}"[:200]


class _Stop(Exception):  # noqa: N818 - internal control flow, never seen by users
    def __init__(self, error: BaseException, cause: BaseException | None = None):
        super().__init__(str(error))
        self.error = error
        if cause is not None:
            error.__cause__ = cause
