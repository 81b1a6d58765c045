"""Spark's evaluator classes, as thin faces over ``shoal.ml.metrics``.

``evaluator.evaluate(scored)`` takes what ``predict`` returned on a Dataset (or a pandas
DataFrame / Arrow Table with the label and prediction columns) and gives one number, as in
Spark. An evaluator is also a scikit-learn scorer, ``evaluator(estimator, X, y)``, so
``CrossValidator(..., scoring=RegressionEvaluator())`` takes it; as a scorer it returns the
metric negated when smaller is better (scikit-learn's rule: the best score is the largest).
"""
from __future__ import annotations

import numpy as np
from shoal.exceptions import InvalidInputError
from shoal.ml import metrics
from shoal.ml._executor import _is_dataset


class _Evaluator:
    _metrics: dict = {}
    _larger_better: set = set()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"

    def _check(self):
        if self.metric_name not in self._metrics:
            raise InvalidInputError(f"{type(self).__name__} metric_name={self.metric_name!r} is not "
                                    f"one of {sorted(self._metrics)}")

    def is_larger_better(self) -> bool:
        """Whether a larger value of the metric is better (Spark's ``isLargerBetter``)."""
        self._check()
        return self.metric_name in self._larger_better

    def _columns_of(self, scored):
        return self.label_col, self._score_col()

    def _score_col(self):
        return self.prediction_col

    def evaluate(self, scored) -> float:
        """The metric over a scored Dataset (block by block, as tasks) or an in-memory table
        with the label and prediction columns."""
        self._check()
        label, prediction = self._columns_of(scored)
        fn = self._metrics[self.metric_name]
        if _is_dataset(scored):
            return float(fn(scored, label=label, prediction=prediction))
        frame = scored.to_pandas() if hasattr(scored, "to_pandas") and not hasattr(scored, "iloc") \
            else scored
        for c in (label, prediction):
            if c not in frame.columns:
                raise InvalidInputError(f"column {c!r} is missing from the scored table given to "
                                        f"{type(self).__name__}.evaluate(); available: "
                                        f"{list(frame.columns)}")
        score = frame[prediction].to_numpy()
        if score.dtype.kind == "O" and len(score) and np.ndim(score[0]) == 1:
            score = np.stack(score)
        return float(fn(frame[label].to_numpy(), score))

    def _predictions(self, estimator, X):
        return estimator.predict(X)

    def __call__(self, estimator, X, y) -> float:
        """Score ``estimator`` on ``(X, y)`` as a scikit-learn scorer (larger is better)."""
        self._check()
        value = float(self._metrics[self.metric_name](np.asarray(y), self._predictions(estimator, X)))
        return value if self.is_larger_better() else -value


class RegressionEvaluator(_Evaluator):
    """Spark's RegressionEvaluator: metric_name "rmse" (default), "mse", "mae" or "r2",
    over the ``label_col`` and ``prediction_col`` columns."""

    _metrics = {"rmse": metrics.root_mean_squared_error, "mse": metrics.mean_squared_error,
                "mae": metrics.mean_absolute_error, "r2": metrics.r2_score}
    _larger_better = {"r2"}

    def __init__(self, metric_name="rmse", *, label_col="label", prediction_col="prediction"):
        self.metric_name = metric_name
        self.label_col = label_col
        self.prediction_col = prediction_col


def _weighted(fn):
    def metric(y_true, y_pred=None, **kw):
        return fn(y_true, y_pred, average="weighted", **kw)
    return metric


class MulticlassClassificationEvaluator(_Evaluator):
    """Spark's MulticlassClassificationEvaluator: metric_name "f1" (default; weighted by class
    support, as Spark), "accuracy", "weightedPrecision", "weightedRecall", or "logLoss" (over
    ``probability_col``)."""

    _metrics = {"f1": _weighted(metrics.f1_score), "accuracy": metrics.accuracy_score,
                "weightedPrecision": _weighted(metrics.precision_score),
                "weightedRecall": _weighted(metrics.recall_score), "logLoss": metrics.log_loss}
    _larger_better = {"f1", "accuracy", "weightedPrecision", "weightedRecall"}

    def __init__(self, metric_name="f1", *, label_col="label", prediction_col="prediction",
                 probability_col="probability"):
        self.metric_name = metric_name
        self.label_col = label_col
        self.prediction_col = prediction_col
        self.probability_col = probability_col

    def _score_col(self):
        return self.probability_col if self.metric_name == "logLoss" else self.prediction_col

    def _predictions(self, estimator, X):
        if self.metric_name == "logLoss":
            return estimator.predict_proba(X)
        return estimator.predict(X)


class BinaryClassificationEvaluator(_Evaluator):
    """Spark's BinaryClassificationEvaluator: metric_name "areaUnderROC" over the positive
    class's score, read from ``raw_prediction_col`` (a vector column such as shoal's
    ``probability`` or ``raw_prediction``: its last entry; or one score per row)."""

    _metrics = {"areaUnderROC": metrics.roc_auc_score}
    _larger_better = {"areaUnderROC"}

    def __init__(self, metric_name="areaUnderROC", *, label_col="label",
                 raw_prediction_col="probability"):
        self.metric_name = metric_name
        self.label_col = label_col
        self.raw_prediction_col = raw_prediction_col

    def _score_col(self):
        return self.raw_prediction_col

    def _predictions(self, estimator, X):
        if hasattr(estimator, "predict_proba"):
            return estimator.predict_proba(X)[:, -1]
        return estimator.decision_function(X)


DISTANCE_MEASURES = ("squaredEuclidean", "cosine")


class ClusteringEvaluator:
    """Spark's ClusteringEvaluator: the mean silhouette of a clustering, metric_name
    "silhouette", distance_measure "squaredEuclidean" (Spark's default) or "cosine".

    The same number as ``sklearn.metrics.silhouette_score(X, labels, metric="sqeuclidean")``
    (or ``"cosine"``), computed as Spark does in two passes over the rows without pairwise
    distances: one gathers each cluster's size, sum of rows and sum of squared norms, the
    next scores every row against those (block by block as tasks for a Dataset).

    ``evaluate(scored)``: a Dataset from ``predict`` (or a pandas DataFrame / Arrow Table)
    holding the features and the ``prediction_col``; ``features_col`` is one column (a
    vector column such as VectorAssembler's "features", or a number) or a list of columns.
    As a scikit-learn scorer, ``evaluator(estimator, X, y=None)`` scores
    ``estimator.predict(X)`` on X's rows (larger is better).
    """

    def __init__(self, metric_name="silhouette", *, distance_measure="squaredEuclidean",
                 features_col="features", prediction_col="prediction"):
        self.metric_name = metric_name
        self.distance_measure = distance_measure
        self.features_col = features_col
        self.prediction_col = prediction_col

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"ClusteringEvaluator({args})"

    def _check(self):
        if self.metric_name != "silhouette":
            raise InvalidInputError(f"ClusteringEvaluator metric_name={self.metric_name!r} is not "
                                    f"one of ['silhouette']")
        if self.distance_measure not in DISTANCE_MEASURES:
            raise InvalidInputError(f"ClusteringEvaluator distance_measure={self.distance_measure!r} "
                                    f"is not one of {list(DISTANCE_MEASURES)}")

    def is_larger_better(self) -> bool:
        """True: a larger silhouette is a better clustering."""
        self._check()
        return True

    def _features(self):
        f = self.features_col
        return [f] if isinstance(f, str) else list(f)

    def evaluate(self, scored) -> float:
        """The mean silhouette over the rows of a scored Dataset or table."""
        from shoal.ml.clustering import _kernels as K
        from shoal.ml._executor import map_dataset_blocks
        self._check()
        features, pred, measure = self._features(), self.prediction_col, self.distance_measure
        if _is_dataset(scored):
            columns = scored.columns()
            for c in features + [pred]:
                if c not in columns:
                    raise InvalidInputError(f"column {c!r} is missing from the scored Dataset given "
                                            f"to ClusteringEvaluator.evaluate(); available: {columns}")
            stats = K.merge_cluster_stats(map_dataset_blocks(scored, K.silhouette_block_stats,
                                                             features, pred, measure))
            self._check_clusters(stats)
            parts = map_dataset_blocks(scored, K.silhouette_block_sum, features, pred, stats, measure)
        else:
            import pyarrow as pa
            table = scored if hasattr(scored, "column_names") else \
                pa.Table.from_pandas(scored.to_pandas() if hasattr(scored, "to_pandas") and
                                     not hasattr(scored, "iloc") else scored, preserve_index=False)
            for c in features + [pred]:
                if c not in table.column_names:
                    raise InvalidInputError(f"column {c!r} is missing from the scored table given to "
                                            f"ClusteringEvaluator.evaluate(); available: "
                                            f"{table.column_names}")
            X, labels = K._scored_block(table, features, pred)
            return self._score(X, labels)
        total, n = sum(p[0] for p in parts), sum(p[1] for p in parts)
        return float(total / n)

    @staticmethod
    def _check_clusters(stats):
        if len(stats[0]) < 2:
            raise InvalidInputError(f"the silhouette needs at least 2 clusters; the predictions hold "
                                    f"{len(stats[0])} ({stats[0].tolist()}). Fit more clusters.")

    def _score(self, X, labels) -> float:
        from shoal.ml.clustering import _kernels as K
        X = np.asarray(X, dtype=np.float64)
        labels = np.asarray(labels)
        if X.ndim != 2 or len(X) != len(labels) or len(X) == 0:
            raise InvalidInputError(f"ClusteringEvaluator needs a non-empty 2-D X with one label per "
                                    f"row, got X of shape {X.shape} and {len(labels)} labels")
        try:
            stats = K.silhouette_cluster_stats(X, labels, self.distance_measure)
            self._check_clusters(stats)
            total, n = K.silhouette_sum(X, labels, *stats, self.distance_measure)
        except ValueError as e:
            if isinstance(e, InvalidInputError):
                raise
            raise InvalidInputError(f"ClusteringEvaluator: {e}") from None
        return float(total / n)

    def __call__(self, estimator, X, y=None) -> float:
        """Score ``estimator``'s clustering of X as a scikit-learn scorer (larger is better)."""
        self._check()
        return self._score(X, estimator.predict(X))


__all__ = ["BinaryClassificationEvaluator", "ClusteringEvaluator", "MulticlassClassificationEvaluator",
           "RegressionEvaluator"]
