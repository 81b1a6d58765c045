"""Univariate feature selection: ChiSqSelector and UnivariateFeatureSelector (Spark's).

Each feature is tested against the label on its own, and the features are chosen by Spark's
selection modes from the tests' p-values:

- ``numTopFeatures``: the k features with the smallest p-values (ties: the lower index);
- ``percentile``: the same with k = floor(percentile * n_features);
- ``fpr``: every feature with p-value < threshold;
- ``fdr``: the Benjamini-Hochberg procedure at false discovery rate threshold;
- ``fwe``: every feature with p-value < threshold / n_features (Bonferroni).

The tests, chosen as Spark chooses them from featureType and labelType:

- categorical features, categorical label: Pearson's chi-squared test of independence,
  Spark's ChiSquareTest (shoal.ml.stat: per-block contingency counts);
- continuous features, categorical label: the ANOVA F-test (scikit-learn's ``f_classif``):
  per-block class counts, sums and sums of squares, tree-aggregated;
- continuous features, continuous label: the F-test of the univariate linear regression
  (scikit-learn's ``f_regression``): per-block centred moments of [X, y], merged pairwise.

The statistics are sufficient sums of each block computed where the block lives (tasks on
a cluster) and folded on the driver: no row leaves its block.
"""
from __future__ import annotations

import numpy as np

from shoal.exceptions import InvalidInputError
from shoal.ml._base import fit_input
from shoal.ml._selectors import MaskSelector
from shoal.ml._stats import class_sums
from shoal.ml.stat import ChiSquareTest
from shoal.ml.stat import _kernels as stat_kernels

SELECTION_MODES = ("numTopFeatures", "percentile", "fpr", "fdr", "fwe")
DEFAULT_THRESHOLDS = {"numTopFeatures": 50, "percentile": 0.1, "fpr": 0.05, "fdr": 0.05, "fwe": 0.05}
TYPES = ("categorical", "continuous")


# ----------------------------------------------------------------------------------
# map side (NumPy only)

def anova_block(X, codes, k):
    """One block's per-class row counts, sums and sums of squares: (k,), (k, d), (k, d)."""
    codes = codes.astype(np.int64)
    return (np.bincount(codes, minlength=k).astype(np.float64), class_sums(X, codes, k),
            class_sums(X * X, codes, k))


def xy_moments_block(X, y):
    """Centred moments of the block's [X, y] (the label is the last column)."""
    return stat_kernels.moments(np.column_stack([X, y]), None)


# ----------------------------------------------------------------------------------
# the tests on the folded statistics

def anova_f(counts, sums, sqsums):
    """scikit-learn's f_classif from per-class counts, sums and sums of squares."""
    from scipy.stats import f as f_dist
    n, k = counts.sum(), int((counts > 0).sum())
    counts, sums, sqsums = counts[counts > 0], sums[counts > 0], sqsums[counts > 0]
    total = sums.sum(axis=0)
    ss_total = sqsums.sum(axis=0) - total ** 2 / n
    ss_between = (sums ** 2 / counts[:, None]).sum(axis=0) - total ** 2 / n
    ss_within = ss_total - ss_between
    df_between, df_within = k - 1, n - k
    with np.errstate(divide="ignore", invalid="ignore"):
        F = (ss_between / df_between) / (ss_within / df_within)
    return F, f_dist.sf(F, df_between, df_within), np.full(len(F), df_within, dtype=np.int64)


def f_regression_test(n, C):
    """scikit-learn's f_regression (centred) from the centred cross products of [X, y]."""
    from scipy.stats import f as f_dist
    sxx, sxy, syy = np.diag(C)[:-1], C[:-1, -1], C[-1, -1]
    with np.errstate(divide="ignore", invalid="ignore"):
        r = sxy / np.sqrt(sxx * syy)
        r2 = r * r
        df = n - 2
        F = r2 / (1 - r2) * df
    return F, f_dist.sf(F, 1, df), np.full(len(F), df, dtype=np.int64)


def select_by_p_values(p, mode, threshold):
    """Spark's selection of feature indices (sorted) from their p-values."""
    d = len(p)
    order = np.lexsort((np.arange(d), np.nan_to_num(p, nan=np.inf)))   # by p-value, then index
    if mode == "numTopFeatures":
        chosen = order[:int(threshold)]
    elif mode == "percentile":
        chosen = order[:int(d * threshold)]
    elif mode == "fpr":
        chosen = np.flatnonzero(p < threshold)
    elif mode == "fwe":
        chosen = np.flatnonzero(p < threshold / d)
    else:   # fdr: Benjamini-Hochberg, the largest rank i with p_(i) <= threshold * i / d
        ok = np.flatnonzero(p[order] <= threshold / d * np.arange(1, d + 1))
        chosen = order[:ok.max() + 1] if len(ok) else order[:0]
    return np.sort(chosen)


class _UnivariateSelector(MaskSelector):
    _fitted_attribute = "selected_features_"

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        return tags

    def _support_mask(self):
        mask = np.zeros(self.n_features_in_, dtype=bool)
        mask[self.selected_features_] = True
        return mask

    def _check_mode(self, mode, threshold, mode_param, threshold_param):
        who = type(self).__name__
        if mode not in SELECTION_MODES:
            raise InvalidInputError(f"{who} {mode_param}={mode!r} is not one of {list(SELECTION_MODES)}")
        if mode == "numTopFeatures":
            if not isinstance(threshold, (int, np.integer)) or isinstance(threshold, bool) or threshold < 1:
                raise InvalidInputError(f"{who} {threshold_param}={threshold!r} must be an int >= 1 for "
                                        f"{mode_param}='numTopFeatures' (the number of features to keep)")
        elif not (np.isscalar(threshold) and not isinstance(threshold, (bool, str))
                  and 0.0 <= float(threshold) <= 1.0):
            raise InvalidInputError(f"{who} {threshold_param}={threshold!r} must be a number in [0, 1] "
                                    f"for {mode_param}={mode!r}")

    def _fit_test(self, X, y, features, label, feature_type, label_type, mode, threshold):
        if label_type == "continuous" and feature_type == "categorical":
            raise InvalidInputError(f"{type(self).__name__}: feature_type='categorical' with "
                                    f"label_type='continuous' has no test (Spark has none either); use "
                                    f"feature_type='continuous' (the F-regression test).")
        target = "classification" if label_type == "categorical" else "regression"
        dm = fit_input(self, X, y, target, features=features, label=label)
        if feature_type == "categorical":     # Spark's ChiSquareTest, reused as is
            result = ChiSquareTest.test(dm)
            stat, p, dof = result.statistics, result.p_values, result.degrees_of_freedom
        elif label_type == "categorical":
            k = len(dm.classes)
            stat, p, dof = anova_f(*dm.map_reduce(anova_block, k))
        else:
            if dm.n_rows < 3:
                raise InvalidInputError(f"{type(self).__name__}: the F-regression test needs at least 3 "
                                        f"rows, got {dm.n_rows} (n_samples = {dm.n_rows})")
            n, _, C = dm.map_reduce(xy_moments_block, reduce=stat_kernels.merge_moments)
            stat, p, dof = f_regression_test(n, C)
        self.scores_ = np.asarray(stat, dtype=np.float64)
        self.pvalues_ = np.asarray(p, dtype=np.float64)
        self.degrees_of_freedom_ = np.asarray(dof, dtype=np.int64)
        self.selected_features_ = select_by_p_values(self.pvalues_, mode, threshold)
        return self


class ChiSqSelector(_UnivariateSelector):
    """Keep the categorical features most dependent on a categorical label by Pearson's
    chi-squared test (Spark's ChiSqSelector; Spark's ChiSquareTest statistics: every
    distinct value of a feature is a category).

    Parameters (Spark's, in snake case): selector_type "numTopFeatures" (default),
    "percentile", "fpr", "fdr" or "fwe"; num_top_features (50), percentile (0.1), fpr
    (0.05), fdr (0.05), fwe (0.05): the threshold of the chosen type (see the module).

    Fitted: selected_features_ (sorted indices, Spark's selectedFeatures), scores_ (the
    chi-squared statistics), pvalues_, degrees_of_freedom_, n_features_in_,
    feature_names_in_ (named input); get_support(), get_feature_names_out(). transform keeps
    the selected features (on a Dataset: the selected feature columns, others untouched).
    ``fit(X, y)`` or ``fit(table, features=[...], label="label")``: the label is required.
    """

    def __init__(self, num_top_features=50, *, selector_type="numTopFeatures", percentile=0.1,
                 fpr=0.05, fdr=0.05, fwe=0.05):
        self.num_top_features = num_top_features
        self.selector_type = selector_type
        self.percentile = percentile
        self.fpr = fpr
        self.fdr = fdr
        self.fwe = fwe

    def fit(self, X, y=None, *, features=None, label=None):
        """Test every feature against the label and select; returns self."""
        mode = self.selector_type
        param = {"numTopFeatures": "num_top_features"}.get(mode, mode)
        if mode not in SELECTION_MODES:
            raise InvalidInputError(f"ChiSqSelector selector_type={mode!r} is not one of "
                                    f"{list(SELECTION_MODES)}")
        threshold = getattr(self, param)
        self._check_mode(mode, threshold, "selector_type", param)
        return self._fit_test(X, y, features, label, "categorical", "categorical", mode, threshold)


class UnivariateFeatureSelector(_UnivariateSelector):
    """Keep the features most related to the label by a univariate test chosen from the
    feature and label types (Spark's UnivariateFeatureSelector; scikit-learn's
    SelectKBest/SelectPercentile/SelectFpr/SelectFdr/SelectFwe with chi2-of-contingency,
    ``f_classif`` or ``f_regression``).

    Parameters: feature_type and label_type, "categorical" or "continuous" (Spark requires
    both; shoal defaults to continuous features and a categorical label, the ANOVA F-test,
    scikit-learn's default score function):

    ==============  ===========  =========================================
    feature_type    label_type   test
    ==============  ===========  =========================================
    categorical     categorical  chi-squared (Spark's ChiSquareTest)
    continuous      categorical  ANOVA F (f_classif)
    continuous      continuous   F-regression (f_regression)
    ==============  ===========  =========================================

    selection_mode "numTopFeatures" (default), "percentile", "fpr", "fdr" or "fwe", and
    selection_threshold (default as Spark: 50 for numTopFeatures, 0.1 for percentile, 0.05
    otherwise). Spark ranks by p-value (ties: the lower index); for one test shared by every
    feature (the F-tests) that is scikit-learn's ranking by score.

    Fitted: selected_features_, scores_ (the test statistics), pvalues_,
    degrees_of_freedom_, n_features_in_, feature_names_in_; get_support(),
    get_feature_names_out(); transform keeps the selected features.
    """

    def __init__(self, *, feature_type="continuous", label_type="categorical",
                 selection_mode="numTopFeatures", selection_threshold=None):
        self.feature_type = feature_type
        self.label_type = label_type
        self.selection_mode = selection_mode
        self.selection_threshold = selection_threshold

    def fit(self, X, y=None, *, features=None, label=None):
        """Test every feature against the label and select; returns self."""
        for name in ("feature_type", "label_type"):
            if getattr(self, name) not in TYPES:
                raise InvalidInputError(f"UnivariateFeatureSelector {name}={getattr(self, name)!r} must "
                                        f"be one of {list(TYPES)}")
        mode = self.selection_mode
        if mode not in SELECTION_MODES:
            raise InvalidInputError(f"UnivariateFeatureSelector selection_mode={mode!r} is not one of "
                                    f"{list(SELECTION_MODES)}")
        threshold = self.selection_threshold
        if threshold is None:
            threshold = DEFAULT_THRESHOLDS[mode]
        self._check_mode(mode, threshold, "selection_mode", "selection_threshold")
        return self._fit_test(X, y, features, label, self.feature_type, self.label_type, mode, threshold)
