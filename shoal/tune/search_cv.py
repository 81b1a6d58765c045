"""``TuneSearchCV``: scikit-learn's ``RandomizedSearchCV`` with shoal.tune underneath.

Each trial cross-validates one parameter setting in a trial actor (X and y
are put in the object store once); any searcher (Optuna's TPE...) picks the
settings; the best is refit on all the data. Works with scikit-learn
estimators and shoal.ml's (which fit on the cluster themselves), and with a
shoal.data Dataset for a shoal.ml estimator: the folds are Datasets cut once
on the driver (their blocks stay in the object store), each trial fits and
scores on them.
"""
from __future__ import annotations

import time

import numpy as np

from shoal.tune import space as sp


def _as_space(param_distributions: dict) -> dict:
    out = {}
    for k, v in param_distributions.items():
        if isinstance(v, (sp.Domain, dict)):
            out[k] = v
        elif hasattr(v, "rvs"):                # a scipy.stats distribution
            out[k] = sp.sample_from(lambda spec, d=v: d.rvs())
        elif isinstance(v, (list, tuple)):
            out[k] = sp.choice(list(v))
        else:
            out[k] = v
    return out


def _cv_trial(config, X, y, estimator, cv, scoring):
    from sklearn.base import clone
    from sklearn.model_selection import cross_validate

    from shoal.tune.trainable import report
    est = clone(estimator).set_params(**config)
    res = cross_validate(est, X, y, cv=cv, scoring=scoring, error_score="raise")
    scores = res["test_score"]
    report({"mean_test_score": float(np.mean(scores)), "std_test_score": float(np.std(scores)),
            "mean_fit_time": float(np.mean(res["fit_time"])),
            **{f"split{i}_test_score": float(s) for i, s in enumerate(scores)}})


def _cv_dataset_trial(config, splits, estimator, features, label):
    from sklearn.base import clone

    from shoal.tune.trainable import report
    scores, fit_times = [], []
    for train, test in splits:
        est = clone(estimator).set_params(**config)
        t = time.perf_counter()
        est.fit(train, features=features, label=label)
        fit_times.append(time.perf_counter() - t)
        scores.append(float(est.score(test, label=label)))
    report({"mean_test_score": float(np.mean(scores)), "std_test_score": float(np.std(scores)),
            "mean_fit_time": float(np.mean(fit_times)),
            **{f"split{i}_test_score": s for i, s in enumerate(scores)}})


def _is_dataset(X) -> bool:
    if not type(X).__module__.startswith("shoal.data"):
        return False
    from shoal.data import Dataset
    return isinstance(X, Dataset)


def _dataset_folds(ds, k, seed):
    """k (train, test) Datasets of ``ds`` shuffled once."""
    n = ds.count()
    if not isinstance(k, int) or not 2 <= k <= n:
        raise ValueError(f"TuneSearchCV(cv={k!r}) on a Dataset needs an int number of folds in "
                         f"[2, rows={n}]")
    folds = ds.random_shuffle(seed=seed).split_at_indices([n * i // k for i in range(1, k)])
    out = []
    for i in range(k):
        rest = [f for j, f in enumerate(folds) if j != i]
        out.append((rest[0].union(*rest[1:]) if len(rest) > 1 else rest[0], folds[i]))
    return out


class TuneSearchCV:
    """Search ``estimator``'s parameters by cross-validation, trials run by shoal.tune.

    Args:
        estimator: a scikit-learn or shoal.ml estimator.
        param_distributions: {name: domain}: shoal.tune domains
            (``tune.loguniform(...)``), lists (a choice) or scipy.stats distributions.
        n_trials: settings tried (times each ``grid_search`` combination).
        cv, scoring: as in scikit-learn's ``cross_validate``.
        search_alg: a shoal.tune Searcher (default: random search), e.g. ``OptunaSearch()``.
        refit: refit the best setting on all of X, y (``best_estimator_``).
        random_state: seed of the default random search.
        resources_per_trial: e.g. {"CPU": 1} (default; 0 CPUs for shoal.ml estimators,
            whose fits run as cluster tasks).
        max_concurrent_trials: trials at once (default: as resources allow).

    After ``fit``: ``best_params_``, ``best_score_``, ``best_estimator_``,
    ``cv_results_`` (a dict of arrays as scikit-learn's) and ``results_`` (the ResultGrid).
    """

    def __init__(self, estimator, param_distributions: dict, *, n_trials: int = 10, cv=5,
                 scoring=None, search_alg=None, refit: bool = True,
                 random_state: int | None = None, resources_per_trial: dict | None = None,
                 max_concurrent_trials: int | None = None, storage_path: str | None = None):
        self.estimator = estimator
        self.param_distributions = param_distributions
        self.n_trials, self.cv, self.scoring = n_trials, cv, scoring
        self.search_alg, self.refit, self.random_state = search_alg, refit, random_state
        self.resources_per_trial = resources_per_trial
        self.max_concurrent_trials = max_concurrent_trials
        self.storage_path = storage_path

    def fit(self, X, y=None, *, features=None, label=None):
        """Run the search on X, y (arrays or frames), or on a shoal.data Dataset ``X``
        with its ``label`` column (and ``features``, default: the other columns;
        a shoal.ml estimator, scored by its own ``score``); returns self."""
        from sklearn.base import clone

        import shoal
        from shoal.tune import Tuner, TuneConfig, RunConfig, with_parameters, with_resources
        if not isinstance(self.param_distributions, dict) or not self.param_distributions:
            raise ValueError("param_distributions must be a non-empty dict of parameter name "
                             "-> domain, list or scipy distribution")
        if not shoal.is_initialized():
            shoal.init()
        distributed = type(self.estimator).__module__.startswith("shoal.ml")
        res = self.resources_per_trial or ({"CPU": 0} if distributed else {"CPU": 1})
        limit = self.max_concurrent_trials
        if distributed and limit is None:
            limit = max(1, int(shoal.cluster_resources().get("CPU", 1)))
        on_dataset = _is_dataset(X)
        if on_dataset:
            if not distributed:
                raise TypeError(f"TuneSearchCV.fit got a shoal.data Dataset for "
                                f"{type(self.estimator).__name__}, which is not a shoal.ml "
                                "estimator; use a shoal.ml estimator, or pass arrays (e.g. "
                                "the Dataset's to_pandas())")
            if label is None or y is not None:
                raise ValueError("TuneSearchCV.fit(dataset) takes the label column by name: "
                                 "fit(ds, label='y'), not a y array")
            if self.scoring is not None:
                raise ValueError(f"TuneSearchCV(scoring={self.scoring!r}) on a Dataset: only "
                                 "the estimator's own score is supported there (scoring=None)")
            X = X.materialize()
            trainable = with_resources(with_parameters(
                _cv_dataset_trial, splits=_dataset_folds(X, self.cv, self.random_state or 0),
                estimator=self.estimator, features=features, label=label), res)
        else:
            trainable = with_resources(with_parameters(
                _cv_trial, X=X, y=y, estimator=self.estimator, cv=self.cv,
                scoring=self.scoring), res)
        import tempfile
        self.results_ = Tuner(
            trainable, param_space=_as_space(self.param_distributions),
            tune_config=TuneConfig(metric="mean_test_score", mode="max",
                                   num_samples=self.n_trials, search_alg=self.search_alg,
                                   seed=self.random_state, max_concurrent_trials=limit),
            run_config=RunConfig(storage_path=self.storage_path or tempfile.mkdtemp(
                prefix="shoal_search_cv_"), verbose=0)).fit()
        ok = [r for r in self.results_ if r.error is None]
        if not ok:
            raise self.results_.errors[0]
        best = self.results_.get_best_result()
        self.best_params_ = dict(best.config)
        self.best_score_ = best.metrics["mean_test_score"]
        keys = sorted({k for r in ok for k in r.metrics if k.endswith(("_score", "_time"))})
        self.cv_results_ = {"params": [r.config for r in ok]}
        for k in keys:
            self.cv_results_[k] = np.array([r.metrics.get(k, np.nan) for r in ok])
        for name in self.param_distributions:
            self.cv_results_[f"param_{name}"] = np.array([r.config.get(name) for r in ok],
                                                         dtype=object)
        order = np.argsort(-self.cv_results_["mean_test_score"], kind="stable")
        ranks = np.empty(len(ok), dtype=int)
        ranks[order] = np.arange(1, len(ok) + 1)
        self.cv_results_["rank_test_score"] = ranks
        if self.refit:
            self.best_estimator_ = clone(self.estimator).set_params(**self.best_params_)
            if on_dataset:
                self.best_estimator_.fit(X, features=features, label=label)
            elif y is not None:
                self.best_estimator_.fit(X, y)
            else:
                self.best_estimator_.fit(X)
        return self

    def _fitted(self):
        if not hasattr(self, "best_estimator_"):
            raise AttributeError("call fit() with refit=True first")
        return self.best_estimator_

    def predict(self, X):
        """The best estimator's predictions."""
        return self._fitted().predict(X)

    def predict_proba(self, X):
        """The best estimator's class probabilities."""
        return self._fitted().predict_proba(X)

    def score(self, X, y=None, *, label=None):
        """The best estimator's score on X, y (or a Dataset and its ``label`` column)."""
        if label is not None:
            return self._fitted().score(X, label=label)
        return self._fitted().score(X, y)
