"""IsotonicRegression: pool adjacent violators over per-block aggregates (Spark's and scikit-learn's model)."""
from __future__ import annotations

import numpy as np
from scipy.optimize import isotonic_regression
from sklearn.base import BaseEstimator, RegressorMixin, TransformerMixin

from shoal.exceptions import InvalidInputError
from shoal.ml._base import DatasetScoreMixin, ShoalEstimatorMixin, check_fitted, fit_input, on_dataset
from shoal.ml._input import check_predict_input
from shoal.ml.regression import _kernels as K
from shoal.ml.regression._row_columns import append_row_columns

OUT_OF_BOUNDS = ("nan", "clip", "raise")


class IsotonicRegression(ShoalEstimatorMixin, DatasetScoreMixin, RegressorMixin, TransformerMixin,
                         BaseEstimator):
    """A monotone step function of one feature, fitted by pool adjacent violators (Spark's
    IsotonicRegression, scikit-learn's API and results).

    Every block pools its rows by distinct feature value (count and sum of labels); the
    aggregates merge in a tree of tasks, and the driver runs PAV on the merged, sorted
    aggregates. Memory on the driver is one triple per distinct feature value (data with
    few distinct values, or rounded ones, compress to little).

    Parameters (Spark's, in scikit-learn's spelling):
        increasing: True for a non-decreasing fit (Spark's ``isotonic=True``), False for a
        non-increasing one. y_min, y_max: bounds on the fitted values (None: none).
        out_of_bounds: what predict does with x outside the fitted range: "nan"
        (scikit-learn's default), "clip" (the boundary value; Spark's behaviour) or "raise".
        feature_index: which input column is the feature when X has several (Spark's
        ``featureIndex``). weight_col: a table's column of row weights (Spark's
        ``weightCol``; in-memory input passes ``sample_weight=`` to fit). X is 2-D as for every shoal.ml estimator: one feature is
        ``x.reshape(-1, 1)``.

    Fitted: X_min_, X_max_, X_thresholds_, y_thresholds_ (the breakpoints predict
    interpolates linearly between; Spark's ``boundaries`` and ``predictions``),
    increasing_, n_features_in_, feature_names_in_.

    Raises InvalidInputError for a bad parameter, a feature_index outside the columns, or a
    label column that is not numeric (naming the column).
    """

    _fits_design_matrix = True

    def __init__(self, *, y_min=None, y_max=None, increasing=True, out_of_bounds="nan", feature_index=0,
                 weight_col=None):
        self.y_min = y_min
        self.y_max = y_max
        self.increasing = increasing
        self.out_of_bounds = out_of_bounds
        self.feature_index = feature_index
        self.weight_col = weight_col

    def _check_params(self, d):
        if not isinstance(self.increasing, (bool, np.bool_)):
            raise InvalidInputError(f"IsotonicRegression increasing={self.increasing!r} must be True or "
                                    f"False")
        if self.out_of_bounds not in OUT_OF_BOUNDS:
            raise InvalidInputError(f"IsotonicRegression out_of_bounds={self.out_of_bounds!r} must be one "
                                    f"of {OUT_OF_BOUNDS}")
        fi = self.feature_index
        if not isinstance(fi, (int, np.integer)) or isinstance(fi, bool) or not 0 <= fi < d:
            raise InvalidInputError(f"IsotonicRegression feature_index={fi!r} must be a column position "
                                    f"in [0, {d}) of the {d} feature column(s)")
        if self.y_min is not None and self.y_max is not None and self.y_min > self.y_max:
            raise InvalidInputError(f"IsotonicRegression y_min={self.y_min!r} is above y_max="
                                    f"{self.y_max!r}")

    def fit(self, X, y=None, *, features=None, label=None, sample_weight=None):
        """Fit the monotone function of the feature column to the label; returns self.

        ``sample_weight``: per-row weights >= 0 for in-memory input (a table names its
        weight column as weight_col=, Spark's weightCol)."""
        X, y, features, label, (weighted,), (weight_name,) = append_row_columns(
            self, X, y, features, label, [("weight_col", self.weight_col)], [("sample_weight", sample_weight)])
        dm = fit_input(self, X, y, "regression", features=features, label=label)
        d = dm.n_features - int(weighted)
        self.n_features_in_ = d
        if hasattr(self, "feature_names_in_"):
            self.feature_names_in_ = self.feature_names_in_[:d]
        self._check_params(d)
        if weighted and dm.map_reduce(K.min_last_column, reduce=min) < 0:
            raise InvalidInputError(f"IsotonicRegression: weight column {weight_name!r} holds negative weights; "
                                    f"weights must be >= 0.")
        xs, w, s = dm.map_reduce(K.isotonic_aggregate, int(self.feature_index), bool(weighted),
                                 reduce=K.isotonic_merge)
        if len(xs) == 0:
            raise InvalidInputError(f"IsotonicRegression: every row has weight zero (weight column "
                                    f"{weight_name!r}); give some rows a positive weight.")
        fitted = isotonic_regression(s / w, weights=w, increasing=bool(self.increasing)).x
        if self.y_min is not None or self.y_max is not None:
            lo = -np.inf if self.y_min is None else self.y_min
            hi = np.inf if self.y_max is None else self.y_max
            fitted = np.clip(fitted, lo, hi)
        self.X_min_, self.X_max_ = float(xs[0]), float(xs[-1])
        # keep only the ends of every constant run: predict interpolates between them
        keep = np.ones(len(fitted), dtype=bool)
        if len(fitted) > 2:
            keep[1:-1] = (fitted[1:-1] != fitted[:-2]) | (fitted[1:-1] != fitted[2:])
        self.X_thresholds_, self.y_thresholds_ = xs[keep], fitted[keep]
        self.increasing_ = bool(self.increasing)
        return self

    def _feature(self, X, method):
        check_fitted(self, "X_thresholds_")
        X = check_predict_input(self, X, method)
        return X[:, self.feature_index]

    @on_dataset
    def predict(self, X):
        """The fitted function at X's feature column, interpolated linearly between thresholds."""
        x = self._feature(X, "predict")
        if self.out_of_bounds == "raise" and ((x < self.X_min_) | (x > self.X_max_)).any():
            raise InvalidInputError(f"IsotonicRegression.predict got feature values outside the fitted "
                                    f"range [{self.X_min_}, {self.X_max_}] with out_of_bounds='raise'; "
                                    f"use out_of_bounds='clip' or 'nan'.")
        if self.out_of_bounds == "clip":
            x = np.clip(x, self.X_min_, self.X_max_)
        if len(self.X_thresholds_) == 1:
            out = np.full(len(x), self.y_thresholds_[0])
        else:
            out = np.interp(x, self.X_thresholds_, self.y_thresholds_)
        if self.out_of_bounds == "nan":
            out[(x < self.X_min_) | (x > self.X_max_)] = np.nan
        return out

    def transform(self, T):
        """predict, as a transformer (scikit-learn's IsotonicRegression.transform); a Dataset
        gets a ``prediction`` column."""
        return self.predict(T)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.regressor_tags.poor_score = True    # one feature of the many a generic check gives
        return tags

    def get_feature_names_out(self, input_features=None):
        return np.array(["isotonicregression0"], dtype=object)
