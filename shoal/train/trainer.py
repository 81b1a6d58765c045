"""``Trainer``: run a training loop on a gang of workers, restart it when one dies.

The driver reserves the gang (a placement group of ``resources_per_worker``
bundles), starts one actor per rank in it, and calls ``train_loop(config)``
on each. The ranks form a communicator among themselves through the
cluster's key-value store; rank 0's reports (metrics, checkpoints already
persisted by rank 0) come back through the store too, so the driver never
sits in the data path. When a worker dies or the loop raises, the driver
kills the whole gang (no survivor waits on a dead peer) and, while
``max_failures`` allows, starts a new one from the latest checkpoint.
"""
from __future__ import annotations

import inspect
import io
import json
import os
import pickle
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field

import cloudpickle

import shoal
from shoal.exceptions import (
    ActorDiedError,
    GetTimeoutError,
    ShoalError,
    TaskError,
    TrainingFailedError,
    WorkerCrashedError,
)
from shoal.train.checkpoint import Checkpoint, CheckpointManager, latest_in
from shoal.train.config import ElasticConfig, FailureConfig, RunConfig
from shoal.train.context import Session, TrainContext, _set_session
from shoal.train.ddp import DDP
from shoal.train.tensorflow import TensorflowConfig

_STATE_FILE = "trainer_state.pkl"
_CHECKPOINTS_SHOWN = 50     # kept checkpoints a run shows in shoal.state (best first)


@dataclass
class Result:
    """What a run produced.

    Attributes:
        metrics: the last metrics reported by rank 0.
        metrics_dataframe: every report of rank 0, one row each (pandas).
        checkpoint: the latest checkpoint (None if none was reported).
        best_checkpoints: kept checkpoints with their metrics, best first.
        error: the exception that ended the run, or None.
        path: the run directory (metrics in result.json / progress.csv).
        attempts: how many times the gang was started.
        membership_changes: an elastic run's changes of membership, in order:
            dicts with generation, reason, left (rank, worker, why), joined,
            world_size, previous_world_size, resumed_step and took_s (from the
            driver noticing the change to rank 0 resuming).
    """

    metrics: dict
    metrics_dataframe: object
    checkpoint: Checkpoint | None
    best_checkpoints: list = field(default_factory=list)
    error: BaseException | None = None
    path: str = ""
    attempts: int = 1
    membership_changes: list = field(default_factory=list)

    def get_best_checkpoint(self, metric: str, mode: str = "max") -> Checkpoint | None:
        """The kept checkpoint with the best ``metric`` (``mode``: "max" or "min"), or None."""
        scored = [(c, m[metric]) for c, m in self.best_checkpoints
                  if isinstance(m.get(metric), (int, float))]
        if not scored:
            return None
        pick = max if mode == "max" else min
        return pick(scored, key=lambda e: e[1])[0]


class _RankPrefixedStream(io.TextIOBase):
    """Prefixes each line written to ``stream`` with the worker's rank."""

    def __init__(self, stream, prefix: str):
        self._stream, self._prefix, self._pending = stream, prefix, ""

    def write(self, s: str) -> int:
        data = self._pending + s
        lines = data.split("\n")
        self._pending = lines.pop()
        if lines:
            self._stream.write("".join(f"{self._prefix}{ln}\n" for ln in lines))
            self._stream.flush()
        return len(s)

    def flush(self) -> None:
        if self._pending:
            self._stream.write(f"{self._prefix}{self._pending}")
            self._pending = ""
        self._stream.flush()

    def fileno(self):
        return self._stream.fileno()

    def isatty(self) -> bool:
        return False


def _dumps_by_value(train_loop, config) -> bytes:
    """Pickle the loop and its config; the user's own module travels by value.

    Workers on another host or on Ray do not share the driver's ``sys.path``,
    so a loop defined in a module next to the script (not installed) would
    not import there. Installed packages (site-packages, the standard library,
    shoal) still travel by reference.
    """
    mod = sys.modules.get(getattr(train_loop, "__module__", None) or "")
    by_value = (mod is not None and mod.__name__ != "__main__"
                and getattr(mod, "__file__", None) and not _is_installed(mod.__file__)
                and mod.__name__.split(".")[0] != "shoal")
    if not by_value:
        return cloudpickle.dumps((train_loop, config))
    cloudpickle.register_pickle_by_value(mod)
    try:
        return cloudpickle.dumps((train_loop, config))
    finally:
        cloudpickle.unregister_pickle_by_value(mod)


def _is_installed(path: str) -> bool:
    import sysconfig
    path = os.path.realpath(path)
    roots = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    return any(path.startswith(os.path.realpath(r) + os.sep) for r in roots)


class _TrainWorker:
    """One rank of the gang (an actor)."""

    def where(self):
        return shoal.get_runtime_context().node_id, os.getpid()

    def run(self, payload: bytes, setup: dict):
        from shoal.train._group import form_group
        train_loop, config = cloudpickle.loads(payload)
        ctx: TrainContext = setup["context"]
        prefix = (f"(worker {setup['elastic']['wid']}) " if setup.get("elastic")
                  else f"(rank {ctx.rank}) ")
        old_out, old_err = sys.stdout, sys.stderr
        sys.stdout = _RankPrefixedStream(old_out, prefix)
        sys.stderr = _RankPrefixedStream(old_err, prefix)
        store = shoal.get_kv_store()
        comm = link = session = None
        env = {}
        try:
            strategy = setup["strategy"]
            elastic = setup.get("elastic")
            if elastic is not None:
                import dataclasses

                from shoal.train._membership import MembershipLink
                # The group is joined by the first elastic.run: a worker added to a running
                # gang builds its model and data first, while the others keep training.
                link = MembershipLink(store, elastic["prefix"], elastic["wid"], setup["group"],
                                      strategy.backend, setup["timeout"], elastic["join_timeout"])
                ctx = dataclasses.replace(ctx, rank=-1, world_size=1)
            else:
                comm = form_group(ctx.rank, ctx.world_size, store, setup["group"],
                                  backend=strategy.backend, timeout=setup["timeout"])
            ckpt = Checkpoint(path=setup["checkpoint"]) if setup["checkpoint"] else None
            session = Session(ctx, comm, store, setup["run_dir"], setup["report_prefix"], ckpt,
                              strategy, report_index=setup["report_index"],
                              use_gpu=setup.get("use_gpu", False))
            session.elastic = link
            _set_session(session)
            env = strategy.worker_env(comm, ctx) if hasattr(strategy, "worker_env") else {}
            os.environ.update(env)   # e.g. TF_CONFIG (TensorflowConfig)
            return train_loop(config) if _takes_argument(train_loop) else train_loop()
        finally:
            for k in env:
                os.environ.pop(k, None)
            if session is not None:
                comm = session.comm         # an elastic session may have re-formed it
            if link is not None:
                link.close()
            _set_session(None)
            sys.stdout.flush()
            sys.stderr.flush()
            sys.stdout, sys.stderr = old_out, old_err
            if comm is not None:
                try:
                    comm.destroy()
                except Exception:  # noqa: BLE001, S110 - teardown of a group that may be broken
                    pass


def _takes_argument(fn) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
               for p in params)


class Trainer:
    """Runs ``train_loop(config)`` data-parallel on ``num_workers`` workers.

    Args:
        train_loop: a function of ``config`` (or of nothing) that trains,
            using shoal.train.get_context / prepare_model /
            prepare_data_loader / report / get_checkpoint.
        num_workers: ranks in the gang; ``(min, max)`` makes the run elastic:
            it starts once ``min`` workers are placed, uses up to ``max``,
            drops a dead worker and continues, adds workers when slots free
            (the loop keeps its state with shoal.train.elastic.State and
            ``elastic.run``; each worker is placed on its own, so
            ``placement_strategy`` does not apply).
        resources_per_worker: one bundle of the gang, e.g. {"CPU": 1} or
            {"CPU": 1, "GPU": 1}. A worker given GPUs trains on its GPU
            (``get_device()``; prepare_model / prepare_data_loader move the
            model and batches there).
        use_gpu: shorthand for one GPU per worker (adds "GPU": 1 to
            ``resources_per_worker`` unless it names GPUs already).
        strategy: shoal.train.DDP(...) (the default); ZeRO(stage=...) / FSDP(...)
            for sharded data parallelism; Parallel(dp=, tp=, pp=, ...) for a mesh;
            TensorflowConfig() to run a TensorFlow loop with TF_CONFIG set for
            MultiWorkerMirroredStrategy.
        config: passed to ``train_loop``.
        run_config: run name, storage path, checkpoints to keep, verbosity.
        failure_config: how many gang restarts a run may use.
        placement_strategy: "PACK", "STRICT_PACK", "SPREAD" or "STRICT_SPREAD".
        resume_from_checkpoint: a Checkpoint the first attempt starts from.
        collective_timeout: seconds a collective waits for a peer before raising,
            and the gang's start waits for its resources and workers (a
            start that runs past it is a failed attempt).
        elastic_config: waits and limits of an elastic run (ElasticConfig);
            giving it with an int ``num_workers`` makes the run elastic with
            that many workers as both minimum and maximum.
    """

    def __init__(self, train_loop, *, num_workers: int = 1,
                 resources_per_worker: dict | None = None, strategy=None,
                 config: dict | None = None, run_config: RunConfig | None = None,
                 failure_config: FailureConfig | None = None, placement_strategy: str = "PACK",
                 resume_from_checkpoint: Checkpoint | None = None,
                 collective_timeout: float = 300.0, use_gpu: bool = False,
                 elastic_config: ElasticConfig | None = None):
        if not callable(train_loop):
            raise TypeError(f"train_loop must be a function, got {type(train_loop).__name__}")
        self.min_workers, self.max_workers = _worker_range(num_workers)
        if elastic_config is not None and not isinstance(elastic_config, ElasticConfig):
            raise TypeError("elastic_config must be a shoal.train.ElasticConfig")
        self.elastic = isinstance(num_workers, tuple) or elastic_config is not None
        self.elastic_config = elastic_config or ElasticConfig()
        resources_per_worker = dict(resources_per_worker or {"CPU": 1})
        if use_gpu and not resources_per_worker.get("GPU"):
            resources_per_worker["GPU"] = 1
        for k, v in resources_per_worker.items():
            if not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"resources_per_worker[{k!r}] must be a number >= 0, got {v!r}")
        if placement_strategy not in ("PACK", "STRICT_PACK", "SPREAD", "STRICT_SPREAD"):
            raise ValueError(f"placement_strategy must be PACK, STRICT_PACK, SPREAD or "
                             f"STRICT_SPREAD, got {placement_strategy!r}")
        if resume_from_checkpoint is not None and not isinstance(resume_from_checkpoint, Checkpoint):
            raise TypeError("resume_from_checkpoint must be a shoal.train.Checkpoint")
        self.train_loop = train_loop
        self.num_workers = num_workers if not isinstance(num_workers, tuple) else self.max_workers
        self._num_workers_arg = num_workers
        self.resources_per_worker = resources_per_worker
        self.strategy = strategy or DDP()
        if not isinstance(self.strategy, TensorflowConfig) and not (
                callable(getattr(self.strategy, "prepare", None))
                and hasattr(self.strategy, "backend") and hasattr(self.strategy, "sync_batchnorm")):
            raise TypeError(f"strategy must be shoal.train.DDP(...), ZeRO(...), FSDP(...), "
                            f"Parallel(...) or TensorflowConfig(), got "
                            f"{type(self.strategy).__name__}")
        if self.elastic and not isinstance(self.strategy, DDP):
            from shoal.train.elastic import sharded_strategy_error
            raise sharded_strategy_error(self.strategy)
        self.config = config if config is not None else {}
        self.run_config = run_config or RunConfig()
        self.failure_config = failure_config or FailureConfig()
        self.placement_strategy = placement_strategy
        self.collective_timeout = collective_timeout
        self._resume = resume_from_checkpoint
        self._history: list[dict] = []
        self._run_dir: str | None = None

    # ------------------------------------------------------------ restore
    @classmethod
    def restore(cls, path: str, train_loop=None, config: dict | None = None) -> Trainer:
        """A Trainer that continues the run in ``path`` from its latest checkpoint.

        ``train_loop`` and ``config`` replace the saved ones when given.
        """
        path = os.fspath(path)
        state_file = os.path.join(path, _STATE_FILE)
        if not os.path.exists(state_file):
            raise FileNotFoundError(f"{path!r} is not a shoal.train run directory (no "
                                    f"{_STATE_FILE}); pass the path of Result.path")
        with open(state_file, "rb") as f:
            state = pickle.load(f)
        rc = state["run_config"]
        rc = RunConfig(name=os.path.basename(path.rstrip(os.sep)),
                       storage_path=os.path.dirname(os.path.abspath(path.rstrip(os.sep))),
                       checkpoint_config=rc.checkpoint_config, verbose=rc.verbose)
        t = cls(train_loop or state["train_loop"], num_workers=state["num_workers"],
                resources_per_worker=state["resources_per_worker"], strategy=state["strategy"],
                config=config if config is not None else state["config"], run_config=rc,
                failure_config=state["failure_config"],
                placement_strategy=state["placement_strategy"],
                collective_timeout=state["collective_timeout"],
                elastic_config=state.get("elastic_config") if state.get("elastic") else None)
        t._resume = latest_in(path)
        t._history = _read_history(path, t._resume)
        return t

    @classmethod
    def can_restore(cls, path: str) -> bool:
        """Whether ``path`` holds a run that ``Trainer.restore`` can continue."""
        return os.path.exists(os.path.join(os.fspath(path), _STATE_FILE))

    # ------------------------------------------------------------ fit
    def fit(self) -> Result:
        """Train; returns a Result. Raises TrainingFailedError once restarts are spent."""
        run_dir = self._prepare_run_dir()
        manager = CheckpointManager(self.run_config.checkpoint_config)
        for rec in self._history:
            if rec.get("checkpoint") and os.path.isdir(rec["checkpoint"]):
                manager.register(Checkpoint(path=rec["checkpoint"]), rec["metrics"])
        if self._resume is not None and manager.latest is None:
            manager.entries.append((self._resume, {}))
        progress = _Progress(self.run_config, self.config)
        if self.elastic:
            from shoal.train._elastic_fit import ElasticDriver
            driver = ElasticDriver(self, run_dir, manager, progress)
            error = driver.run()
            self._write_results(run_dir)
            self._publish(run_dir, None, "FAILED" if error is not None else "FINISHED")
            changes = [{k: v for k, v in ch.items() if not k.startswith("_")}
                       for ch in driver.changes]
            with open(os.path.join(run_dir, "membership.json"), "w") as f:
                json.dump(changes, f, indent=1)
            result = self._result(manager, run_dir, error, 1)
            result.membership_changes = changes
            if error is not None:
                exc = error if isinstance(error, TrainingFailedError) else TrainingFailedError(
                    f"elastic training failed: {_describe(error)}")
                exc.result = result
                raise exc
            return result
        run_id = uuid.uuid4().hex[:12]
        attempt, failures = 0, 0
        while True:
            start = manager.latest
            error = self._run_attempt(run_id, attempt, start, manager, progress, run_dir)
            if error is None:
                break
            failures += 1
            limit = self.failure_config.max_failures
            if limit != -1 and failures > limit:
                self._write_results(run_dir)
                self._publish(run_dir, None, "FAILED")
                result = self._result(manager, run_dir, error, attempt + 1)
                exc = TrainingFailedError(
                    f"training failed on attempt {attempt + 1} (max_failures={limit}): "
                    f"{_describe(error)}")
                exc.result = result
                raise exc from error
            if self.run_config.verbose:
                print(f"[shoal.train] attempt {attempt + 1} failed ({_describe(error, short=True)}); "
                      f"restarting the gang from "
                      f"{manager.latest.path if manager.latest else 'the beginning'} "
                      f"({failures}/{limit if limit != -1 else 'inf'} failures)", flush=True)
            keep = _index_of(manager.latest)
            self._history = [r for r in self._history if r["index"] <= keep]
            attempt += 1
        self._write_results(run_dir)
        self._publish(run_dir, None, "FINISHED")
        return self._result(manager, run_dir, None, attempt + 1)

    def _prepare_run_dir(self) -> str:
        rc = self.run_config
        storage = rc.storage_path or os.path.join(os.path.expanduser("~"), "shoal_results")
        name = rc.name or time.strftime("shoal_train_%Y%m%d_%H%M%S")
        run_dir = os.path.abspath(os.path.join(storage, name))
        os.makedirs(run_dir, exist_ok=True)
        for n in os.listdir(run_dir):     # half-written checkpoints of a crashed run
            if n.startswith(".tmp_checkpoint_"):
                shutil.rmtree(os.path.join(run_dir, n), ignore_errors=True)
        state = {"train_loop": self.train_loop, "config": self.config,
                 "num_workers": self._num_workers_arg, "elastic": self.elastic,
                 "elastic_config": self.elastic_config,
                 "resources_per_worker": self.resources_per_worker, "strategy": self.strategy,
                 "run_config": self.run_config, "failure_config": self.failure_config,
                 "placement_strategy": self.placement_strategy,
                 "collective_timeout": self.collective_timeout}
        tmp = os.path.join(run_dir, _STATE_FILE + ".tmp")
        with open(tmp, "wb") as f:
            cloudpickle.dump(state, f)
        os.replace(tmp, os.path.join(run_dir, _STATE_FILE))
        self._run_dir = run_dir
        return run_dir

    def _run_attempt(self, run_id, attempt, start, manager, progress, run_dir):
        """One gang from start to end; returns None on success, else the error."""
        n = self.num_workers
        res = self.resources_per_worker
        pg = shoal.placement_group([dict(res) for _ in range(n)], strategy=self.placement_strategy)
        workers = []
        store = shoal.get_kv_store()
        prefix = f"shoal-train/{run_id}/{attempt}/report"
        try:
            try:
                shoal.get(pg.ready(), timeout=self.collective_timeout)
            except GetTimeoutError:
                return TrainingFailedError(
                    f"the gang's {n} bundles of {res} ({self.placement_strategy}) were not all "
                    f"placed within {self.collective_timeout}s (collective_timeout): the cluster "
                    f"has {shoal.available_resources()} free. Add nodes, lower num_workers or "
                    "resources_per_worker, or use a softer placement_strategy")
            actor_cls = shoal.remote(_TrainWorker)
            extra = {k: v for k, v in res.items() if k not in ("CPU", "GPU")}
            for i in range(n):
                workers.append(actor_cls.options(
                    num_cpus=res.get("CPU", 0), num_gpus=res.get("GPU", 0),
                    resources=extra or None, placement_group=pg,
                    placement_group_bundle_index=i, max_restarts=0).remote())
            try:
                where = shoal.get([w.where.remote() for w in workers],
                                  timeout=self.collective_timeout)
            except GetTimeoutError:
                return TrainingFailedError(f"the gang's {n} workers did not start within "
                                           f"{self.collective_timeout}s (collective_timeout)")
            except (ActorDiedError, WorkerCrashedError, TaskError) as e:
                return e
            nodes = list(dict.fromkeys(node for node, _ in where))
            ranks_on = {nd: [r for r, (x, _) in enumerate(where) if x == nd] for nd in nodes}
            next_index = _index_of(start) + 1 if start is not None else 0
            next_index = max(next_index, max((r["index"] + 1 for r in self._history), default=0))
            refs = []
            payload = _dumps_by_value(self.train_loop, self.config)
            for r, w in enumerate(workers):
                node = where[r][0]
                ctx = TrainContext(r, n, ranks_on[node].index(r), len(ranks_on[node]),
                                   nodes.index(node), os.path.basename(run_dir), attempt)
                setup = {"context": ctx, "strategy": self.strategy,
                         "group": f"train-{run_id}-{attempt}", "run_dir": run_dir,
                         "report_prefix": prefix,
                         "checkpoint": start.path if start is not None else None,
                         "report_index": next_index, "timeout": self.collective_timeout,
                         "use_gpu": bool(res.get("GPU"))}
                refs.append(w.run.remote(payload, setup))
            self._worker_pids = [pid for _, pid in where]
            pending = list(refs)
            while pending:
                ready, pending = shoal.wait(pending, num_returns=1, timeout=0.05)
                next_index = self._drain(store, prefix, next_index, manager, progress, run_dir)
                for ref in ready:
                    try:
                        shoal.get(ref)
                    except (TaskError, ActorDiedError, WorkerCrashedError, ShoalError) as e:
                        return e
            self._drain(store, prefix, next_index, manager, progress, run_dir)
            return None
        finally:
            for w in workers:
                try:
                    shoal.kill(w)
                except Exception:  # noqa: BLE001, S110 - already dead
                    pass
            try:
                shoal.remove_placement_group(pg)
            except Exception:  # noqa: BLE001, S110
                pass
            for k in store.keys(prefix + "/"):
                store.delete(k)

    def _drain(self, store, prefix, next_index, manager, progress, run_dir) -> int:
        while store.check([f"{prefix}/{next_index}"]):
            rec = pickle.loads(store.get(f"{prefix}/{next_index}"))
            store.delete(f"{prefix}/{next_index}")
            self._history.append(rec)
            if rec.get("checkpoint"):
                manager.register(Checkpoint(path=rec["checkpoint"]), rec["metrics"])
            with open(os.path.join(run_dir, "result.json"), "a") as f:
                f.write(json.dumps(_jsonable(rec)) + "\n")
            self._publish(run_dir, rec, checkpoints=manager.best())
            progress.show(rec)
            next_index += 1
        return next_index

    def _publish(self, run_dir: str, rec: dict | None, status: str = "RUNNING",
                 checkpoints: list | None = None) -> None:
        """Show the run in shoal.state (the dashboard, ``shoal status``, metrics) with its
        kept checkpoints (best first) and, when tensorboardX or tensorboard is installed,
        in TensorBoard event files."""
        name = os.path.basename(run_dir)
        if rec is None:
            shoal.state.report_run("train", name, status=status)
            if getattr(self, "_tb", None):
                self._tb.close()
                self._tb = None
            return
        extra = {} if checkpoints is None else {"checkpoints": [
            {"path": c.path, "metrics": {k: v for k, v in m.items()
                                         if isinstance(v, (int, float)) and not isinstance(v, bool)}}
            for c, m in checkpoints[:_CHECKPOINTS_SHOWN]]}
        shoal.state.report_run("train", name, rec["metrics"], status=status, path=run_dir,
                               checkpoint=rec.get("checkpoint"), workers=self.num_workers,
                               **extra)
        tb = getattr(self, "_tb", False)
        if tb is False:
            tb = self._tb = _tensorboard_writer(run_dir)
        if tb is not None:
            for k, v in rec["metrics"].items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    tb.add_scalar(k, v, rec["index"])
            tb.flush()

    def _write_results(self, run_dir: str) -> None:
        df = self._dataframe()
        df.to_csv(os.path.join(run_dir, "progress.csv"), index=False)
        with open(os.path.join(run_dir, "result.json"), "w") as f:
            f.writelines(json.dumps(_jsonable(rec)) + "\n" for rec in self._history)

    def _dataframe(self):
        import pandas as pd
        rows = [dict(rec["metrics"], report_index=rec["index"],
                     checkpoint=rec.get("checkpoint")) for rec in self._history]
        return pd.DataFrame(rows)

    def _result(self, manager, run_dir, error, attempts) -> Result:
        metrics = dict(self._history[-1]["metrics"]) if self._history else {}
        return Result(metrics=metrics, metrics_dataframe=self._dataframe(),
                      checkpoint=manager.latest, best_checkpoints=manager.best(), error=error,
                      path=run_dir, attempts=attempts)


def _tensorboard_writer(run_dir: str):
    """A TensorBoard event-file writer into ``run_dir`` (tensorboardX, or torch's with
    the tensorboard package), or None when neither is installed."""
    import importlib.util
    try:
        if importlib.util.find_spec("tensorboardX") is not None:
            from tensorboardX import SummaryWriter
        elif importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter
        else:
            return None
        return SummaryWriter(log_dir=run_dir)
    except Exception as e:  # noqa: BLE001 - TensorBoard is a bonus: training goes on without it
        print(f"[shoal.train] not writing TensorBoard events: {e!r}", file=sys.stderr)
        return None


def _worker_range(num_workers) -> tuple[int, int]:
    """(min, max) of ``num_workers``: an int n is (n, n)."""
    if isinstance(num_workers, tuple):
        if len(num_workers) != 2 or not all(isinstance(v, int) and not isinstance(v, bool)
                                            for v in num_workers):
            raise ValueError(f"num_workers=(min, max) takes two ints, got {num_workers!r}")
        lo, hi = num_workers
        if lo < 1:
            raise ValueError(f"num_workers=(min, max) needs min >= 1, got {num_workers!r}")
        if lo > hi:
            raise ValueError(f"num_workers=(min, max) has min {lo} > max {hi}; pass "
                             f"({hi}, {lo}) or equal values")
        return lo, hi
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
        raise ValueError(f"num_workers must be an int >= 1 or a (min, max) tuple, got "
                         f"{num_workers!r}")
    return num_workers, num_workers


def _drain_reports(trainer, store, prefix, next_index, manager, progress, run_dir) -> int:
    """Take rank 0's reports out of the store (see Trainer._drain); the next index."""
    return trainer._drain(store, prefix, next_index, manager, progress, run_dir)


def _index_of(ckpt: Checkpoint | None) -> int:
    if ckpt is None or not ckpt.path:
        return -1
    try:
        return int(os.path.basename(ckpt.path).split("_")[-1])
    except ValueError:
        return -1


def _read_history(path: str, ckpt: Checkpoint | None) -> list[dict]:
    f = os.path.join(path, "result.json")
    if not os.path.exists(f):
        return []
    keep = _index_of(ckpt)
    out = []
    with open(f) as fh:
        for line in fh:
            if line.strip():
                rec = json.loads(line)
                if rec["index"] <= keep:
                    out.append(rec)
    return out


def _jsonable(rec: dict) -> dict:
    out = dict(rec)
    out["metrics"] = {k: (v if isinstance(v, (int, float, str, bool)) or v is None else repr(v))
                      for k, v in rec["metrics"].items()}
    return out


def _describe(error: BaseException, short: bool = False) -> str:
    if isinstance(error, TaskError):
        cause = error.cause_repr
        return cause if short else f"{cause}\n\nRemote traceback:\n{error.remote_traceback}"
    return f"{type(error).__name__}: {error}"


class _Progress:
    """One line per report of rank 0: metrics, throughput, time left."""

    def __init__(self, run_config: RunConfig, config: dict):
        self.verbose = run_config.verbose
        self.total = None
        if isinstance(config, dict):
            for k in ("epochs", "num_epochs", "max_epochs"):
                if isinstance(config.get(k), int):
                    self.total = config[k]
                    break
        self.t0 = time.monotonic()
        self.count = 0
        self.first = None       # (time, epoch) of the first report: start-up is not an epoch

    def show(self, rec: dict) -> None:
        self.count += 1
        if not self.verbose:
            return
        m = rec["metrics"]
        parts = []
        epoch = m.get("epoch")
        if isinstance(epoch, int) and self.total:
            parts.append(f"epoch {epoch + 1}/{self.total}")
        for k, v in m.items():
            if k in ("epoch", "samples_per_s"):
                continue
            if isinstance(v, float):
                parts.append(f"{k} {v:.4g}")
            elif isinstance(v, int) and not isinstance(v, bool):
                parts.append(f"{k} {v}")
        if "samples_per_s" in m:
            parts.append(f"{m['samples_per_s']:.0f} samples/s")
        now = time.monotonic()
        parts.append(f"elapsed {now - self.t0:.1f}s")
        if self.first is None:
            self.first = (now, epoch)
        elif isinstance(epoch, int) and self.total and epoch > self.first[1]:
            per_epoch = (now - self.first[0]) / (epoch - self.first[1])
            parts.append(f"~{(self.total - epoch - 1) * per_epoch:.0f}s left")
        if rec.get("checkpoint"):
            parts.append("checkpoint saved")
        print("[shoal.train] " + " | ".join(parts), flush=True)
