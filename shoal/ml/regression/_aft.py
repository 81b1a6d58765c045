"""AFTSurvivalRegression: the Weibull accelerated failure time model, L-BFGS on per-block likelihoods (Spark's)."""
from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import scipy.optimize
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.exceptions import ConvergenceWarning

from shoal.exceptions import InvalidInputError
from shoal.ml._base import DatasetScoreMixin, ShoalEstimatorMixin, check_fitted, fit_input, on_dataset
from shoal.ml._columns import is_table, resolve_fit_columns, table_columns
from shoal.ml._executor import held_by_shards
from shoal.ml._input import check_predict_input
from shoal.ml.regression import _kernels as K


class AFTSurvivalRegression(ShoalEstimatorMixin, DatasetScoreMixin, RegressorMixin, BaseEstimator):
    """Accelerated failure time regression with Weibull survival times (Spark's
    AFTSurvivalRegression; scikit-learn's API).

    log(t) = x.coef_ + intercept_ + scale_ * eps, eps standard extreme-value: the model
    maximises Spark's log-likelihood, over rows that either saw the event (censor 1) or
    were censored at t (censor 0), by L-BFGS; each evaluation is one pass in which every
    block returns its likelihood and gradient, the blocks held by shard actors.

    Parameters (Spark's, in scikit-learn's spelling):
        censor_col: the column of censor indicators (1 event, 0 censored; Spark's
        ``censorCol``, "censor"), read from a table (Dataset, DataFrame, Arrow) and kept out
        of the default features. With array input pass ``censor=`` to fit; None there (or
        ``censor_col=None``) means every event was observed.
        quantile_probabilities: the probabilities ``predict_quantiles`` gives survival-time
        quantiles at (Spark's default list). fit_intercept, max_iter (100), tol (1e-6).

    Fitted: coef_, intercept_, scale_ (sigma), n_iter_, n_features_in_, feature_names_in_.
    ``predict`` is Spark's prediction exp(x.coef_ + intercept_).

    Raises InvalidInputError for a time that is not positive (naming the label column), a
    censor value other than 0 or 1 (naming the censor column), or a missing censor column.
    """

    _fits_design_matrix = False

    def __init__(self, *, censor_col="censor", quantile_probabilities=(0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9,
                                                                       0.95, 0.99),
                 fit_intercept=True, max_iter=100, tol=1e-6):
        self.censor_col = censor_col
        self.quantile_probabilities = quantile_probabilities
        self.fit_intercept = fit_intercept
        self.max_iter = max_iter
        self.tol = tol

    def _with_censor(self, X, y, features, label, censor):
        """(X', y, features') with the censor indicator as X's last column (it travels with the rows)."""
        if is_table(X):
            if censor is not None:
                raise InvalidInputError("AFTSurvivalRegression: with a table the censor indicators are the "
                                        "column censor_col names; censor= is for array input.")
            y, features, label = resolve_fit_columns(X, y, features=features, label=label, estimator=self,
                                                     supervised=True)
            columns = table_columns(X)
            if self.censor_col is None:
                return X, y, features, label, False
            if self.censor_col not in columns:
                raise InvalidInputError(
                    f"AFTSurvivalRegression: censor column {self.censor_col!r} (censor_col=) is missing from "
                    f"X; available columns: {columns}. Name the column of 1 (event) / 0 (censored) "
                    f"indicators, or censor_col=None if every event was observed.")
            if features is None:
                features = [c for c in columns if c not in (label, self.censor_col)]
            elif self.censor_col in features:
                raise InvalidInputError(f"AFTSurvivalRegression: the censor column {self.censor_col!r} is also "
                                        f"in features=; remove it.")
            return X, y, features + [self.censor_col], label, True
        if features is not None or label is not None:
            resolve_fit_columns(X, y, features=features, label=label, estimator=self)   # raises
        Xa = np.asarray(X)
        if Xa.ndim == 2 and censor is not None:
            c = np.asarray(censor, dtype=np.float64).ravel()
            if len(c) != len(Xa):
                raise InvalidInputError(f"AFTSurvivalRegression: censor= has {len(c)} values for {len(Xa)} "
                                        f"rows of X")
            return np.column_stack([Xa, c]), y, None, None, True
        return X, y, None, None, False

    def fit(self, X, y=None, *, features=None, label=None, censor=None):
        """Maximise the AFT likelihood; returns self. ``censor``: 1/0 per row, array input only."""
        if not (isinstance(self.max_iter, (int, np.integer)) and self.max_iter > 0 and self.tol > 0):
            raise InvalidInputError(f"AFTSurvivalRegression needs a positive int max_iter and tol > 0, got "
                                    f"max_iter={self.max_iter!r}, tol={self.tol!r}")
        probs = np.asarray(self.quantile_probabilities, dtype=np.float64)
        if probs.ndim != 1 or not ((probs > 0) & (probs < 1)).all():
            raise InvalidInputError(f"AFTSurvivalRegression quantile_probabilities="
                                    f"{self.quantile_probabilities!r} must lie in (0, 1)")
        label_name = label if label is not None else (y if isinstance(y, str) else "y")
        X, y, features, label, has_censor = self._with_censor(X, y, features, label, censor)
        dm = fit_input(self, X, y, "regression", features=features, label=label)
        if not has_censor:   # every event observed: a censor column of ones, appended where the blocks are
            dm = dataclasses.replace(dm.map_blocks(K.aft_append_events), feature_names_in_=dm.feature_names_in_)
        d = dm.n_features - 1
        self.n_features_in_ = d
        if has_censor and hasattr(self, "feature_names_in_"):
            self.feature_names_in_ = self.feature_names_in_[:d]
        with held_by_shards(dm) as held:
            t_min, c_min, c_max, n = held.map_reduce(K.aft_label_check, reduce=K.aft_check_reduce)
            if t_min <= 0:
                raise InvalidInputError(f"AFTSurvivalRegression: label column {label_name!r} holds survival "
                                        f"times, which must be > 0; its smallest value is {t_min:g}.")
            if has_censor and (c_min < 0 or c_max > 1):
                name = self.censor_col if is_table(X) else "censor="
                raise InvalidInputError(f"AFTSurvivalRegression: censor column {name!r} must hold 1 (event) "
                                        f"or 0 (censored); its values range over [{c_min:g}, {c_max:g}].")
            free = np.ones(d + 2)
            if not self.fit_intercept:
                free[d] = 0.0

            def fun(theta):
                loss, grad = held.map_reduce(K.aft_loss_grad, theta, bool(self.fit_intercept))
                return loss / n, grad / n * free
            res = scipy.optimize.minimize(fun, np.zeros(d + 2), jac=True, method="L-BFGS-B",
                                          options={"maxiter": self.max_iter, "ftol": self.tol,
                                                   "gtol": self.tol, "maxls": 50})
        if not res.success and res.nit >= self.max_iter:
            warnings.warn(f"AFTSurvivalRegression: L-BFGS did not converge in max_iter={self.max_iter} "
                          f"iterations; raise max_iter or scale the features.", ConvergenceWarning)
        self.coef_ = res.x[:d].copy()
        self.intercept_ = float(res.x[d]) if self.fit_intercept else 0.0
        self.scale_ = float(np.exp(res.x[d + 1]))
        self.n_iter_ = int(res.nit)
        return self

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.positive_only = True        # survival times
        return tags

    @on_dataset
    def predict(self, X):
        """exp(x.coef_ + intercept_), Spark's prediction (the Weibull scale of each row's time)."""
        check_fitted(self, "coef_")
        X = check_predict_input(self, X, "predict")
        return np.exp(X @ self.coef_ + self.intercept_)

    def predict_quantiles(self, X):
        """Survival-time quantiles at quantile_probabilities, (n, len(probabilities))."""
        lam = self.predict(X)
        p = np.asarray(self.quantile_probabilities, dtype=np.float64)
        return lam[:, None] * (-np.log1p(-p))[None, :] ** self.scale_
