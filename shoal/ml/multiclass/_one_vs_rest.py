"""OneVsRest: one binary classifier per class, each fitted on the distributed data relabelled where it lies."""
from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone, is_classifier
from sklearn.utils.metaestimators import available_if

from shoal.exceptions import InvalidInputError
from shoal.ml._base import DatasetScoreMixin, ShoalEstimatorMixin, check_fitted, fit_input, on_dataset
from shoal.ml._input import _is_dataset, check_predict_input, resolve_fit_columns
from shoal.ml.multiclass import _kernels as K


def _base_has(method):
    """True when the wrapped classifier has ``method`` (scikit-learn's convention for meta-estimators)."""
    def check(self):
        return hasattr(self.estimator, method)
    return check


class OneVsRest(ShoalEstimatorMixin, DatasetScoreMixin, ClassifierMixin, BaseEstimator):
    """Multiclass classification by one binary classifier per class (Spark's OneVsRest,
    scikit-learn's OneVsRestClassifier API and results).

    The input is laid out once; each class's binary problem is a relabelling of the blocks
    done by tasks where the blocks live (for classifiers that fit a DesignMatrix:
    LogisticRegression, LinearSVC, the naive Bayes models; for the others, trees and
    ensembles, a label column appended to the Dataset by tasks), so no rows come to the
    driver. ``parallelism`` fits that many classes' models at once (Spark's parameter).

    Parameters (Spark's, in scikit-learn's spelling):
        estimator: any shoal.ml (or scikit-learn) binary classifier; cloned per class.
        parallelism: how many binary fits run concurrently (default 1).

    Two classes give one model (scikit-learn's behaviour); K > 2 classes give K models.
    ``predict`` is the class whose model scores highest (``decision_function`` where the
    model has it, else the positive class's probability). ``decision_function`` and
    ``predict_proba`` exist when the base classifier has them; ``predict_proba`` is each
    model's positive-class probability, normalised per row.

    Fitted: estimators_, classes_, n_features_in_, feature_names_in_.
    """

    _fits_design_matrix = True

    def __init__(self, estimator, *, parallelism=1):
        self.estimator = estimator
        self.parallelism = parallelism

    def _check_params(self):
        if not is_classifier(self.estimator):
            raise InvalidInputError(f"OneVsRest estimator={self.estimator!r} must be a classifier (a binary "
                                    f"one such as shoal.ml.LogisticRegression)")
        p = self.parallelism
        if not isinstance(p, (int, np.integer)) or isinstance(p, bool) or p < 1:
            raise InvalidInputError(f"OneVsRest parallelism={p!r} must be a positive int")

    def fit(self, X, y=None, *, features=None, label=None):
        """Fit one binary model per class (one in all for two classes); returns self."""
        self._check_params()
        y_arg, features, label = resolve_fit_columns(X, y, features=features, label=label, estimator=self,
                                                     supervised=True)
        dm = fit_input(self, X, y_arg, "classification", features=features, label=label)
        self.classes_ = dm.classes
        codes = [1] if len(self.classes_) == 2 else list(range(len(self.classes_)))
        base_dm = getattr(self.estimator, "_fits_design_matrix", False)
        if not base_dm and _is_dataset(X):
            feats = list(dm.feature_names_in_) if dm.feature_names_in_ is not None else features
            fit_one = self._dataset_fitter(X, feats, label)
        elif base_dm:
            def fit_one(code):
                binary = dataclasses.replace(dm.map_blocks(K.binary_block, code), classes=np.array([0, 1]),
                                             feature_names_in_=dm.feature_names_in_)
                return clone(self.estimator).fit(binary)
        else:
            Xa, ya = dm.collect()        # in-memory input (arrays, frames): already on the driver

            def fit_one(code):
                return clone(self.estimator).fit(Xa, (ya == code).astype(np.int64))
        if self.parallelism == 1 or len(codes) == 1:
            self.estimators_ = [fit_one(c) for c in codes]
        else:
            with ThreadPoolExecutor(min(self.parallelism, len(codes))) as pool:
                self.estimators_ = list(pool.map(fit_one, codes))
        return self

    def _dataset_fitter(self, ds, features, label):
        """Fits a model that reads a Dataset on the Dataset with a 0/1 label column appended."""
        column = f"{label}__one_vs_rest"
        names = ds.columns()
        while column in names:
            column += "_"

        def fit_one(code):
            relabelled = ds.map_batches(K.binary_batch, batch_format="pyarrow",
                                        fn_args=(label, self.classes_[code], column))
            return clone(self.estimator).fit(relabelled, features=features, label=column)
        return fit_one

    # ------------------------------------------------------------------ predict

    def _scores(self, X, method):
        check_fitted(self, "estimators_")
        X = check_predict_input(self, X, method)
        cols = []
        for est in self.estimators_:
            if hasattr(est, "decision_function"):
                s = np.asarray(est.decision_function(X))
            else:
                s = np.asarray(est.predict_proba(X))[:, 1]
            cols.append(s.ravel())
        return np.column_stack(cols)

    @available_if(_base_has("decision_function"))
    @on_dataset
    def decision_function(self, X):
        """Each class model's score, (n, K); one column, flattened, for two classes."""
        scores = self._scores(X, "decision_function")
        return scores[:, 0] if len(self.classes_) == 2 else scores

    @on_dataset
    def predict(self, X):
        """The class whose model scores highest."""
        scores = self._scores(X, "predict")
        if len(self.classes_) == 2:
            threshold = 0.0 if hasattr(self.estimators_[0], "decision_function") else 0.5
            return self.classes_[(scores[:, 0] > threshold).astype(np.int64)]
        return self.classes_[scores.argmax(axis=1)]

    @available_if(_base_has("predict_proba"))
    @on_dataset
    def predict_proba(self, X):
        """Each class model's positive probability, normalised to sum to one per row."""
        check_fitted(self, "estimators_")
        X = check_predict_input(self, X, "predict_proba")
        P = np.column_stack([np.asarray(e.predict_proba(X))[:, 1] for e in self.estimators_])
        if len(self.classes_) == 2:
            return np.column_stack([1.0 - P[:, 0], P[:, 0]])
        total = P.sum(axis=1, keepdims=True)
        return np.divide(P, total, out=np.full_like(P, 1.0 / P.shape[1]), where=total > 0)
