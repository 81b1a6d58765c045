"""Model selection over a parameter grid: CrossValidator (k folds) and TrainValidationSplit.

Each (parameters, fold) fit runs as a shoal task: X and y are put in the object store once
and every task reads them zero-copy, fitting on its rows in-process. The best parameters are
then refit on all the data (distributed, as any fit).
"""
from __future__ import annotations

import itertools

import numpy as np
from sklearn.base import BaseEstimator, MetaEstimatorMixin, clone
from sklearn.utils.metaestimators import available_if

from shoal.exceptions import InvalidInputError
from shoal.ml import _executor, _input
from shoal.ml._base import ShoalEstimatorMixin, check_fitted, dataset_predictions


class ParamGridBuilder:
    """Spark's grid builder: ``ParamGridBuilder().add_grid("C", [0.1, 1]).build()`` -> list of dicts."""

    def __init__(self):
        self._grid: dict = {}

    def add_grid(self, name: str, values) -> "ParamGridBuilder":
        values = list(values)
        if not values:
            raise InvalidInputError(f"add_grid({name!r}, ...) needs at least one value")
        self._grid[name] = values
        return self

    def base_on(self, **fixed) -> "ParamGridBuilder":
        for k, v in fixed.items():
            self._grid[k] = [v]
        return self

    def build(self) -> list[dict]:
        keys = list(self._grid)
        return [dict(zip(keys, combo)) for combo in itertools.product(*(self._grid[k] for k in keys))]


def _expand_grid(param_grid) -> list[dict]:
    if isinstance(param_grid, ParamGridBuilder):
        return param_grid.build()
    if isinstance(param_grid, dict):
        param_grid = [param_grid]
    out = []
    for g in param_grid:
        if not isinstance(g, dict):
            raise InvalidInputError(f"param_grid must be a dict of lists or a list of dicts, got {type(g).__name__}")
        keys = list(g)
        for combo in itertools.product(*(list(g[k]) if isinstance(g[k], (list, tuple, np.ndarray)) else [g[k]]
                                         for k in keys)):
            out.append(dict(zip(keys, combo)))
    if not out:
        raise InvalidInputError("param_grid is empty")
    return out


def _score(estimator, X, y, scoring):
    if scoring is None:
        return float(estimator.score(X, y))
    from sklearn.metrics import get_scorer
    return float(get_scorer(scoring)(estimator, X, y))


def _fit_and_score(estimator, params, X, y, train_idx, test_idx, scoring):
    """Runs in a task (or in-process): fit on the train rows, score on the test rows."""
    with _executor.use_executor("local"):      # no nested tasks: this task is the unit of parallelism
        est = clone(estimator).set_params(**params)
        Xtr, Xte = _take(X, train_idx), _take(X, test_idx)
        est.fit(Xtr, None if y is None else y[train_idx])
        return _score(est, Xte, None if y is None else y[test_idx], scoring)


def _union(datasets):
    return datasets[0].union(*datasets[1:]) if len(datasets) > 1 else datasets[0]


class _PredictionsOf:
    """An estimator seen by a scikit-learn scorer: its methods answer for a fixed Dataset
    (block-parallel, rows in order) whatever X the scorer passes."""

    def __init__(self, estimator, ds):
        self._estimator = estimator
        self._ds = ds

    def __getattr__(self, name):
        attr = getattr(self._estimator, name)
        if name in ("predict", "predict_proba", "predict_log_proba", "decision_function"):
            def on_dataset(X=None, **kwargs):
                return dataset_predictions(self._estimator, self._ds, name)
            on_dataset.__name__ = name   # scikit-learn dispatches on the method's name
            return on_dataset
        return attr


def _score_dataset(estimator, ds, label, scoring):
    if scoring is None:
        return float(estimator.score(ds, label))
    from sklearn.metrics import get_scorer
    y_true = ds.to_numpy(label)
    return float(get_scorer(scoring)(_PredictionsOf(estimator, ds), np.zeros((len(y_true), 1)), y_true))


def _take(X, idx):
    return X.iloc[idx] if hasattr(X, "iloc") else X[idx]


def _as_local_table(X, y):
    """In-memory X (a frame or an array) and its label array, checked."""
    if hasattr(X, "iloc"):
        return X, None if y is None else np.asarray(y)
    Xa = np.asarray(X)
    if Xa.ndim != 2 or Xa.shape[0] == 0:
        raise InvalidInputError(f"X must be a non-empty 2-D array, got shape {Xa.shape}")
    return Xa, None if y is None else np.asarray(y)


def _estimator_has(name):
    """For available_if: the searched estimator has the method ``name``."""
    return lambda search: hasattr(search.estimator, name)


class _Search(ShoalEstimatorMixin, MetaEstimatorMixin, BaseEstimator):
    def _splits(self, n, rng):
        raise NotImplementedError

    def _dataset_splits(self, ds):
        """[(train, test)] Datasets cut from ``ds`` shuffled once (by ``seed``)."""
        raise NotImplementedError

    def _fit_dataset(self, ds, features, label, grid):
        """Each (parameters, split) fit runs on Datasets (distributed over their blocks, in turn);
        nothing is collected to the driver but the test labels for a named scorer."""
        splits = self._dataset_splits(ds)
        table = np.full((len(grid), len(splits)), np.nan)
        for f, (train, test) in enumerate(splits):
            for i, params in enumerate(grid):
                est = clone(self.estimator).set_params(**params).fit(train, features=features, label=label)
                table[i, f] = _score_dataset(est, test, label, self.scoring)
        return table

    def fit(self, X, y=None, *, features=None, label=None):
        """Search the grid; fit's signature is every shoal.ml estimator's (features=, label=)."""
        grid = _expand_grid(self.param_grid)
        if _input._is_dataset(X):
            X = X.materialize()
            _, features, label = _input.resolve_fit_columns(X, y, features=features, label=label,
                                                            estimator=self, supervised=True)
            table = self._fit_dataset(X, features, label, grid)
            return self._finish(X, None, features, label, grid, table)
        y, features, label = _input.resolve_fit_columns(X, y, features=features, label=label,
                                                        estimator=self)
        if label is not None:
            y = _input.as_frame(X)[label].to_numpy()
        X = _input.select_table(X, features, label)
        Xl, yl = _as_local_table(X, y)
        n = Xl.shape[0]
        rng = np.random.RandomState(self.seed)
        splits = self._splits(n, rng)
        jobs = [(i, f, tr, te) for i, params in enumerate(grid) for f, (tr, te) in enumerate(splits)]
        core = _executor._shoal_core()
        if core is not None and _executor.get_executor_mode() != "local" and len(jobs) > 1:
            task = core.remote(_fit_and_score)
            X_ref, y_ref = core.put(Xl), core.put(yl)
            est_ref = core.put(self.estimator)
            scores = core.get([task.remote(est_ref, grid[i], X_ref, y_ref, tr, te, self.scoring)
                               for i, _, tr, te in jobs])
        else:
            scores = [_fit_and_score(self.estimator, grid[i], Xl, yl, tr, te, self.scoring)
                      for i, _, tr, te in jobs]
        table = np.full((len(grid), len(splits)), np.nan)
        for (i, f, _, _), s in zip(jobs, scores):
            table[i, f] = s
        return self._finish(X, y, None, None, grid, table)

    def _finish(self, X, y, features, label, grid, table):
        self.candidate_params_ = grid
        self.split_scores_ = table
        self.avg_metrics_ = table.mean(axis=1)
        self.best_index_ = int(np.nanargmax(self.avg_metrics_))
        self.best_params_ = grid[self.best_index_]
        self.best_score_ = float(self.avg_metrics_[self.best_index_])
        if self.refit:
            best = clone(self.estimator).set_params(**self.best_params_)
            if _input._is_dataset(X):
                best.fit(X, features=features, label=label)
            else:
                best.fit(X, y)
            self.best_estimator_ = best
        return self

    def _best(self):
        check_fitted(self, "best_estimator_")
        return self.best_estimator_

    @available_if(_estimator_has("predict"))
    def predict(self, X):
        return self._best().predict(X)

    @available_if(_estimator_has("predict_proba"))
    def predict_proba(self, X):
        return self._best().predict_proba(X)

    @available_if(_estimator_has("transform"))
    def transform(self, X):
        return self._best().transform(X)

    def score(self, X, y=None):
        return _score(self._best(), X, y, self.scoring)


class CrossValidator(_Search):
    """k-fold cross-validation over ``param_grid`` (a dict of lists, a list of dicts or a
    ParamGridBuilder); the (parameters x folds) fits run in parallel as shoal tasks.

    scoring: None (the estimator's ``score``) or a scikit-learn scorer name ("accuracy",
    "roc_auc", "neg_log_loss", "r2", "neg_root_mean_squared_error", ...). Higher is better.
    Attributes: avg_metrics_, split_scores_, best_params_, best_score_, best_estimator_.
    """

    def __init__(self, estimator, param_grid, *, num_folds=3, scoring=None, seed=0, refit=True):
        self.estimator = estimator
        self.param_grid = param_grid
        self.num_folds = num_folds
        self.scoring = scoring
        self.seed = seed
        self.refit = refit

    def _dataset_splits(self, ds):
        n = ds.count()
        self._check_folds(n)
        k = int(self.num_folds)
        folds = ds.random_shuffle(seed=self.seed).split_at_indices([n * i // k for i in range(1, k)])
        return [(_union([fold for j, fold in enumerate(folds) if j != i]), folds[i]) for i in range(k)]

    def _check_folds(self, n):
        k = self.num_folds
        if not (isinstance(k, (int, np.integer)) and 2 <= k <= n):
            raise InvalidInputError(f"num_folds must be an integer in [2, n_samples={n}], got {k!r}")

    def _splits(self, n, rng):
        self._check_folds(n)
        k = self.num_folds
        order = rng.permutation(n)
        folds = np.array_split(order, k)
        return [(np.sort(np.concatenate(folds[:i] + folds[i + 1:])), np.sort(folds[i])) for i in range(k)]


class TrainValidationSplit(_Search):
    """One random train/validation split (``train_ratio`` of the rows train); fits run as tasks."""

    def __init__(self, estimator, param_grid, *, train_ratio=0.75, scoring=None, seed=0, refit=True):
        self.estimator = estimator
        self.param_grid = param_grid
        self.train_ratio = train_ratio
        self.scoring = scoring
        self.seed = seed
        self.refit = refit

    def _cut(self, n):
        if not 0 < self.train_ratio < 1:
            raise InvalidInputError(f"train_ratio must be in (0, 1), got {self.train_ratio!r}")
        cut = int(round(self.train_ratio * n))
        if cut == 0 or cut == n:
            raise InvalidInputError(f"train_ratio={self.train_ratio} leaves an empty side with {n} rows")
        return cut

    def _dataset_splits(self, ds):
        cut = self._cut(ds.count())
        train, test = ds.random_shuffle(seed=self.seed).split_at_indices([cut])
        return [(train, test)]

    def _splits(self, n, rng):
        cut = self._cut(n)
        order = rng.permutation(n)
        return [(np.sort(order[:cut]), np.sort(order[cut:]))]
