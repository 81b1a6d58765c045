"""MultilayerPerceptronClassifier: full-batch L-BFGS on gradients summed over the blocks."""
from __future__ import annotations

import warnings

import numpy as np
import scipy.optimize
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning

from shoal.exceptions import InvalidInputError
from shoal.ml._base import DatasetScoreMixin, ShoalEstimatorMixin, check_fitted, fit_input, on_dataset
from shoal.ml._executor import held_by_shards
from shoal.ml._input import check_predict_input
from shoal.ml.neural_network import _kernels as K

ACTIVATIONS = ("logistic", "tanh", "relu")


class MultilayerPerceptronClassifier(ShoalEstimatorMixin, DatasetScoreMixin, ClassifierMixin, BaseEstimator):
    """A feed-forward network with a softmax output, trained by full-batch L-BFGS (Spark's
    MultilayerPerceptronClassifier; scikit-learn's API, close to its MLPClassifier with
    ``solver="lbfgs"``).

    Each L-BFGS evaluation is one pass: every block runs forward and back propagation on
    its rows and returns its summed loss and gradient, folded as a tree; the blocks stay
    held by shard actors for the whole fit and only the parameter vector travels.

    Parameters (Spark's, in scikit-learn's spelling):
        layers: Spark's layer sizes, input first and output last, e.g. ``[4, 5, 3]``; the
        first must be the number of features and the last at least the number of classes.
        When None, ``hidden_layer_sizes`` (scikit-learn's name) gives the hidden layers and
        the input and output sizes come from the data. activation: of the hidden layers,
        "logistic" (Spark's sigmoid, the default), "tanh" or "relu". alpha: L2 penalty on the
        weights (not the biases) in scikit-learn's scaling, loss + alpha / (2n) |W|^2; 0 is
        Spark's fit. max_iter (L-BFGS iterations, Spark's 100), tol (Spark's 1e-6),
        random_state (Spark's seed: the Glorot-uniform initial weights).

    Fitted: coefs_, intercepts_ (per layer), layers_, classes_, n_iter_, loss_ (mean
    cross-entropy plus penalty at the end), n_features_in_, feature_names_in_.

    Raises InvalidInputError for layers that do not fit the data (naming the mismatch), or
    a bad parameter.
    """

    _fits_design_matrix = True

    def __init__(self, layers=None, *, hidden_layer_sizes=(10,), activation="logistic", alpha=0.0,
                 max_iter=100, tol=1e-6, random_state=None):
        self.layers = layers
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.alpha = alpha
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state

    def _layers(self, d, k):
        if self.activation not in ACTIVATIONS:
            raise InvalidInputError(f"MultilayerPerceptronClassifier activation={self.activation!r} must be "
                                    f"one of {ACTIVATIONS}")
        if not (isinstance(self.max_iter, (int, np.integer)) and self.max_iter > 0):
            raise InvalidInputError(f"MultilayerPerceptronClassifier max_iter={self.max_iter!r} must be a "
                                    f"positive integer")
        if not (self.tol > 0 and self.alpha >= 0):
            raise InvalidInputError(f"MultilayerPerceptronClassifier needs tol > 0 and alpha >= 0, got "
                                    f"tol={self.tol!r}, alpha={self.alpha!r}")
        if self.layers is None:
            hidden = self.hidden_layer_sizes
            hidden = [hidden] if isinstance(hidden, (int, np.integer)) else list(hidden)
            layers = [d] + hidden + [k]
        else:
            layers = list(self.layers)
            if len(layers) < 2:
                raise InvalidInputError(f"MultilayerPerceptronClassifier layers={self.layers!r} needs at least "
                                        f"the input and output sizes")
            if layers[0] != d:
                raise InvalidInputError(f"MultilayerPerceptronClassifier layers={self.layers!r} starts with "
                                        f"{layers[0]} inputs but the data has {d} feature column(s); make the "
                                        f"first layer {d}")
            if layers[-1] < k:
                raise InvalidInputError(f"MultilayerPerceptronClassifier layers={self.layers!r} ends with "
                                        f"{layers[-1]} outputs but the label has {k} classes; make the last "
                                        f"layer at least {k}")
        if any(not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1 for n in layers):
            raise InvalidInputError(f"MultilayerPerceptronClassifier layer sizes must be positive ints, got "
                                    f"{layers}")
        return tuple(int(n) for n in layers)

    def _initial(self, layers):
        """scikit-learn's initialisation: weights and biases uniform in +-sqrt(f / (fan_in +
        fan_out)), f = 2 for the sigmoid and 6 otherwise (Glorot)."""
        rng = np.random.RandomState(self.random_state) if not isinstance(
            self.random_state, np.random.RandomState) else self.random_state
        parts = []
        factor = 2.0 if self.activation == "logistic" else 6.0
        for n_in, n_out in zip(layers[:-1], layers[1:]):
            bound = np.sqrt(factor / (n_in + n_out))
            parts += [rng.uniform(-bound, bound, n_in * n_out), rng.uniform(-bound, bound, n_out)]
        return np.concatenate(parts)

    def fit(self, X, y=None, *, features=None, label=None):
        """Train the network by L-BFGS on the whole data; returns self."""
        dm = fit_input(self, X, y, "classification", features=features, label=label)
        self.classes_ = dm.classes
        layers = self._layers(dm.n_features, len(self.classes_))
        n = dm.n_rows
        theta0 = self._initial(layers)
        # the weights (not the biases) are penalised
        pen = np.concatenate([np.concatenate([np.ones(a * b), np.zeros(b)])
                              for a, b in zip(layers[:-1], layers[1:])]) * (self.alpha / n)
        with held_by_shards(dm) as held:
            def fun(theta):
                loss, grad = held.map_reduce(K.mlp_loss_grad, theta, layers, self.activation)
                wp = pen * theta
                return loss / n + 0.5 * (wp @ theta), grad / n + wp
            res = scipy.optimize.minimize(fun, theta0, jac=True, method="L-BFGS-B",
                                          options={"maxiter": self.max_iter, "ftol": self.tol,
                                                   "gtol": self.tol, "maxls": 50})
        if not res.success and res.nit >= self.max_iter:
            warnings.warn(f"MultilayerPerceptronClassifier: L-BFGS did not converge in max_iter="
                          f"{self.max_iter} iterations; raise max_iter or scale the features "
                          f"(shoal.ml.StandardScaler).", ConvergenceWarning)
        params = K.unpack(res.x.copy(), layers)
        self.coefs_ = [W for W, _ in params]
        self.intercepts_ = [b for _, b in params]
        self.layers_, self.n_iter_, self.loss_ = list(layers), int(res.nit), float(res.fun)
        return self

    @on_dataset
    def predict_proba(self, X):
        """Each class's probability, the softmax output (its first len(classes_) units)."""
        check_fitted(self, "coefs_")
        X = check_predict_input(self, X, "predict_proba")
        P = K.forward(X, list(zip(self.coefs_, self.intercepts_)), self.activation)[-1]
        P = P[:, :len(self.classes_)]
        return P / P.sum(axis=1, keepdims=True)

    @on_dataset
    def predict_log_proba(self, X):
        return np.log(self.predict_proba(X))

    @on_dataset
    def predict(self, X):
        """The most probable class."""
        check_fitted(self, "coefs_")
        return self.classes_[self.predict_proba(X).argmax(axis=1)]
