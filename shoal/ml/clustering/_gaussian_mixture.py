"""GaussianMixture: EM over per-block sufficient statistics, with restarts (Spark's and scikit-learn's model)."""
from __future__ import annotations

import dataclasses
import warnings

import numpy as np
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.exceptions import ConvergenceWarning

from shoal.exceptions import InvalidInputError
from shoal.ml._base import ShoalEstimatorMixin, check_fitted, fit_input, on_dataset
from shoal.ml._executor import LocalExecutor, held_by_shards, held_threads
from shoal.ml._input import _is_dataset, check_predict_input
from shoal.ml.clustering import _kernels as K

COVARIANCE_TYPES = ("full", "diag")
INIT_PARAMS = ("kmeans", "random")
KMEANS_STARTS = 3
KMEANS_ROWS = 1 << 17
MIN_ROWS_PER_THREAD = 4096     # below, a thread's start costs more than its share of a pass


def _positive_definite(a) -> bool:
    try:
        np.linalg.cholesky(a)
        return True
    except np.linalg.LinAlgError:
        return False


def _split_for_threads(dm):
    """An in-process design matrix cut into one piece of rows per thread (views, no copies):
    the compiled E step releases the GIL, so the local executor's threads then share every
    pass. On the cluster the blocks are the unit of parallelism already."""
    ex = dm.executor
    workers = getattr(ex, "max_workers", 1)
    if not isinstance(ex, LocalExecutor) or workers <= 1 or len(dm.blocks) >= workers:
        return dm
    per = -(-workers // len(dm.blocks))
    blocks, rows = [], []
    for (X, y), n in zip(dm.blocks, dm.block_rows):
        cuts = np.linspace(0, n, max(1, min(per, n // MIN_ROWS_PER_THREAD)) + 1).astype(int)
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            blocks.append((X[lo:hi], None if y is None else y[lo:hi]))
            rows.append(int(hi - lo))
    return dataclasses.replace(dm, blocks=blocks, block_rows=rows)


class GaussianMixture(ShoalEstimatorMixin, DensityMixin, BaseEstimator):
    """A mixture of Gaussians fitted by expectation-maximisation (Spark's GaussianMixture,
    scikit-learn's API and results).

    Each EM iteration is one pass over the data: every block computes its rows'
    responsibilities and adds them up into the sufficient statistics (sum of
    responsibilities, of responsibility-weighted rows and of their outer products, or
    squares for "diag") in one compiled loop (Numba; log-sum-exp per row, the
    log-densities from the precision factors the driver computed once for the pass),
    folded as a tree; the driver solves the M step from the sums. The rows stay where
    they are (blocks in the object store, held by shard actors for the whole fit; an
    in-process array is cut into one view per thread, run by one pool for the fit); only
    k x d x d numbers travel per block and pass.

    Parameters (scikit-learn's names; Spark's ``k``, ``maxIter``, ``tol``, ``seed`` are
    n_components, max_iter, tol, random_state):
        n_components: number of components. covariance_type: "full" (one covariance
        matrix per component; Spark's only kind) or "diag". tol: stop when the mean
        log-likelihood per row improves by less. reg_covar: added to the covariances'
        diagonal (keeps them positive definite). max_iter: EM iterations per start.
        n_init: starts (restarts); the one with the best likelihood is kept.
        init_params: "kmeans" (responsibilities from a shoal KMeans fit, as scikit-learn)
        or "random". random_state: seeds the starts.

    Fitted: weights_ (k,), means_ (k, d), covariances_ ((k, d, d) or (k, d)),
    precisions_, precisions_cholesky_, converged_, n_iter_, lower_bound_ (mean
    log-likelihood per row of the best start), n_features_in_, feature_names_in_.
    """

    _fits_design_matrix = True

    def __init__(self, n_components=1, *, covariance_type="full", tol=1e-3, reg_covar=1e-6,
                 max_iter=100, n_init=1, init_params="kmeans", random_state=None):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.random_state = random_state

    def _check_params(self, n_rows):
        for name in ("n_components", "max_iter", "n_init"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise InvalidInputError(f"GaussianMixture {name}={v!r} must be a positive int")
        if self.covariance_type not in COVARIANCE_TYPES:
            raise InvalidInputError(f"GaussianMixture covariance_type={self.covariance_type!r} must be "
                                    f"one of {COVARIANCE_TYPES}")
        if self.init_params not in INIT_PARAMS:
            raise InvalidInputError(f"GaussianMixture init_params={self.init_params!r} must be one of "
                                    f"{INIT_PARAMS}")
        if not (np.isfinite(self.tol) and self.tol >= 0):
            raise InvalidInputError(f"GaussianMixture tol={self.tol!r} must be >= 0")
        if not (np.isfinite(self.reg_covar) and self.reg_covar >= 0):
            raise InvalidInputError(f"GaussianMixture reg_covar={self.reg_covar!r} must be >= 0")
        if n_rows < self.n_components:
            raise InvalidInputError(f"Expected n_samples >= n_components but got n_components = "
                                    f"{self.n_components}, n_samples = {n_rows}")

    # ------------------------------------------------------------------ EM steps

    def _m_step(self, stats, n_rows):
        """Weights, means (relative to the shift) and precision factors from summed moments."""
        _, nk, s1, s2 = stats
        nk = nk + 10 * np.finfo(np.float64).eps
        means = s1 / nk[:, None]
        d = means.shape[1]
        if self.covariance_type == "full":
            cov = s2 / nk[:, None, None] - np.einsum("ki,kj->kij", means, means)
            cov[:, np.arange(d), np.arange(d)] += self.reg_covar
            try:
                # all components in one batched call (a 10 x 10 factorisation costs less than
                # the call that starts it); scikit-learn's P = (L^-1)^T
                chol = np.linalg.cholesky(cov)
            except np.linalg.LinAlgError:
                j = next(j for j in range(len(cov)) if not _positive_definite(cov[j]))
                raise InvalidInputError(
                    "GaussianMixture: component {} has an ill-defined empirical covariance (not "
                    "positive definite; singleton or collapsed samples). Decrease "
                    "n_components, or increase reg_covar.".format(j)) from None
            prec_chol = np.linalg.solve(chol, np.broadcast_to(np.eye(d), cov.shape)).transpose(0, 2, 1)
            # the exact zeros of a triangular factor (the kernel reads the upper triangle only)
            prec_chol = np.triu(prec_chol)
        else:
            cov = np.maximum(s2 / nk[:, None] - means ** 2, 0.0) + self.reg_covar
            if (cov <= 0).any():
                raise InvalidInputError(
                    "GaussianMixture: a component has zero variance in some feature; increase "
                    "reg_covar (it must be > 0 for constant features).")
            prec_chol = 1.0 / np.sqrt(cov)
        return nk / n_rows, means, cov, prec_chol

    def _initial_stats(self, dm, em, shift, seed):
        cov_type = self.covariance_type
        if self.init_params == "kmeans":
            from shoal.ml._kmeans import KMeans
            # the best of KMEANS_STARTS k-means runs: a single one merges two blobs for about
            # one seed in five (scikit-learn's and shoal's alike), and EM does not climb out.
            # Above KMEANS_ROWS rows they run on a uniform sample (Spark also starts from a
            # sample): the first EM pass sees every row, and k-means's passes cost no more
            # than the EM passes at any size.
            if dm.n_rows > KMEANS_ROWS:
                fraction = KMEANS_ROWS / dm.n_rows
                sample = np.concatenate(dm.map_indexed(K.gmm_sample_rows, fraction, seed))
                fit_on = sample if len(sample) >= self.n_components else dm
            else:
                fit_on = dm
            km = KMeans(self.n_components, n_init=KMEANS_STARTS, random_state=seed).fit(fit_on)
            return em.map_reduce(K.gmm_hard_init, shift, km.cluster_centers_, cov_type)
        parts = dm.map_indexed(K.gmm_random_init, shift, self.n_components, seed, cov_type)
        total = parts[0]
        for p in parts[1:]:
            total = tuple(a + b for a, b in zip(total, p))
        return total

    def _run_once(self, dm, em, shift, seed):
        """One start: dm for the initialisation (the random one draws per block of dm), em
        (the same rows, cut for the local threads) for the EM passes."""
        n = dm.n_rows
        weights, means, cov, prec_chol = self._m_step(self._initial_stats(dm, em, shift, seed), n)
        lower_bound, converged, n_iter = -np.inf, False, 0
        for n_iter in range(1, self.max_iter + 1):
            prev = lower_bound
            stats = em.map_reduce(K.gmm_e_step, shift, np.log(weights), means, prec_chol,
                                  self.covariance_type)
            lower_bound = stats[0] / n
            weights, means, cov, prec_chol = self._m_step(stats, n)
            if abs(lower_bound - prev) < self.tol:
                converged = True
                break
        return lower_bound, converged, n_iter, (weights, means, cov, prec_chol)

    def fit(self, X, y=None, *, features=None, label=None):
        """Estimate the mixture's parameters by EM (n_init starts, the best kept); returns self."""
        self._fit(X, y, features, label, False)
        return self

    def _fit(self, X, y, features, label, want_labels):
        dm = fit_input(self, X, y, None, features=features, label=label)
        self._check_params(dm.n_rows)
        rs = self.random_state
        rng = rs if isinstance(rs, np.random.RandomState) else np.random.RandomState(rs)
        seeds = rng.randint(0, 2**31 - 1, size=self.n_init)
        with held_by_shards(dm) as held, held_threads(_split_for_threads(held)) as em:
            # rows are centred on a first guess of the mean: the second moments then hold
            # no large offset (a raw sum of squares would lose the digits of the covariance)
            sums, count = em.map_reduce(K.gmm_column_sums)
            shift = sums / max(count, 1.0)
            best = None
            for seed in seeds:
                result = self._run_once(held, em, shift, int(seed))
                if best is None or result[0] > best[0]:
                    best = result
            lower_bound, converged, n_iter, (weights, means, cov, prec_chol) = best
            self._set(weights, means + shift, cov, prec_chol)
            self.converged_, self.n_iter_, self.lower_bound_ = converged, n_iter, lower_bound
            if not converged:
                warnings.warn(f"GaussianMixture did not converge in max_iter={self.max_iter} iterations "
                              f"(n_init={self.n_init}); increase max_iter or tol.", ConvergenceWarning)
            if _is_dataset(X) or not want_labels:
                return None
            parts = held.map(K.gmm_labels, np.zeros(dm.n_features), np.log(self.weights_),
                             self.means_, self.precisions_cholesky_, self.covariance_type)
        return np.concatenate([p[0] for p in parts]).astype(np.int64)

    def _set(self, weights, means, cov, prec_chol):
        self.weights_, self.means_, self.covariances_ = weights, means, cov
        self.precisions_cholesky_ = prec_chol
        if self.covariance_type == "full":
            self.precisions_ = np.einsum("kij,klj->kil", prec_chol, prec_chol)
        else:
            self.precisions_ = prec_chol ** 2

    # ------------------------------------------------------------------ predict

    def _log_prob(self, X, method):
        check_fitted(self, "means_")
        X = check_predict_input(self, X, method)
        return K.weighted_log_prob(X, 0.0, np.log(self.weights_), self.means_,
                                   self.precisions_cholesky_, self.covariance_type)

    @on_dataset
    def predict(self, X):
        """The most likely component of each row."""
        return self._log_prob(X, "predict").argmax(axis=1)

    @on_dataset
    def predict_proba(self, X):
        """Each row's posterior probability of every component, (n, n_components)."""
        lp = self._log_prob(X, "predict_proba")
        return np.exp(lp - K.log_sum_exp(lp)[:, None])

    def score_samples(self, X):
        """Log-likelihood of each row under the mixture."""
        return K.log_sum_exp(self._log_prob(X, "score_samples"))

    def score(self, X, y=None):
        """Mean log-likelihood per row."""
        return float(self.score_samples(X).mean())

    def fit_predict(self, X, y=None, *, features=None, label=None):
        """Fit, then the component of each row (a Dataset: the Dataset with a prediction column)."""
        labels = self._fit(X, y, features, label, True)
        return self.predict(X) if labels is None else labels

    def _n_parameters(self) -> int:
        k, d = self.means_.shape
        cov = k * d * (d + 1) / 2.0 if self.covariance_type == "full" else k * d
        return int(cov + k * d + k - 1)

    def bic(self, X) -> float:
        """Bayesian information criterion of the fitted model on X (lower is better)."""
        X = check_predict_input(self, X, "bic")
        return -2 * self.score(X) * X.shape[0] + self._n_parameters() * np.log(X.shape[0])

    def aic(self, X) -> float:
        """Akaike information criterion of the fitted model on X (lower is better)."""
        X = check_predict_input(self, X, "aic")
        return -2 * self.score(X) * X.shape[0] + 2 * self._n_parameters()
