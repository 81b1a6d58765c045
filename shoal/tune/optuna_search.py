"""``OptunaSearch``: Optuna's samplers (TPE, CMA-ES, QMC...) as a shoal.tune searcher.

Optuna itself does the sampling (``study.ask`` / ``study.tell``); this module
only maps shoal's domains to Optuna's distributions. Needs ``shoal[tune]``.
"""
from __future__ import annotations

import pickle

from shoal.exceptions import MissingDependencyError, SearchSpaceError
from shoal.tune import space as sp
from shoal.tune.search import FINISHED, Searcher


def _distribution(path, dom):
    import optuna.distributions as od
    name = ".".join(map(str, path))
    if isinstance(dom, sp.Float):
        if dom.normal is not None:
            raise SearchSpaceError(f"{name}: OptunaSearch cannot sample randn/qrandn; use "
                                   "uniform or loguniform")
        if dom.log and dom.q is not None:
            raise SearchSpaceError(f"{name}: Optuna has no quantized log-uniform; use "
                                   "loguniform or quniform")
        return od.FloatDistribution(dom.lower, dom.upper, log=dom.log, step=dom.q)
    if isinstance(dom, sp.Integer):
        if dom.log and dom.q != 1:
            raise SearchSpaceError(f"{name}: Optuna has no quantized log-int; use lograndint")
        return od.IntDistribution(dom.lower, dom.high, log=dom.log, step=dom.q)
    if isinstance(dom, sp.Categorical):
        return od.CategoricalDistribution(dom.categories)
    raise SearchSpaceError(f"{name}: OptunaSearch cannot sample {dom!r}")


class OptunaSearch(Searcher):
    """Configs from an Optuna sampler (default TPE).

    Args:
        space: a shoal.tune space (default: the Tuner's param_space).
            ``sample_from`` values are computed from Optuna's samples;
            ``grid_search`` is not supported (use BasicVariantGenerator).
        metric, mode: default: the TuneConfig's.
        points_to_evaluate: configs Optuna evaluates first (``enqueue_trial``).
        sampler: an optuna sampler, e.g. ``optuna.samplers.CmaEsSampler()``
            or ``QMCSampler()`` (default: ``TPESampler(seed=seed)``).
        seed: seed of the default sampler.
    """

    def __init__(self, space: dict | None = None, metric: str | None = None,
                 mode: str | None = None, points_to_evaluate: list | None = None,
                 sampler=None, seed: int | None = None):
        MissingDependencyError.require("shoal.tune.OptunaSearch", "tune", "optuna")
        super().__init__(metric, mode)
        self.space = space
        self.points = list(points_to_evaluate or [])
        self.sampler = sampler
        self.seed = seed
        self.num_samples = None
        self.study = None
        self.ot: dict = {}     # trial_id -> optuna trial
        self.count = 0

    def set_search_properties(self, metric, mode, config, num_samples=1, seed=None):
        super().set_search_properties(metric, mode, config)
        if self.space is None:
            self.space = config or {}
        self.num_samples = None if num_samples == -1 else num_samples
        if self.seed is None:
            self.seed = seed
        self._setup()
        return True

    def _setup(self):
        import optuna
        if self.mode not in ("min", "max") or not self.metric:
            raise ValueError("OptunaSearch needs metric and mode (in OptunaSearch or TuneConfig)")
        sp.validate(self.space)
        self.dists = {}
        for path, v in sp.leaves(self.space):
            if sp._is_grid(v):
                raise SearchSpaceError(f"{'.'.join(map(str, path))}: OptunaSearch does not take "
                                       "grid_search; use choice or the default search")
            if isinstance(v, sp.Domain) and not isinstance(v, sp.Function):
                self.dists[path] = _distribution(path, v)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = self.sampler or optuna.samplers.TPESampler(seed=self.seed)
        self.study = optuna.create_study(
            direction="minimize" if self.mode == "min" else "maximize", sampler=sampler)
        for p in self.points:
            self.study.enqueue_trial({".".join(map(str, k)): v for k, v in sp.leaves(p)})

    @property
    def total_samples(self):
        return self.num_samples

    def suggest(self, trial_id):
        if self.num_samples is not None and self.count >= self.num_samples:
            return FINISHED
        import optuna
        fixed = {".".join(map(str, p)): d for p, d in self.dists.items()}
        trial = self.study.ask(fixed)
        self.ot[trial_id] = trial
        self.count += 1
        cfg = sp.grid_variants(self.space)[0]
        for path in self.dists:
            sp.set_path(cfg, path, trial.params[".".join(map(str, path))])
        del optuna
        return sp.resolve(cfg, _NoRandom())

    def on_trial_complete(self, trial_id, result=None, error=False):
        import optuna
        trial = self.ot.pop(trial_id, None)
        if trial is None:
            return
        value = (result or {}).get(self.metric)
        if error or not isinstance(value, (int, float)):
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            self.study.tell(trial, float(value))

    def get_state(self):
        import optuna
        done = [(t.params, t.distributions, t.value, t.state.name) for t in self.study.trials
                if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)]
        return {"done": done, "count": self.count,
                "sampler": pickle.dumps(self.study.sampler)}

    def set_state(self, state):
        import optuna
        self.sampler = pickle.loads(state["sampler"])
        self.points = []
        self._setup()
        for params, dists, value, st in state["done"]:
            self.study.add_trial(optuna.trial.create_trial(
                params=params, distributions=dists, value=value,
                state=optuna.trial.TrialState[st]))
        self.count = state["count"]
        self.ot = {}


class _NoRandom:
    """sample_from functions run after Optuna's values; plain domains are all set."""

    def uniform(self, *_):
        raise SearchSpaceError("OptunaSearch resolved a domain it does not know")

    gauss = randint = randrange = uniform
