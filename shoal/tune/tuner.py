"""``Tuner``: run trials of a trainable over a search space, collect a ResultGrid.

    tuner = shoal.tune.Tuner(objective, param_space={"x": shoal.tune.uniform(0, 10)},
                             tune_config=shoal.tune.TuneConfig(metric="loss", mode="min",
                                                               num_samples=20))
    best = tuner.fit().get_best_result()

The experiment lives in ``storage_path/name`` (``experiment.db`` and a
directory per trial); ``Tuner.restore(path)`` continues it after a crash.
"""
from __future__ import annotations

import os
import time

import cloudpickle

import shoal
from shoal.exceptions import InfeasibleResourceError, TuneError
from shoal.tune import space as sp
from shoal.tune._controller import Controller
from shoal.tune._store import DB_FILE, ExperimentStore
from shoal.tune.config import RunConfig, TuneConfig
from shoal.tune.result_grid import ResultGrid, result_of
from shoal.tune.schedulers import FIFOScheduler, TrialScheduler
from shoal.tune.search import BasicVariantGenerator, Searcher
from shoal.tune.trainable import TrainableSpec, as_spec
from shoal.tune.trial import ERROR, PAUSED, PENDING, RUNNING


class Tuner:
    """Hyperparameter search over ``param_space`` for ``trainable``.

    Args:
        trainable: a function of ``config`` that calls ``shoal.tune.report``, a
            ``shoal.tune.Trainable`` class, a ``shoal.train.Trainer`` (each trial
            trains on its own gang), or either wrapped by ``with_resources`` /
            ``with_parameters``.
        param_space: the search space (a dict of constants, domains and grids).
        tune_config: a TuneConfig (metric, mode, samples, searcher, scheduler).
        run_config: a RunConfig (where, when to stop, retries, checkpoints).
    """

    def __init__(self, trainable=None, *, param_space: dict | None = None,
                 tune_config: TuneConfig | None = None, run_config: RunConfig | None = None):
        if trainable is None:
            raise TypeError("Tuner needs a trainable (a function of config, a Trainable "
                            "class or a shoal.train.Trainer)")
        self.tune_config = tune_config or TuneConfig()
        self.run_config = run_config or RunConfig()
        if not isinstance(self.tune_config, TuneConfig):
            raise TypeError("tune_config must be a shoal.tune.TuneConfig")
        if not isinstance(self.run_config, RunConfig):
            raise TypeError("run_config must be a shoal.tune.RunConfig")
        self.param_space = param_space if param_space is not None else {}
        sp.validate(self.param_space)
        self.spec: TrainableSpec = as_spec(trainable)
        self._restore_path: str | None = None
        self._restore_opts: dict = {}
        self._results: ResultGrid | None = None

    # ------------------------------------------------------------------ restore
    @classmethod
    def can_restore(cls, path) -> bool:
        """Whether ``path`` is an experiment directory ``Tuner.restore`` can continue."""
        return os.path.exists(os.path.join(os.fspath(path), DB_FILE))

    @classmethod
    def restore(cls, path, trainable=None, *, resume_unfinished: bool = True,
                resume_errored: bool = False, restart_errored: bool = False,
                param_space: dict | None = None) -> Tuner:
        """A Tuner that continues the experiment in ``path`` (``ResultGrid.experiment_path``).

        Finished trials are not run again; trials that were running or paused
        resume from their latest checkpoint (from the start if they had none).
        ``resume_errored`` resumes failed trials from their checkpoint,
        ``restart_errored`` starts them over. ``trainable`` replaces the saved
        one (e.g. after a code fix).
        """
        path = os.path.abspath(os.fspath(path))
        if not cls.can_restore(path):
            raise TuneError(f"{path!r} is not a shoal.tune experiment directory (no {DB_FILE}); "
                            "pass ResultGrid.experiment_path of the run to continue")
        store = ExperimentStore(path)
        try:
            saved = store.get("tuner")
        finally:
            store.close()
        if saved is None:
            raise TuneError(f"{path!r}: the experiment database holds no tuner settings")
        t = cls.__new__(cls)
        t.tune_config, t.run_config = saved["tune_config"], saved["run_config"]
        t.run_config.name = os.path.basename(path)
        t.run_config.storage_path = os.path.dirname(path)
        t.param_space = param_space if param_space is not None else saved["param_space"]
        t.spec = as_spec(trainable) if trainable is not None else saved["spec"]
        t._restore_path = path
        t._restore_opts = dict(resume_unfinished=resume_unfinished,
                               resume_errored=resume_errored, restart_errored=restart_errored)
        t._results = None
        return t

    # ------------------------------------------------------------------ fit
    def fit(self) -> ResultGrid:
        """Run the experiment; returns a ResultGrid (failed trials are in it with their
        errors). Raises TuneError for a metric no trial reports, an unpicklable
        trainable; InfeasibleResourceError for trial resources no node has."""
        if not shoal.is_initialized():
            shoal.init()
        tc, rc = self.tune_config, self.run_config
        limit = _concurrency(self.spec, tc.max_concurrent_trials)
        payload = _picklable(self.spec)
        exp_dir = self._experiment_dir()
        store = ExperimentStore(exp_dir, fresh=self._restore_path is None)
        try:
            searcher, scheduler, trials = self._prepare(store, exp_dir, payload)
            controller = Controller(self.spec, store, exp_dir, tc, rc, searcher, scheduler,
                                    trials, limit)
            controller.run()
            trials = controller.trials
        except BaseException:
            store.close(check=False)    # what was committed stays; the first error is the news
            raise
        store.close()     # returns once every result is in the database
        self._results = ResultGrid([result_of(t) for t in trials], tc.metric, tc.mode, exp_dir)
        return self._results

    def get_results(self) -> ResultGrid:
        """The ResultGrid of the last ``fit``."""
        if self._results is None:
            raise TuneError("get_results() before fit(): call fit() first")
        return self._results

    def _experiment_dir(self) -> str:
        if self._restore_path:
            return self._restore_path
        rc = self.run_config
        storage = rc.storage_path or os.path.join(os.path.expanduser("~"), "shoal_results")
        name = rc.name or f"{self.spec.name}_{time.strftime('%Y-%m-%d_%H-%M-%S')}"
        exp_dir = os.path.abspath(os.path.join(storage, name))
        os.makedirs(exp_dir, exist_ok=True)
        # the database file is claimed here, at once (its writer thread fills it in):
        # two experiments never share a directory
        try:
            os.close(os.open(os.path.join(exp_dir, DB_FILE),
                             os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            raise TuneError(f"experiment directory {exp_dir!r} already holds an experiment; "
                            f"continue it with Tuner.restore({exp_dir!r}) or choose another "
                            "RunConfig(name=...)") from None
        return exp_dir

    def _prepare(self, store, exp_dir, payload):
        tc = self.tune_config
        searcher = tc.search_alg or BasicVariantGenerator(random_state=tc.seed)
        scheduler = tc.scheduler or FIFOScheduler()
        if not isinstance(searcher, Searcher):
            raise TypeError(f"TuneConfig.search_alg must be a shoal.tune Searcher, got "
                            f"{type(searcher).__name__}")
        if not isinstance(scheduler, TrialScheduler):
            raise TypeError(f"TuneConfig.scheduler must be a shoal.tune TrialScheduler, got "
                            f"{type(scheduler).__name__}")
        searcher.set_search_properties(tc.metric, tc.mode, self.param_space, tc.num_samples,
                                       tc.seed)
        scheduler.set_search_properties(tc.metric, tc.mode)
        trials = []
        if self._restore_path:
            trials = store.load_trials()
            state = store.get("searcher_state")
            if state is not None:
                searcher.set_state(state)
            state = store.get("scheduler_state")
            if state is not None:
                scheduler.set_state(state)
            opts = self._restore_opts
            for t in trials:
                if t.status in (RUNNING, PAUSED, PENDING) and opts["resume_unfinished"]:
                    t.status = PENDING
                elif t.status == ERROR and (opts["resume_errored"] or opts["restart_errored"]):
                    t.status, t.error, t.error_traceback, t.num_failures = PENDING, None, None, 0
                    if opts["restart_errored"]:
                        t.checkpoint = None
                if t.status == PENDING:
                    _rewind(store, t, getattr(self.run_config, "trial_files", None))
                    store.save_trial(t)
        tuner_state = {"tune_config": tc, "run_config": self.run_config,
                       "param_space": self.param_space, "spec": payload}
        store.put_bytes("tuner", _dumps_tuner(tuner_state))
        store.commit()
        return searcher, scheduler, trials


def _dumps_tuner(state) -> bytes:
    return cloudpickle.dumps(dict(state, spec=cloudpickle.loads(state["spec"])))


def _rewind(store, trial, files: bool | None = None) -> None:
    """A trial resuming from its checkpoint forgets the results after it."""
    it = 0
    if trial.checkpoint:
        try:
            it = int(os.path.basename(trial.checkpoint).rsplit("_", 1)[1])
        except (IndexError, ValueError):
            it = trial.iteration
    store.truncate(trial, it, files)


def _picklable(spec: TrainableSpec) -> bytes:
    try:
        return cloudpickle.dumps(spec)
    except Exception as e:  # noqa: BLE001 - any pickling failure gets the same advice
        raise TuneError(f"the trainable {spec.name!r} cannot be pickled to send to the trial "
                        f"processes ({type(e).__name__}: {e}); create unpicklable objects "
                        "(locks, open files, clients) inside the trainable, or pass large data "
                        "with shoal.tune.with_parameters") from e


def _concurrency(spec: TrainableSpec, max_concurrent: int | None) -> int:
    """Trials that fit at once in the cluster (InfeasibleResourceError if none does)."""
    total = shoal.cluster_resources()
    need = dict(spec.resources)
    fits = []
    for k, v in need.items():
        if v > 0:
            fits.append(int(total.get(k, 0) / v + 1e-9))
    fit = min(fits) if fits else 10 ** 6
    if fit == 0:
        raise InfeasibleResourceError(
            f"each trial of {spec.name!r} asks for {need}, but the cluster has {total}: no "
            "trial could ever start; lower the request (with_resources) or add resources")
    return min(fit, max_concurrent) if max_concurrent else min(fit, 10 ** 6)
