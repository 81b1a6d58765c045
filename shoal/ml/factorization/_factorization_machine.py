"""Factorization machines: a linear model plus factorised pairwise interactions (Spark's FMClassifier/FMRegressor)."""
from __future__ import annotations

import warnings

import numpy as np
import scipy.optimize
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning

from shoal.exceptions import InvalidInputError
from shoal.ml._base import DatasetScoreMixin, ShoalEstimatorMixin, check_fitted, fit_input, on_dataset
from shoal.ml._executor import held_by_shards
from shoal.ml._input import check_predict_input
from shoal.ml.factorization import _kernels as K


class _FactorizationMachine(ShoalEstimatorMixin, DatasetScoreMixin):
    """The shared fit: L-BFGS over theta = [intercept, linear weights, factors]."""

    _fits_design_matrix = True
    _kind = "regression"          # the loss: "regression" (squared error) or "classification"

    def __init__(self, *, factor_size=8, fit_intercept=True, fit_linear=True, reg_param=0.0, init_std=0.01,
                 max_iter=100, tol=1e-6, random_state=None):
        self.factor_size = factor_size
        self.fit_intercept = fit_intercept
        self.fit_linear = fit_linear
        self.reg_param = reg_param
        self.init_std = init_std
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state

    def _check_params(self):
        name = type(self).__name__
        for p in ("factor_size", "max_iter"):
            v = getattr(self, p)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise InvalidInputError(f"{name} {p}={v!r} must be a positive int")
        if not (self.reg_param >= 0 and self.init_std >= 0 and self.tol > 0):
            raise InvalidInputError(f"{name} needs reg_param >= 0, init_std >= 0 and tol > 0; got "
                                    f"reg_param={self.reg_param!r}, init_std={self.init_std!r}, tol={self.tol!r}")

    def _fit_theta(self, dm):
        self._check_params()
        d, k, n = dm.n_features, int(self.factor_size), dm.n_rows
        rng = self.random_state if isinstance(self.random_state, np.random.RandomState) else \
            np.random.RandomState(self.random_state)
        theta0 = np.concatenate([np.zeros(1 + d), rng.normal(0.0, self.init_std, d * k)])
        # a fixed zero intercept or linear part: its gradient is masked, so it stays 0
        free = np.ones_like(theta0)
        free[0] = float(bool(self.fit_intercept))
        free[1:1 + d] = float(bool(self.fit_linear))
        pen = np.full_like(theta0, float(self.reg_param))
        pen[0] = 0.0                                    # the intercept is not penalised
        with held_by_shards(dm) as held:
            def fun(theta):
                loss, grad = held.map_reduce(K.fm_loss_grad, theta, k, self._kind)
                wp = pen * theta
                return loss / n + 0.5 * (wp @ theta), (grad / n + wp) * free
            res = scipy.optimize.minimize(fun, theta0, jac=True, method="L-BFGS-B",
                                          options={"maxiter": self.max_iter, "ftol": self.tol,
                                                   "gtol": self.tol, "maxls": 50})
        if not res.success and res.nit >= self.max_iter:
            warnings.warn(f"{type(self).__name__}: L-BFGS did not converge in max_iter={self.max_iter} "
                          f"iterations; raise max_iter or scale the features.", ConvergenceWarning)
        w0, w, V = K.unpack(res.x, d, k)
        self.intercept_, self.linear_, self.factors_ = float(w0), w.copy(), V.copy()
        self.n_iter_, self.loss_ = int(res.nit), float(res.fun)

    def _raw(self, X, method):
        check_fitted(self, "factors_")
        X = check_predict_input(self, X, method)
        theta = np.concatenate([[self.intercept_], self.linear_, self.factors_.ravel()])
        return K.fm_predict(X, theta, self.factors_.shape[1])[0]


_PARAMS_DOC = """
    Parameters (Spark's, in scikit-learn's spelling):
        factor_size: k, the length of each feature's factor vector (Spark's factorSize, 8).
        fit_intercept, fit_linear: learn the global bias and the linear weights (else 0).
        reg_param: L2 penalty on the linear weights and factors, mean loss + reg_param / 2
        |w, V|^2. init_std: standard deviation of the random initial factors (Spark's 0.01).
        max_iter, tol, random_state (Spark's maxIter, tol, seed).

    Spark trains with AdamW on mini-batches; shoal runs full-batch L-BFGS on the same
    objective (deterministic for a seed, no step size to tune): each evaluation is one
    pass in which every block returns its loss and gradient, folded as a tree, with the
    blocks held by shard actors for the whole fit.

    Fitted: intercept_, linear_ (d,), factors_ (d, factor_size), n_iter_, loss_,
    n_features_in_, feature_names_in_.
"""


class FMRegressor(_FactorizationMachine, RegressorMixin, BaseEstimator):
    __doc__ = """A factorization machine for regression (Spark's FMRegressor): squared error of
    w0 + sum_i w_i x_i + sum_{i<j} <v_i, v_j> x_i x_j.
    """ + _PARAMS_DOC

    def fit(self, X, y=None, *, features=None, label=None):
        """Fit by L-BFGS on the mean squared error (halved) plus penalty; returns self."""
        self._fit_theta(fit_input(self, X, y, "regression", features=features, label=label))
        return self

    @on_dataset
    def predict(self, X):
        """The model's value at each row."""
        return self._raw(X, "predict")


class FMClassifier(_FactorizationMachine, ClassifierMixin, BaseEstimator):
    __doc__ = """A factorization machine for binary classification (Spark's FMClassifier): the
    log-loss of sigmoid(w0 + sum_i w_i x_i + sum_{i<j} <v_i, v_j> x_i x_j). Two classes
    only, as Spark's; wrap it in shoal.ml.OneVsRest for more.
    """ + _PARAMS_DOC

    _kind = "classification"

    def fit(self, X, y=None, *, features=None, label=None):
        """Fit by L-BFGS on the mean log-loss plus penalty; returns self."""
        dm = fit_input(self, X, y, "classification", features=features, label=label)
        if len(dm.classes) != 2:
            col = label if label is not None else (y if isinstance(y, str) else "y")
            raise InvalidInputError(f"Only binary classification is supported. FMClassifier is a binary "
                                    f"classifier, but label {col!r} has "
                                    f"{len(dm.classes)} classes; wrap it as "
                                    f"shoal.ml.OneVsRest(FMClassifier()) for more than two.")
        self.classes_ = dm.classes
        self._fit_theta(dm)
        return self

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False      # binary, as Spark's
        return tags

    @on_dataset
    def decision_function(self, X):
        """The model's raw value (the log-odds of the second class)."""
        return self._raw(X, "decision_function")

    @on_dataset
    def predict_proba(self, X):
        """(1 - p, p), p the sigmoid of the raw value."""
        p = 0.5 * (1.0 + np.tanh(0.5 * self._raw(X, "predict_proba")))
        return np.column_stack([1.0 - p, p])

    @on_dataset
    def predict(self, X):
        """The class with probability above one half."""
        check_fitted(self, "factors_")
        return self.classes_[(self._raw(X, "predict") > 0).astype(np.int64)]
