"""GeneralizedLinearRegression: IRLS on per-block weighted Gram matrices (Spark's model and summary)."""
from __future__ import annotations

import math
import warnings

import numpy as np
import scipy.linalg
import scipy.stats
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.exceptions import ConvergenceWarning

from shoal.exceptions import InvalidInputError
from shoal.ml._base import DatasetScoreMixin, ShoalEstimatorMixin, check_fitted, fit_input, on_dataset
from shoal.ml._executor import held_by_shards
from shoal.ml._input import check_predict_input
from shoal.ml.regression import _kernels as K
from shoal.ml.regression._row_columns import append_row_columns

# each family's links, the default first (Spark's GeneralizedLinearRegression)
FAMILY_LINKS = {
    "gaussian": ("identity", "log", "inverse"),
    "binomial": ("logit", "probit", "cloglog"),
    "poisson": ("log", "identity", "sqrt"),
    "gamma": ("inverse", "identity", "log"),
    "tweedie": (),                      # a power link, link_power=
}
FAMILY_POWER = {"gaussian": 0.0, "binomial": None, "poisson": 1.0, "gamma": 2.0}


def _label_name(y, label):
    return label if label is not None else (y if isinstance(y, str) else "y")


class GeneralizedLinearRegression(ShoalEstimatorMixin, DatasetScoreMixin, RegressorMixin, BaseEstimator):
    """A generalised linear model fitted by iteratively reweighted least squares (Spark's
    GeneralizedLinearRegression, its families, links and summary; scikit-learn's API).

    Every IRLS iteration is one pass: each block returns its weighted Gram matrix A'WA
    and A'Wz (A: the features with an intercept column; W, z: the working weights and
    response at the current coefficients), folded as a tree; the driver solves the
    (d+1) x (d+1) system. The blocks stay held by shard actors across iterations; only
    the coefficient vector travels.

    Parameters (Spark's, in scikit-learn's spelling):
        family: "gaussian", "binomial" (labels in [0, 1]), "poisson" (labels >= 0),
        "gamma" (labels > 0) or "tweedie" (``variance_power`` p: 0, or >= 1; labels >= 0,
        > 0 for p >= 2). link: the family's links as in Spark: gaussian "identity" (default),
        "log", "inverse"; binomial "logit" (default), "probit", "cloglog"; poisson "log"
        (default), "identity", "sqrt"; gamma "inverse" (default), "identity", "log". Tweedie
        takes ``link_power`` instead (mu^link_power; 0 is log; default 1 - variance_power).
        reg_param: L2 penalty in scikit-learn's scaling (its PoissonRegressor ``alpha``):
        minimises deviance / (2n) + reg_param / 2 |w|^2, intercept unpenalised; 0 (the
        default) is maximum likelihood, Spark's fit at regParam 0. fit_intercept,
        max_iter (IRLS iterations, Spark's 25), tol (stop when no coefficient moves by more
        than tol times the largest one). weight_col, offset_col: Spark's weightCol and
        offsetCol, columns of a table (array input passes ``sample_weight=`` / ``offset=``
        to fit): per-row weights, and a known term added to the linear predictor.

    Fitted: coef_, intercept_, n_iter_, and Spark's summary: deviance_, null_deviance_,
    dispersion_ (1 for binomial and poisson, else Pearson chi^2 / residual degrees of
    freedom), aic_ (NaN for tweedie but p 0, 1 and 2), degrees_of_freedom_,
    residual_degree_of_freedom_, coefficient_standard_errors_, t_values_, p_values_ (these
    three list the coefficients, then the intercept, as Spark does; p-values from the
    normal distribution for binomial and poisson, Student's t otherwise).

    Raises InvalidInputError for a link the family does not have, or a label outside the
    family's domain (naming the label column).
    """

    _fits_design_matrix = True

    def __init__(self, family="gaussian", link=None, *, variance_power=0.0, link_power=None,
                 reg_param=0.0, fit_intercept=True, max_iter=25, tol=1e-6, weight_col=None, offset_col=None):
        self.family = family
        self.link = link
        self.variance_power = variance_power
        self.link_power = link_power
        self.reg_param = reg_param
        self.fit_intercept = fit_intercept
        self.max_iter = max_iter
        self.tol = tol
        self.weight_col = weight_col
        self.offset_col = offset_col

    # ------------------------------------------------------------------ parameters

    def _resolve(self):
        """((family name, variance power), link name, link power) after checking the parameters."""
        if self.family not in FAMILY_LINKS:
            raise InvalidInputError(f"GeneralizedLinearRegression family={self.family!r} must be one of "
                                    f"{sorted(FAMILY_LINKS)}")
        if self.family == "tweedie":
            p = float(self.variance_power)
            if not (p == 0.0 or p >= 1.0):
                raise InvalidInputError(f"GeneralizedLinearRegression variance_power={self.variance_power!r} "
                                        f"must be 0 or >= 1 (Spark's tweedie family)")
            if self.link is not None:
                raise InvalidInputError("GeneralizedLinearRegression: the tweedie family takes link_power= "
                                        "(0 is the log link), not link=")
            lp = 1.0 - p if self.link_power is None else float(self.link_power)
            link = "log" if lp == 0.0 else "identity" if lp == 1.0 else "inverse" if lp == -1.0 \
                else "sqrt" if lp == 0.5 else "power"
            return ("tweedie", p), link, lp
        if self.link_power is not None:
            raise InvalidInputError(f"GeneralizedLinearRegression: link_power= is for the tweedie family; "
                                    f"family={self.family!r} takes link= (one of {FAMILY_LINKS[self.family]})")
        links = FAMILY_LINKS[self.family]
        link = links[0] if self.link is None else self.link
        if link not in links:
            raise InvalidInputError(f"GeneralizedLinearRegression link={self.link!r} is not a link of the "
                                    f"{self.family} family; use one of {links}")
        return (self.family, FAMILY_POWER[self.family]), link, 1.0     # a named link ignores the power

    def _check_numbers(self):
        if not (isinstance(self.max_iter, (int, np.integer)) and self.max_iter > 0):
            raise InvalidInputError(f"GeneralizedLinearRegression max_iter={self.max_iter!r} must be a "
                                    f"positive integer")
        if not self.tol > 0:
            raise InvalidInputError(f"GeneralizedLinearRegression tol={self.tol!r} must be positive")
        if not self.reg_param >= 0:
            raise InvalidInputError(f"GeneralizedLinearRegression reg_param={self.reg_param!r} must be >= 0")

    @staticmethod
    def _check_labels(family, lo, hi, label):
        name, p = family
        ok, domain = True, ""
        if name == "binomial":
            ok, domain = lo >= 0 and hi <= 1, "in [0, 1]"
        elif name == "poisson" or (name == "tweedie" and 1.0 <= p < 2.0):
            ok, domain = lo >= 0, ">= 0"
        elif name == "gamma" or (name == "tweedie" and p >= 2.0):
            ok, domain = lo > 0, "> 0"
        if not ok:
            raise InvalidInputError(
                f"GeneralizedLinearRegression family={name!r}: label column {label!r} must be {domain}, "
                f"but its values range over [{lo:g}, {hi:g}]; choose another family or fix the labels.")

    # ------------------------------------------------------------------ fit

    def fit(self, X, y=None, *, features=None, label=None, sample_weight=None, offset=None):
        """Fit by IRLS (Fisher scoring); returns self with the coefficients and the summary.

        ``sample_weight`` and ``offset`` (array input; tables name them as weight_col= /
        offset_col=): per-row weights (>= 0) and a known term added to the linear predictor
        (log exposure for rates with the log link)."""
        family, link, lp = self._resolve()
        self._check_numbers()
        label_name = _label_name(y, label)
        X, y, features, label, (has_w, has_o), names = append_row_columns(
            self, X, y, features, label, [("weight_col", self.weight_col), ("offset_col", self.offset_col)],
            [("sample_weight", sample_weight), ("offset", offset)])
        dm = fit_input(self, X, y, "regression", features=features, label=label)
        d = dm.n_features - int(has_w) - int(has_o)
        self.n_features_in_ = d
        if hasattr(self, "feature_names_in_"):
            self.feature_names_in_ = self.feature_names_in_[:d]
        layout = (d, has_w, has_o)
        size = d + 1 if self.fit_intercept else d
        ext = (family, link, lp, bool(self.fit_intercept), layout)
        with held_by_shards(dm) as held:
            lo, hi, swy, sw, w_min, n = held.map_reduce(K.glm_label_range, layout, reduce=K.glm_label_reduce)
            self._check_labels(family, lo, hi, label_name)
            if has_w and (w_min < 0 or sw <= 0):
                raise InvalidInputError(f"GeneralizedLinearRegression: weight column {names[0]!r} must hold "
                                        f"weights >= 0 that are not all zero; its smallest is {w_min:g}, its sum "
                                        f"{sw:g}.")
            # scikit-learn's scaling: sum_i w_i dev_i / (2 sum w) + reg_param / 2 |coef|^2
            pen = np.full(size, float(self.reg_param) * sw)
            if self.fit_intercept:
                pen[d] = 0.0
            beta, self.n_iter_ = self._irls(held, ext, pen, True)
            # the intercept-only model (Spark's null model): the weighted label mean, unless an
            # offset makes it a fit of its own
            if not self.fit_intercept:
                null_beta = np.zeros(0)
            elif not has_o:
                null_beta = K.link_fn(np.array([swy / sw]), link, lp)
            else:
                null_beta, _ = self._irls(held, ext, np.zeros(1), False)
            s = held.map_reduce(K.glm_summary_block, beta, *ext, null_beta)
        self.coef_ = beta[:d].copy()
        self.intercept_ = float(beta[d]) if self.fit_intercept else 0.0
        self._summarise(s, family, n, size, pen)
        return self

    def _irls(self, held, ext, pen, use_features):
        """Iterate weighted least squares to convergence; (coefficients, iterations)."""
        family, link = ext[0], ext[1]
        beta = None
        for it in range(1, self.max_iter + 1):
            G, b, _ = held.map_reduce(K.glm_irls_block, beta, *ext, use_features)
            new = self._solve(G + np.diag(pen), b)
            if not np.all(np.isfinite(new)):
                raise InvalidInputError(
                    f"GeneralizedLinearRegression: IRLS diverged (non-finite coefficients) with "
                    f"family={family[0]!r}, link={link!r}; the link may not keep the mean in the "
                    f"family's domain for this data (try the default link), or add reg_param.")
            step = np.inf if beta is None else np.abs(new - beta).max()
            beta = new
            if step <= self.tol * max(1.0, np.abs(beta).max()):
                return beta, it
        warnings.warn(f"GeneralizedLinearRegression: IRLS did not converge in max_iter={self.max_iter} "
                      f"iterations; raise max_iter or tol.", ConvergenceWarning)
        return beta, self.max_iter

    @staticmethod
    def _solve(A, b):
        try:
            return scipy.linalg.solve(A, b, assume_a="pos")
        except (scipy.linalg.LinAlgError, ValueError):
            return scipy.linalg.lstsq(A, b)[0]     # collinear features: the minimum-norm step

    def _summarise(self, s, family, n, rank, pen):
        name, p = family
        self.deviance_, self.null_deviance_ = s["dev"], s["null_dev"]
        self.degrees_of_freedom_ = rank
        self.residual_degree_of_freedom_ = n - rank
        self.residual_degree_of_freedom_null_ = n - int(self.fit_intercept)
        df = max(n - rank, 1)
        fixed = name in ("binomial", "poisson") or (name == "tweedie" and p == 1.0)
        self.dispersion_ = 1.0 if fixed else s["pearson"] / df
        cov = scipy.linalg.pinvh(s["G"] + np.diag(pen)) * self.dispersion_
        se = np.sqrt(np.maximum(np.diag(cov), 0.0))
        beta = np.append(self.coef_, self.intercept_) if self.fit_intercept else self.coef_
        with np.errstate(divide="ignore", invalid="ignore"):
            t = beta / se
        self.coefficient_standard_errors_, self.t_values_ = se, t
        if fixed:
            self.p_values_ = 2.0 * scipy.stats.norm.sf(np.abs(t))
        else:
            self.p_values_ = 2.0 * scipy.stats.t.sf(np.abs(t), df)
        self.aic_ = self._aic(s, family, n, rank)

    @staticmethod
    def _aic(s, family, n, rank):
        """Spark's AIC: -2 log-likelihood (the family's, at the fit) + 2 * parameters."""
        name, p = family
        if name == "gaussian" or (name == "tweedie" and p == 0.0):
            return n * (math.log(s["dev"] / n * 2.0 * math.pi) + 1.0) + 2.0 - s["sum_log_w"] + 2.0 * rank
        if name == "binomial":
            return -2.0 * s["binomial_ll"] + 2.0 * rank
        if name == "poisson" or (name == "tweedie" and p == 1.0):
            return -2.0 * s["poisson_ll"] + 2.0 * rank
        if name == "gamma" or (name == "tweedie" and p == 2.0):
            disp = s["dev"] / n
            k = 1.0 / disp
            ll = ((k - 1.0) * s["log_y"] - k * s["y_over_mu"] - n * math.lgamma(k)
                  - k * (s["log_mu"] + n * math.log(disp)))
            return -2.0 * ll + 2.0 + 2.0 * rank
        return float("nan")

    # ------------------------------------------------------------------ predict

    @on_dataset
    def predict(self, X):
        """The fitted mean g^-1(X coef_ + intercept_) (Spark's prediction column)."""
        family, link, lp = self._resolve()
        return K.inverse_link(self.predict_link(X), link, lp)

    def predict_link(self, X):
        """The linear predictor X coef_ + intercept_ (Spark's linkPredictionCol)."""
        check_fitted(self, "coef_")
        X = check_predict_input(self, X, "predict_link")
        return X @ self.coef_ + self.intercept_
