"""A ``shoal.train.Trainer`` as a trainable: each trial trains on its own gang.

The trial's actor takes no CPU itself; it runs ``Trainer.fit()`` (which
reserves the gang's placement group) and relays rank 0's reports, read from
the run's ``result.json`` as they are appended, as the trial's results. A
trial the scheduler stops sets a key in the cluster's store; a watcher
thread on each rank ends that rank's process, and a gang restarted after it
returns at once, so ``fit`` ends within one restart.
"""
from __future__ import annotations

import json
import os
import threading
import time

from shoal.tune.trainable import TrainableSpec, _session

_TAIL_S = 0.1      # how often the relay looks for rank 0's next report
_WATCH_S = 0.25    # how often a rank looks for its trial's stop key
_STOP_WAIT_S = 25.0  # a stopped trial waits this long for its gang to be torn down


def is_trainer(obj) -> bool:
    t = type(obj)
    return t.__name__ == "Trainer" and t.__module__.startswith("shoal.train")


def trainer_spec(trainer) -> TrainableSpec:
    """The TrainableSpec of a Trainer: what each trial needs in all (the gang) for
    the concurrency limit; the trial actor itself takes none."""
    need: dict = {}
    for k, v in trainer.resources_per_worker.items():
        need[k] = need.get(k, 0) + v * trainer.num_workers
    return TrainableSpec(_TrainerTrial(trainer), need, {}, actor_resources={"CPU": 0})


class _StopWatch:
    """Runs on each rank: ends the loop (or its process) once the trial is stopped."""

    def __init__(self, loop, key):
        self.loop, self.key = loop, key

    def __call__(self, config):
        import shoal
        store = shoal.get_kv_store()
        if store.check([self.key]):
            return None          # a gang restarted after the stop: nothing more to do
        threading.Thread(target=self._watch, args=(store,), daemon=True).start()
        return self.loop(config) if _takes_config(self.loop) else self.loop()

    def _watch(self, store):
        # store.check, not a blocking store.wait: a wait would hold the process's one
        # connection to the store, which rank 0's reports need.
        while True:
            time.sleep(_WATCH_S)
            try:
                if store.check([self.key]):
                    break
            except Exception:  # noqa: BLE001 - the store went away with the cluster
                return
        os._exit(0)


def _takes_config(fn) -> bool:
    import inspect
    try:
        return len(inspect.signature(fn).parameters) > 0
    except (TypeError, ValueError):
        return True


class _TrainerTrial:
    """The function a Trainer trial runs inside its actor."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.__name__ = getattr(trainer.train_loop, "__name__", "Trainer")

    def __call__(self, config):
        import shoal
        import shoal.train as st
        from shoal.tune.checkpoint import Checkpoint
        sess = _session()
        tr = self.trainer
        ctx = sess.context
        stop_key = sess.info["stop_key"]     # set by the driver or below to end the gang
        loop_config = dict(tr.config)
        loop_config.update(config.get("train_loop_config", config))
        ckpt = sess.get_checkpoint()
        run_dir = os.path.join(ctx.trial_dir, "trainer")
        trainer = st.Trainer(
            _StopWatch(tr.train_loop, stop_key), num_workers=tr.num_workers,
            resources_per_worker=tr.resources_per_worker, strategy=tr.strategy,
            config=loop_config, failure_config=tr.failure_config,
            run_config=st.RunConfig(name="trainer", storage_path=ctx.trial_dir,
                                    checkpoint_config=tr.run_config.checkpoint_config,
                                    verbose=0),
            placement_strategy=tr.placement_strategy,
            collective_timeout=tr.collective_timeout,
            resume_from_checkpoint=st.Checkpoint(path=ckpt.path) if ckpt else None)
        outcome: dict = {}
        done = threading.Event()

        def fit():
            try:
                outcome["result"] = trainer.fit()
            except BaseException as e:  # noqa: BLE001 - re-raised in the trial's thread
                outcome["error"] = e
            finally:
                done.set()

        threading.Thread(target=fit, daemon=True).start()
        path = os.path.join(run_dir, "result.json")
        offset = 0
        store = shoal.get_kv_store()
        try:
            while True:
                finished = done.wait(_TAIL_S)
                offset = self._relay(path, offset, Checkpoint)
                if finished:
                    break
        except BaseException:
            store.set(stop_key, b"1")     # stopped by the scheduler: end the gang
            done.wait(_STOP_WAIT_S)
            raise
        finally:
            if done.is_set():
                store.delete(stop_key)
        if "error" in outcome:
            raise outcome["error"]
        return None

    def _relay(self, path, offset, Checkpoint):
        from shoal.tune.trainable import report
        if not os.path.exists(path) or os.path.getsize(path) <= offset:
            return offset
        with open(path) as f:
            f.seek(offset)
            data = f.read()
        end = data.rfind("\n") + 1
        for line in data[:end].splitlines():
            rec = json.loads(line)
            ck = rec.get("checkpoint")
            report(rec["metrics"], checkpoint=Checkpoint(path=ck) if ck else None)
        return offset + end
