"""Fitting and predicting shared by shoal's tree estimators (decision trees, forests, boosting).

Fit: validate with the shared input layer, compute quantile bin edges from a
sample drawn across blocks, bin each block once into shards (actors on the
cluster), then grow trees level by level (``_tree_grow``).
"""
from __future__ import annotations

import numbers
import warnings

import numpy as np
from sklearn.exceptions import DataConversionWarning
from sklearn.utils import check_random_state

from shoal.exceptions import InvalidInputError
from shoal.ml import _base, _input
from shoal.ml._hist import MAX_BINS_LIMIT, bin_edges, sample_block_rows
from shoal.ml._hist_shards import ShardLost, ShardSet
from shoal.ml._tree import Entropy, Gini, Newton, PackedForest, Tree, Variance
from shoal.ml._tree_grow import GrowParams, grow_trees

EDGE_SAMPLE_ROWS = 200_000     # rows drawn across all blocks to place the bin edges


def warn_column_y(y):
    """scikit-learn's convention: a column-vector y is accepted with a DataConversionWarning."""
    if isinstance(y, np.ndarray) and y.ndim == 2 and y.shape[1] == 1:
        warnings.warn(DataConversionWarning(
            "A column-vector y was passed when a 1d array was expected. Please change the shape "
            "of y to (n_samples,), for example using ravel()."), stacklevel=3)


def seed_of(random_state) -> int:
    return int(check_random_state(random_state).randint(0, 2**31 - 1))


def check_params(est, **checks):
    """Validate hyperparameters at fit time; the error names the parameter."""
    for name, (ok, what) in checks.items():
        if not ok:
            raise InvalidInputError(
                f"{type(est).__name__}: parameter {name}={getattr(est, name)!r} is invalid; "
                f"it must be {what}.")


def common_checks(est) -> dict:
    md = est.max_depth
    return dict(
        max_depth=(md is None or (isinstance(md, numbers.Integral) and md >= 0),
                   "a non-negative integer or None"),
        max_bins=(isinstance(est.max_bins, numbers.Integral) and 2 <= est.max_bins <= MAX_BINS_LIMIT,
                  f"an integer in [2, {MAX_BINS_LIMIT}]"),
        min_samples_leaf=(isinstance(est.min_samples_leaf, numbers.Real) and est.min_samples_leaf >= 1,
                          "a number >= 1"),
    )


def max_features_count(value, n_features: int, est) -> int | None:
    """scikit-learn's max_features: None/1.0 all, "sqrt", "log2", an int, or a fraction."""
    if value is None:
        return None
    if value == "sqrt":
        return max(1, int(np.sqrt(n_features)))
    if value == "log2":
        return max(1, int(np.log2(n_features)))
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and 1 <= value:
        return min(int(value), n_features)
    if isinstance(value, numbers.Real) and 0.0 < value <= 1.0:
        return max(1, int(value * n_features))
    raise InvalidInputError(
        f"{type(est).__name__}: parameter max_features={value!r} is invalid; use None, 'sqrt', "
        f"'log2', a positive integer or a fraction in (0, 1].")


def prepare(est, X, y, target: str, features=None, label=None):
    """Validate, bin and shard the input. Returns (dm, edges, shards)."""
    if y is None and label is None and not hasattr(X, "columns"):
        raise InvalidInputError(
            f"{type(est).__name__} requires y to be passed, but the target y is None; pass the label "
            f"as y, or as label='<column>' with a DataFrame or Dataset.")
    warn_column_y(y)
    dm = _base.fit_input(est, X, y, target, features=features, label=label)
    if target == "classification":
        est.classes_ = dm.classes
        est.n_classes_ = len(dm.classes)
    # the sample is drawn by global row index, so the edges do not depend on the block layout
    offsets = np.concatenate(([0], np.cumsum(dm.block_rows))).astype(np.int64)
    n = int(offsets[-1])
    rng = np.random.default_rng(0x5A3)
    pick = (np.arange(n) if n <= EDGE_SAMPLE_ROWS else
            np.sort(rng.choice(n, EDGE_SAMPLE_ROWS, replace=False))).astype(np.int64)
    sample = np.concatenate(dm.map_indexed(sample_block_rows, offsets, pick), axis=1)
    edges = bin_edges(sample, int(est.max_bins), feature_major=True)
    shards = ShardSet(dm, edges, n_classes=len(dm.classes) if target == "classification" else 0)
    return dm, edges, shards


def grow_params(est, n_features: int) -> GrowParams:
    depth = est.max_depth if est.max_depth is not None else 64
    return GrowParams(max_depth=int(depth), min_samples_leaf=float(est.min_samples_leaf),
                      min_samples_split=float(max(getattr(est, "min_samples_split", 2),
                                                  2 * est.min_samples_leaf)),
                      min_gain=0.0,
                      max_features=max_features_count(getattr(est, "max_features", None), n_features, est))


def fit_forest(est, X, y, target: str, n_trees: int, bootstrap: bool, features=None, label=None):
    """Random forest / decision tree fit: every tree grown in the same passes."""
    dm, edges, shards = prepare(est, X, y, target, features, label)
    try:
        if target == "classification":
            crit = {"gini": Gini, "entropy": Entropy}.get(est.criterion)
            if crit is None:
                raise InvalidInputError(f"{type(est).__name__}: criterion={est.criterion!r} is invalid; "
                                        f"use 'gini' or 'entropy'.")
            crit = crit(est.n_classes_)
        else:
            if est.criterion not in ("squared_error", "variance"):
                raise InvalidInputError(f"{type(est).__name__}: criterion={est.criterion!r} is invalid; "
                                        f"use 'squared_error'.")
            s = np.sum(_retrying(lambda: shards.call("label_sum")), axis=0)
            crit = Variance(offset=s[0] / s[1])       # the mean target
        params = grow_params(est, dm.n_features)
        params.min_gain = float(est.min_impurity_decrease) * dm.n_rows
        seed = seed_of(est.random_state)

        def grow():   # from the start, with the same draws, each time a shard died
            shards.call("start_forest", seed, list(range(n_trees)), bootstrap, target == "regression",
                        getattr(crit, "offset", 0.0))
            return grow_trees(shards.level, n_trees, crit, edges, params,
                              np.random.default_rng([seed, 1]))
        trees = _retrying(grow)
    finally:
        shards.close()
    est.trees_ = trees
    est._packed = PackedForest(trees)   # prediction arrays, derived from trees_
    est.feature_importances_ = mean_importances(trees, dm.n_features)
    return est


class PackedTrees:
    """Fitted trees save as their arrays (shoal.ml.save); the packed prediction
    layout is derived from them and rebuilt on load."""

    _persist_skip = ("_packed",)

    def _after_load(self) -> None:
        if hasattr(self, "estimators_") and hasattr(self, "init_"):
            self._packed = PackedForest([t for r in self.estimators_ for t in r])
        elif hasattr(self, "trees_"):
            self._packed = PackedForest(self.trees_)


def fit_boosting(est, X, y, target: str, features=None, label=None):
    """Gradient boosting: one pass per level, all trees of a round (one per class) together."""
    dm, edges, shards = prepare(est, X, y, target, features, label)
    try:
        # label statistics come from the shards: while they live they hold the cluster's CPUs
        if target == "classification":
            K = est.n_classes_
            counts = np.sum(_retrying(lambda: shards.call("label_counts")), axis=0).astype(np.float64)
            prior = np.clip(counts / counts.sum(), 1e-12, None)
            if K == 2:
                loss, init = "binary", np.array([np.log(prior[1] / prior[0])])
            else:
                loss, init = "multinomial", np.log(prior)
        else:
            loss = "squared_error"
            s = np.sum(_retrying(lambda: shards.call("label_sum")), axis=0)
            init = np.array([s[0] / s[1]])
        with_count = loss != "squared_error" and est.min_samples_leaf > 1
        crit = Newton(l2=float(est.l2_regularization), with_count=with_count)
        params = grow_params(est, dm.n_features)
        seed = seed_of(est.random_state)
        rng = np.random.default_rng([seed, 2])
        lr = float(est.learning_rate)
        est._learning_rate = lr
        rounds = []
        rebuild = list(range(len(shards.shards)))     # shards whose raw predictions to (re)build
        for r in range(int(est.n_estimators)):
            draws = rng.bit_generator.state
            round_args = (loss, seed, r, float(est.subsample), with_count)
            while True:
                try:
                    if rebuild:   # a new shard: the rounds so far, replayed on it alone
                        shards.call("start_boosting", init, only=rebuild)
                        for i, done in enumerate(rounds):
                            shards.call("end_round", done, lr, i, only=rebuild)
                        rebuild = []
                    # the round's first pass also adds the previous round's trees (a shard
                    # that already added them skips them: end_round is idempotent per round)
                    # and starts this round: one call instead of three
                    previous = (rounds[-1], lr, r - 1) if rounds else None
                    first = [True]

                    def level(requests):
                        if first[0]:
                            first[0] = False
                            return shards.level(requests, "next_round", previous, round_args)
                        return shards.level(requests)
                    trees = grow_trees(level, len(init), crit, edges, params, rng)
                    break
                except ShardLost as lost:   # grow the round again, with the same draws
                    rebuild = sorted(set(rebuild) | set(lost.indices))
                    rng.bit_generator.state = draws
            rounds.append(trees)
        # the last round's trees are not added on the shards: nothing reads them there
    finally:
        shards.close()
    est.init_ = init
    est.estimators_ = rounds
    est._packed = PackedForest([t for r in rounds for t in r])
    est.n_trees_per_round_ = len(init)
    est.feature_importances_ = mean_importances([t for r in rounds for t in r], dm.n_features)
    return est


def _retrying(step):
    """``step()``, run again whenever a shard died during it (the shard was replaced); for
    steps that start from scratch on every shard."""
    while True:
        try:
            return step()
        except ShardLost:
            continue


def mean_importances(trees: list[Tree], n_features: int) -> np.ndarray:
    imp = np.mean([t.feature_importances(n_features) for t in trees], axis=0)
    total = imp.sum()
    return imp / total if total > 0 else imp


def predict_input(est, X, method: str, fitted_attr: str) -> np.ndarray:
    """Validated float matrix for prediction (a Dataset is gathered block by block)."""
    _base.check_fitted(est, fitted_attr)
    Xa = _input.check_predict_input(est, X, method)
    if not isinstance(Xa, np.ndarray):
        dm = _input.as_design_matrix(Xa, features=None if getattr(est, "feature_names_in_", None) is None
                                     else list(est.feature_names_in_), estimator=est)
        Xa, _ = dm.collect()
    return Xa


def forest_mean(est, X: np.ndarray) -> np.ndarray:
    return est._packed.sum_values(X) / len(est.trees_)


def boosting_raw(est, X: np.ndarray) -> np.ndarray:
    leaves = est._packed.apply(X)
    K = est.n_trees_per_round_
    raw = np.tile(est.init_, (X.shape[0], 1))
    for t in range(leaves.shape[1]):   # one vectorized gather per tree
        raw[:, t % K] += est._learning_rate * est._packed.value[leaves[:, t], 0]
    return raw
