"""Map-side kernels of shoal.ml.regression: what one block contributes to a pass.

NumPy only (no SciPy or scikit-learn): these run in worker tasks and shard actors. Every
kernel takes the block as ``(X, y, ...)`` (the DesignMatrix convention).
"""
from __future__ import annotations

import numpy as np

# ----------------------------------------------------------------------- isotonic regression


def isotonic_aggregate(X, y, feature_index, weighted):
    """The block's rows pooled by distinct feature value: (x sorted, sum of weights, sum of
    weight * y). ``weighted``: X's last column holds the row weights (rows of weight 0 drop
    out, as in scikit-learn). Rows with the same x get the same isotonic fit, so these sums
    are all a fit needs."""
    x = X[:, feature_index]
    w = X[:, -1] if weighted else np.ones(len(x))
    keep = w > 0
    x, w, y = x[keep], w[keep], y[keep].astype(np.float64)
    xs, inverse = np.unique(x, return_inverse=True)
    return xs, np.bincount(inverse, weights=w, minlength=len(xs)), \
        np.bincount(inverse, weights=w * y, minlength=len(xs))


def min_last_column(X, y):
    """The smallest value of X's last column in the block (a weight check), inf when empty."""
    return float(X[:, -1].min()) if len(X) else np.inf


def isotonic_merge(a, b):
    """Two blocks' aggregates as one (the fold of isotonic_aggregate)."""
    xs, inverse = np.unique(np.concatenate([a[0], b[0]]), return_inverse=True)
    w = np.bincount(inverse, weights=np.concatenate([a[1], b[1]]), minlength=len(xs))
    s = np.bincount(inverse, weights=np.concatenate([a[2], b[2]]), minlength=len(xs))
    return xs, w, s


# ----------------------------------------------------------------------- generalised linear models
#
# A family is (name, variance power); a link is (name, power). Both are plain tuples and
# strings so that they travel to tasks as data.

EPS = 1e-16


def _ndtr(x):
    """The standard normal cdf (probit link); NumPy has no erf, so it goes through math's."""
    import math
    return 0.5 * (1.0 + np.frompyfunc(math.erf, 1, 1)(x / math.sqrt(2.0)).astype(np.float64))


def _ndtri(p):
    """The standard normal quantile by Newton steps on _ndtr (probit's link function)."""
    x = np.zeros_like(p)
    for _ in range(60):
        step = (_ndtr(x) - p) / np.maximum(np.exp(-0.5 * x * x) / np.sqrt(2.0 * np.pi), 1e-300)
        x = np.clip(x - step, -40.0, 40.0)
        if np.abs(step).max(initial=0.0) < 1e-13:
            break
    return x


def link_fn(mu, link, power):
    """eta = g(mu)."""
    if link == "identity":
        return mu
    if link == "log":
        return np.log(mu)
    if link == "inverse":
        return 1.0 / mu
    if link == "logit":
        return np.log(mu / (1.0 - mu))
    if link == "probit":
        return _ndtri(mu)
    if link == "cloglog":
        return np.log(-np.log1p(-mu))
    if link == "sqrt":
        return np.sqrt(mu)
    return mu ** power                       # "power" (Spark's tweedie linkPower != 0)


def inverse_link(eta, link, power):
    """mu = g^-1(eta)."""
    if link == "identity":
        return eta
    if link == "log":
        return np.exp(eta)
    if link == "inverse":
        return 1.0 / eta
    if link == "logit":
        return 1.0 / (1.0 + np.exp(-eta))
    if link == "probit":
        return _ndtr(eta)
    if link == "cloglog":
        return -np.expm1(-np.exp(eta))
    if link == "sqrt":
        return eta * eta
    return eta ** (1.0 / power)


def link_derivative(mu, link, power):
    """g'(mu)."""
    if link == "identity":
        return np.ones_like(mu)
    if link == "log":
        return 1.0 / mu
    if link == "inverse":
        return -1.0 / (mu * mu)
    if link == "logit":
        return 1.0 / (mu * (1.0 - mu))
    if link == "probit":
        z = _ndtri(mu)
        return np.sqrt(2.0 * np.pi) * np.exp(0.5 * z * z)
    if link == "cloglog":
        return 1.0 / ((mu - 1.0) * np.log1p(-mu))
    if link == "sqrt":
        return 0.5 / np.sqrt(mu)
    return power * mu ** (power - 1.0)


def project(mu, family):
    """Keep mu inside the family's domain (Spark's Family.project)."""
    name, _ = family
    if name == "binomial":
        return np.clip(mu, EPS, 1.0 - EPS)
    if name == "gaussian":
        return mu
    return np.maximum(mu, EPS)


def variance(mu, family):
    name, p = family
    if name == "gaussian":
        return np.ones_like(mu)
    if name == "binomial":
        return mu * (1.0 - mu)
    return mu ** p            # poisson p=1, gamma p=2, tweedie p


def _xlogy_ratio(y, mu):
    """y log(y / mu), 0 where y is 0."""
    out = np.zeros_like(y)
    pos = y > 0
    out[pos] = y[pos] * np.log(y[pos] / mu[pos])
    return out


def unit_deviance(y, mu, family):
    """Each row's deviance (Spark's Family.deviance, weight 1)."""
    name, p = family
    if name == "gaussian" or p == 0.0:
        return (y - mu) ** 2
    if name == "binomial":
        return 2.0 * (_xlogy_ratio(y, mu) + _xlogy_ratio(1.0 - y, 1.0 - mu))
    if p == 1.0:
        return 2.0 * (_xlogy_ratio(y, mu) - (y - mu))
    if p == 2.0:
        return 2.0 * (-np.log(y / mu) + (y - mu) / mu)
    return 2.0 * (np.maximum(y, 0.0) ** (2.0 - p) / ((1.0 - p) * (2.0 - p))
                  - y * mu ** (1.0 - p) / (1.0 - p) + mu ** (2.0 - p) / (2.0 - p))


def initial_mean(y, family, weight):
    """mu to start IRLS from (Spark's Family.initialize)."""
    name, p = family
    if name == "binomial":
        return (weight * y + 0.5) / (weight + 1.0)
    if name == "gaussian" or p == 0.0 or p == 2.0:
        return y.astype(np.float64)
    return np.where(y == 0, 0.1, y).astype(np.float64)   # poisson and tweedie: log(0) otherwise


def split_block(X, layout):
    """(features, weights, offsets) of a block whose trailing columns hold the weight and
    offset columns (Spark's weightCol, offsetCol): layout = (d, has_weight, has_offset)."""
    d, has_weight, has_offset = layout
    w = X[:, d] if has_weight else np.ones(len(X))
    off = X[:, d + int(has_weight)] if has_offset else np.zeros(len(X))
    return X[:, :d], w, off


def glm_label_range(X, y, layout):
    """(min y, max y, sum w*y, sum w, min w, rows) of the block: the family's domain check,
    the weights' check and the null model's mean."""
    if len(y) == 0:
        return np.inf, -np.inf, 0.0, 0.0, np.inf, 0
    _, w, _ = split_block(X, layout)
    y = y.astype(np.float64)
    return float(y.min()), float(y.max()), float(w @ y), float(w.sum()), float(w.min()), len(y)


def glm_label_reduce(a, b):
    return (min(a[0], b[0]), max(a[1], b[1]), a[2] + b[2], a[3] + b[3], min(a[4], b[4]), a[5] + b[5])


def _design(X, fit_intercept, use_features=True):
    if not use_features:
        X = X[:, :0]
    return np.column_stack([X, np.ones(len(X))]) if fit_intercept else X


def glm_irls_block(X, y, beta, family, link, link_power, fit_intercept, layout, use_features=True):
    """One IRLS pass over the block: (A'WA, A'Wz, deviance) at beta (None: from the family's
    initial mean), A being the features (none for the null model) with the intercept
    column, W the working weights times the row weights, z the working response less the
    offset."""
    Xf, wt, off = split_block(X, layout)
    A = _design(Xf, fit_intercept, use_features)
    y = y.astype(np.float64)
    if beta is None:
        mu = project(initial_mean(y, family, wt), family)
        eta = link_fn(mu, link, link_power)
    else:
        eta = A @ beta + off
        mu = project(inverse_link(eta, link, link_power), family)
    gp = link_derivative(mu, link, link_power)
    w = wt / (variance(mu, family) * gp * gp)
    z = eta - off + (y - mu) * gp
    Aw = A * w[:, None]
    return Aw.T @ A, Aw.T @ z, float(wt @ unit_deviance(y, mu, family))


def glm_summary_block(X, y, beta, family, link, link_power, fit_intercept, layout, null_beta):
    """At the fitted beta, the sums the model summary needs: A'WA (for standard errors),
    deviance, Pearson chi^2, the null model's deviance (null_beta: its intercept, or an
    empty vector), and the family's log-likelihood pieces (Spark's AIC)."""
    import math
    Xf, wt, off = split_block(X, layout)
    A = _design(Xf, fit_intercept)
    y = y.astype(np.float64)
    mu = project(inverse_link(A @ beta + off, link, link_power), family)
    gp = link_derivative(mu, link, link_power)
    var = variance(mu, family)
    w = wt / (var * gp * gp)
    null_mu = project(inverse_link(_design(Xf, fit_intercept, False) @ null_beta + off, link, link_power),
                      family)
    out = {"G": (A * w[:, None]).T @ A, "dev": float(wt @ unit_deviance(y, mu, family)),
           "pearson": float(wt @ ((y - mu) ** 2 / var)),
           "null_dev": float(wt @ unit_deviance(y, null_mu, family)),
           "sum_log_w": float(np.log(wt[wt > 0]).sum()),
           "log_y": 0.0, "y_over_mu": 0.0, "log_mu": 0.0, "poisson_ll": 0.0, "binomial_ll": 0.0}
    name, p = family
    if name == "gamma" or (name == "tweedie" and p == 2.0):
        out.update(log_y=float(wt @ np.log(y)), y_over_mu=float(wt @ (y / mu)), log_mu=float(wt @ np.log(mu)))
    elif name == "poisson" or (name == "tweedie" and p == 1.0):
        log_fact = np.frompyfunc(math.lgamma, 1, 1)(y + 1.0).astype(np.float64) if len(y) else np.zeros(0)
        out["poisson_ll"] = float(wt @ (y * np.log(mu) - mu - log_fact))
    elif name == "binomial":
        out["binomial_ll"] = float(wt @ (y * np.log(mu) + (1.0 - y) * np.log1p(-mu)))
    return out


# ----------------------------------------------------------------------- accelerated failure time


def aft_loss_grad(X, y, theta, fit_intercept):
    """Sum over the block of Spark's AFT negative log-likelihood (Weibull) and its gradient.

    The block's last column is the censor indicator (1: the event happened, 0: censored);
    theta = [coefficients (d), intercept, log sigma]. With eps = (log t - x.b - b0) / sigma,
    a row contributes delta (log sigma - eps) + exp(eps)."""
    delta = X[:, -1]
    Xf = X[:, :-1]
    d = Xf.shape[1]
    beta, b0, log_sigma = theta[:d], theta[d] if fit_intercept else 0.0, theta[d + 1]
    sigma = np.exp(log_sigma)
    eps = (np.log(y) - Xf @ beta - b0) / sigma
    e = np.exp(eps)
    loss = float((delta * (log_sigma - eps) + e).sum())
    r = (delta - e) / sigma                  # d loss / d (x.b): dloss/deps = e - delta, deps/d(xb) = -1/sigma
    grad = np.zeros_like(theta)
    grad[:d] = Xf.T @ r
    if fit_intercept:
        grad[d] = r.sum()
    grad[d + 1] = float((delta - (e - delta) * eps).sum())
    return loss, grad


def aft_label_check(X, y):
    """(min time, min censor, max censor, rows) of the block: the domain checks of AFT."""
    if len(y) == 0:
        return np.inf, np.inf, -np.inf, 0
    c = X[:, -1]
    return float(y.min()), float(c.min()), float(c.max()), len(y)


def aft_check_reduce(a, b):
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), a[3] + b[3]


def aft_append_events(X, y):
    """A block with a censor column of ones (every event observed) appended."""
    return np.column_stack([X, np.ones(len(X))]), y
