"""Linear models: least squares, ridge, lasso / elastic net, logistic regression, linear SVM.

The map side computes per-block statistics (Gram matrices, loss and gradient) with BLAS;
the driver folds them and runs the solver. Blocks stay in the object store across
L-BFGS iterations: each iteration sends only the coefficient vector.
"""
from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg
import scipy.optimize
from scipy.special import expit, logsumexp
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning

from shoal.exceptions import InvalidInputError
from shoal.ml._executor import held_by_shards
from shoal.ml._kernels import (_logistic_block, _sqhinge_block)
from shoal.ml._base import DatasetScoreMixin, ShoalEstimatorMixin, check_fitted, fit_input, on_dataset
from shoal.ml._input import check_predict_input
from shoal.ml._stats import gram_stats


# ----------------------------------------------------------------------------------
# least squares family

def _solve_psd(G, b, alpha):
    """Minimum-norm solution of (G + alpha I) w = b through an eigendecomposition."""
    lam, V = scipy.linalg.eigh(G)
    lam = lam + alpha
    cutoff = max(lam.max(), 0.0) * G.shape[0] * np.finfo(float).eps
    inv = np.where(lam > cutoff, 1.0 / np.where(lam > cutoff, lam, 1.0), 0.0)
    return V @ (inv * (V.T @ b))


def _soft(x, t):
    return np.sign(x) * max(abs(x) - t, 0.0)


def _coordinate_descent(G, b, n, l1, l2, max_iter, tol, w0=None):
    """min (1/2n)(w'Gw - 2b'w) + l1 |w|_1 + (l2/2)|w|^2 by cyclic coordinate descent on the Gram."""
    d = G.shape[0]
    w = np.zeros(d) if w0 is None else w0.copy()
    q = G @ w
    diag = np.diag(G) / n + l2
    gn, bn = G / n, b / n
    for it in range(max_iter):
        max_step, max_w = 0.0, 0.0
        for j in range(d):
            if diag[j] == 0.0:
                continue
            old = w[j]
            rho = bn[j] - q[j] / n + gn[j, j] * old
            new = _soft(rho, l1) / diag[j]
            if new != old:
                w[j] = new
                q += G[:, j] * (new - old)
                max_step = max(max_step, abs(new - old))
            max_w = max(max_w, abs(new))
        if max_w == 0.0 or max_step / max_w < tol:
            return w, it + 1
    warnings.warn(f"coordinate descent did not converge in max_iter={max_iter} sweeps; "
                  f"raise max_iter or tol.", ConvergenceWarning)
    return w, max_iter


class _LinearRegressorBase(ShoalEstimatorMixin, DatasetScoreMixin, RegressorMixin, BaseEstimator):
    _fits_design_matrix = True

    def _fit_gram(self, X, y, features, label):
        dm = fit_input(self, X, y, "regression", features=features, label=label)
        G, b, yy, n, mu, ybar = gram_stats(dm, self.fit_intercept)
        return G, b, n, mu, ybar

    def _set_intercept(self, mu, ybar):
        self.intercept_ = float(ybar - mu @ self.coef_) if self.fit_intercept else 0.0

    @on_dataset
    def predict(self, X):
        check_fitted(self, "coef_")
        X = check_predict_input(self, X, "predict")
        return X @ self.coef_ + self.intercept_


class LinearRegression(_LinearRegressorBase):
    """Least squares via distributed normal equations (Spark's LinearRegression, normal solver).

    ``reg_param`` adds an L2 penalty in Spark's scaling: (1/2n)|y - Xw|^2 + (reg_param/2)|w|^2.
    """

    def __init__(self, *, fit_intercept=True, reg_param=0.0):
        self.fit_intercept = fit_intercept
        self.reg_param = reg_param

    def fit(self, X, y=None, *, features=None, label=None):
        if self.reg_param < 0:
            raise InvalidInputError(f"reg_param must be >= 0, got {self.reg_param!r}")
        G, b, n, mu, ybar = self._fit_gram(X, y, features, label)
        self.coef_ = _solve_psd(G, b, self.reg_param * n)
        self._set_intercept(mu, ybar)
        return self


class Ridge(_LinearRegressorBase):
    """min |y - Xw|^2 + alpha |w|^2 (scikit-learn's Ridge objective), solved on the distributed Gram."""

    def __init__(self, alpha=1.0, *, fit_intercept=True):
        self.alpha = alpha
        self.fit_intercept = fit_intercept

    def fit(self, X, y=None, *, features=None, label=None):
        if self.alpha < 0:
            raise InvalidInputError(f"alpha must be >= 0, got {self.alpha!r}")
        G, b, n, mu, ybar = self._fit_gram(X, y, features, label)
        self.coef_ = _solve_psd(G, b, float(self.alpha))
        self._set_intercept(mu, ybar)
        return self


class ElasticNet(_LinearRegressorBase):
    """(1/2n)|y - Xw|^2 + alpha*l1_ratio|w|_1 + alpha*(1-l1_ratio)/2 |w|^2 (scikit-learn's objective).

    Coordinate descent on the aggregated Gram matrix: one distributed pass, then d x d work.
    """

    def __init__(self, alpha=1.0, *, l1_ratio=0.5, fit_intercept=True, max_iter=1000, tol=1e-4):
        self.alpha = alpha
        self.l1_ratio = l1_ratio
        self.fit_intercept = fit_intercept
        self.max_iter = max_iter
        self.tol = tol

    def fit(self, X, y=None, *, features=None, label=None):
        if self.alpha < 0:
            raise InvalidInputError(f"alpha must be >= 0, got {self.alpha!r}")
        l1_ratio = self._l1_ratio()
        if not 0.0 <= l1_ratio <= 1.0:
            raise InvalidInputError(f"l1_ratio must be in [0, 1], got {l1_ratio!r}")
        G, b, n, mu, ybar = self._fit_gram(X, y, features, label)
        # the d x d solve is cheap; a tight tolerance makes the result match exact optima
        self.coef_, self.n_iter_ = _coordinate_descent(
            G, b, n, self.alpha * l1_ratio, self.alpha * (1 - l1_ratio),
            self.max_iter, self.tol * 1e-2)
        self._set_intercept(mu, ybar)
        return self

    def _l1_ratio(self):
        return self.l1_ratio


class Lasso(ElasticNet):
    """(1/2n)|y - Xw|^2 + alpha|w|_1 by coordinate descent on the distributed Gram matrix."""

    def __init__(self, alpha=1.0, *, fit_intercept=True, max_iter=1000, tol=1e-4):
        self.alpha = alpha
        self.fit_intercept = fit_intercept
        self.max_iter = max_iter
        self.tol = tol

    def _l1_ratio(self):
        return 1.0


# ----------------------------------------------------------------------------------
# logistic regression and linear SVM: L-BFGS-B over the distributed loss and gradient

def _lbfgs(dm, block_fn, shape, extra, n, l2, l1, penalize_last_row, max_iter, tol):
    """min (1/n) sum_blocks loss + (l2/2)|W|^2 + l1|W|_1 over W of ``shape`` with scipy's L-BFGS-B.

    L1 is handled exactly by splitting W = U - V with U, V >= 0 (bounded L-BFGS-B), so the
    non-smooth term becomes linear. Rows past the coefficients (the intercept) are unpenalized
    unless ``penalize_last_row``.
    """
    size = int(np.prod(shape))
    pen = np.ones(shape)
    if not penalize_last_row and shape[0] > dm.n_features:
        pen[dm.n_features:] = 0.0
    pen = pen.ravel()
    use_l1 = l1 > 0
    n_calls = [0]

    def value(w):
        n_calls[0] += 1
        W = w.reshape(shape)
        loss, grad = dm.map_reduce(block_fn, W, *extra)
        loss /= n
        g = grad.ravel() / n
        wp = w * pen
        return loss + 0.5 * l2 * (wp @ w), g + l2 * wp

    if use_l1:
        l1_vec = l1 * pen

        def fun(uv):
            u, v = uv[:size], uv[size:]
            f, g = value(u - v)
            return f + l1_vec @ (u + v), np.concatenate([g + l1_vec, -g + l1_vec])

        # an unpenalized entry (intercept) is still split; its l1 weight is zero
        x0 = np.zeros(2 * size)
        bounds = [(0.0, None)] * (2 * size)
    else:
        fun, x0, bounds = value, np.zeros(size), None
    with held_by_shards(dm) as held:      # the blocks stay mapped across the evaluations
        dm = held                         # (``value`` reads ``dm`` when it is called)
        res = scipy.optimize.minimize(
            fun, x0, jac=True, method="L-BFGS-B", bounds=bounds,
            options={"maxiter": max_iter, "maxls": 50, "gtol": tol,
                     "ftol": 64 * np.finfo(float).eps})
    if not res.success and res.nit >= max_iter:
        warnings.warn(f"L-BFGS-B did not converge in max_iter={max_iter} iterations; raise max_iter "
                      f"or scale the features (shoal.ml.StandardScaler).", ConvergenceWarning)
    w = res.x[:size] - res.x[size:] if use_l1 else res.x
    return w.reshape(shape), int(res.nit)


class _LinearClassifierBase(ShoalEstimatorMixin, DatasetScoreMixin, ClassifierMixin, BaseEstimator):
    _fits_design_matrix = True

    @on_dataset
    def decision_function(self, X):
        check_fitted(self, "coef_")
        X = check_predict_input(self, X, "decision_function")
        scores = X @ self.coef_.T + self.intercept_
        return scores.ravel() if scores.shape[1] == 1 else scores

    @on_dataset
    def predict(self, X):
        check_fitted(self, "coef_")
        scores = self.decision_function(X)
        idx = (scores > 0).astype(np.int64) if scores.ndim == 1 else scores.argmax(axis=1)
        return self.classes_[idx]

    def _validate_common(self):
        if not (np.isscalar(self.C) and self.C > 0):
            raise InvalidInputError(f"C must be a positive number (np.inf for no penalty), got {self.C!r}")
        if not (isinstance(self.max_iter, (int, np.integer)) and self.max_iter > 0):
            raise InvalidInputError(f"max_iter must be a positive integer, got {self.max_iter!r}")
        if not self.tol > 0:
            raise InvalidInputError(f"tol must be positive, got {self.tol!r}")


class LogisticRegression(_LinearClassifierBase):
    """Binary and multinomial logistic regression, L2 / L1 / elastic net, L-BFGS over distributed gradients.

    Objective (scikit-learn's): C * sum_i logloss_i + l1_ratio*|w|_1 + (1-l1_ratio)/2 |w|^2;
    C=np.inf fits without a penalty. Two classes give one coefficient row, K > 2 classes a
    multinomial (softmax) model with K rows.
    """

    def __init__(self, *, C=1.0, l1_ratio=0.0, fit_intercept=True, max_iter=100, tol=1e-4):
        self.C = C
        self.l1_ratio = l1_ratio
        self.fit_intercept = fit_intercept
        self.max_iter = max_iter
        self.tol = tol

    def fit(self, X, y=None, *, features=None, label=None):
        self._validate_common()
        if not 0.0 <= self.l1_ratio <= 1.0:
            raise InvalidInputError(f"l1_ratio must be in [0, 1], got {self.l1_ratio!r}")
        dm = fit_input(self, X, y, "classification", features=features, label=label)
        self.classes_ = dm.classes
        K = len(self.classes_)
        n, d = dm.n_rows, dm.n_features
        cols = 1 if K == 2 else K
        shape = (d + 1 if self.fit_intercept else d, cols)
        lam = 0.0 if np.isinf(self.C) else 1.0 / (self.C * n)
        W, self.n_iter_ = _lbfgs(dm, _logistic_block, shape, (K, self.fit_intercept), n,
                                 lam * (1 - self.l1_ratio), lam * self.l1_ratio, False,
                                 self.max_iter, self.tol)
        self.coef_ = np.ascontiguousarray(W[:d].T)
        self.intercept_ = W[d].copy() if self.fit_intercept else np.zeros(cols)
        self.n_iter_ = np.array([self.n_iter_])
        return self

    @on_dataset
    def predict_proba(self, X):
        check_fitted(self, "coef_")
        scores = self.decision_function(X)
        if scores.ndim == 1:
            p = expit(scores)
            return np.column_stack([1 - p, p])
        return np.exp(scores - logsumexp(scores, axis=1, keepdims=True))

    @on_dataset
    def predict_log_proba(self, X):
        return np.log(self.predict_proba(X))


class LinearSVC(_LinearClassifierBase):
    """Linear SVM: 0.5|w|^2 + C sum_i max(0, 1 - y_i w.x_i)^2, one-vs-rest, L-BFGS (liblinear's objective).

    As in liblinear, the intercept is a weight on a constant feature ``intercept_scaling`` and is
    penalized with the coefficients.
    """

    def __init__(self, *, C=1.0, fit_intercept=True, intercept_scaling=1.0, max_iter=1000, tol=1e-4):
        self.C = C
        self.fit_intercept = fit_intercept
        self.intercept_scaling = intercept_scaling
        self.max_iter = max_iter
        self.tol = tol

    def fit(self, X, y=None, *, features=None, label=None):
        self._validate_common()
        if np.isinf(self.C):
            raise InvalidInputError("LinearSVC needs a finite C")
        dm = fit_input(self, X, y, "classification", features=features, label=label)
        self.classes_ = dm.classes
        K = len(self.classes_)
        n, d = dm.n_rows, dm.n_features
        cols = 1 if K == 2 else K
        s = float(self.intercept_scaling) if self.fit_intercept else 0.0
        shape = (d + 1 if self.fit_intercept else d, cols)
        W, self.n_iter_ = _lbfgs(dm, _sqhinge_block, shape, (K, s), n, 1.0 / (self.C * n), 0.0, True,
                                 self.max_iter, self.tol)
        self.coef_ = np.ascontiguousarray(W[:d].T)
        self.intercept_ = s * W[d] if self.fit_intercept else np.zeros(cols)
        return self
