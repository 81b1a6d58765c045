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


RANKING_METRICS = ("meanAveragePrecision", "meanAveragePrecisionAtK", "precisionAtK", "ndcgAtK",
                   "recallAtK")


def _ranking_score(pred, relevant, metric, k):
    """One query's score: ``pred`` the ranked predictions, ``relevant`` the relevant items
    (Spark's RankingMetrics; a query without relevant items scores 0, as Spark)."""
    rel = set(relevant)
    if not rel:
        return 0.0
    if metric == "meanAveragePrecision":
        top = pred
    else:
        top = pred[:k]
    hit = np.array([p in rel for p in top], dtype=bool)
    if metric in ("meanAveragePrecision", "meanAveragePrecisionAtK"):
        if not hit.any():
            return 0.0
        ranks = np.nonzero(hit)[0]
        prec = np.arange(1, len(ranks) + 1) / (ranks + 1.0)
        denom = len(rel) if metric == "meanAveragePrecision" else min(len(rel), k)
        return float(prec.sum() / denom)
    if metric == "precisionAtK":
        return float(hit.sum() / k)
    if metric == "recallAtK":
        return float(hit.sum() / len(rel))
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    return float((hit * discounts[:len(hit)]).sum() / discounts[:min(k, len(rel))].sum())


def ranking_block(table, label, prediction, metric, k):
    """Runs in a task: (sum of the queries' scores, queries) of one scored Arrow block."""
    for c in (label, prediction):
        if c not in table.column_names:
            raise InvalidInputError(f"column {c!r} is missing from the scored Dataset given to "
                                    f"RankingEvaluator.evaluate(); available: {table.column_names}")
    preds, labels = table.column(prediction).to_pylist(), table.column(label).to_pylist()
    total = sum(_ranking_score(p or [], r or [], metric, k) for p, r in zip(preds, labels))
    return total, len(preds)


class RankingEvaluator:
    """Spark's RankingEvaluator: how well ranked predictions find each query's relevant
    items. metric_name "meanAveragePrecision" (default), "meanAveragePrecisionAtK",
    "precisionAtK", "ndcgAtK" or "recallAtK" (at ``k``), Spark's RankingMetrics definitions.

    ``evaluate(scored)``: a Dataset (per-block sums computed as tasks), pandas DataFrame or
    Arrow Table whose ``prediction_col`` holds each query's ranked items (a list) and
    ``label_col`` its relevant items (a list); for example ALS's recommendations next to
    the items each user went on to rate. A query without relevant items scores 0.
    """

    def __init__(self, metric_name="meanAveragePrecision", *, k=10, label_col="label",
                 prediction_col="prediction"):
        self.metric_name = metric_name
        self.k = k
        self.label_col = label_col
        self.prediction_col = prediction_col

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"RankingEvaluator({args})"

    def is_larger_better(self) -> bool:
        """True: every ranking metric is larger for a better ranking."""
        return True

    def evaluate(self, scored) -> float:
        """The metric averaged over the queries (rows) of ``scored``."""
        from shoal.ml._executor import map_dataset_blocks
        if self.metric_name not in RANKING_METRICS:
            raise InvalidInputError(f"RankingEvaluator metric_name={self.metric_name!r} is not one of "
                                    f"{list(RANKING_METRICS)}")
        if not isinstance(self.k, (int, np.integer)) or isinstance(self.k, bool) or self.k < 1:
            raise InvalidInputError(f"RankingEvaluator k={self.k!r} must be a positive int")
        args = (self.label_col, self.prediction_col, self.metric_name, int(self.k))
        if _is_dataset(scored):
            parts = map_dataset_blocks(scored, ranking_block, *args)
        else:
            import pyarrow as pa
            if not hasattr(scored, "column_names"):
                frame = scored.to_pandas() if hasattr(scored, "to_pandas") and \
                    not hasattr(scored, "iloc") else scored
                scored = pa.Table.from_pandas(frame, preserve_index=False)
            parts = [ranking_block(scored, *args)]
        total, n = sum(p[0] for p in parts), sum(p[1] for p in parts)
        if n == 0:
            raise InvalidInputError("RankingEvaluator.evaluate() got no rows")
        return float(total / n)


class MultilabelClassificationEvaluator:
    """Spark's MultilabelClassificationEvaluator: rows whose ``label_col`` and
    ``prediction_col`` each hold a list of labels (Spark's arrays of doubles).

    metric_name (Spark's MultilabelMetrics): "f1Measure" (default), "subsetAccuracy",
    "accuracy", "hammingLoss", "precision", "recall" (averaged over rows),
    "microPrecision", "microRecall", "microF1Measure", or "precisionByLabel",
    "recallByLabel", "f1MeasureByLabel" for the label ``metric_label`` (0.0 by default, as
    Spark). ``evaluate(scored)``: a Dataset (per-block sums computed as tasks), a pandas
    DataFrame or an Arrow Table. hammingLoss is the one smaller-is-better metric.
    """

    def __init__(self, metric_name="f1Measure", *, metric_label=0.0, label_col="label",
                 prediction_col="prediction"):
        self.metric_name = metric_name
        self.metric_label = metric_label
        self.label_col = label_col
        self.prediction_col = prediction_col

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"MultilabelClassificationEvaluator({args})"

    def _check(self):
        if self.metric_name not in metrics.MULTILABEL_METRICS:
            raise InvalidInputError(f"MultilabelClassificationEvaluator metric_name={self.metric_name!r} "
                                    f"is not one of {list(metrics.MULTILABEL_METRICS)}")
        if self.metric_name.endswith("ByLabel") and not (
                np.isscalar(self.metric_label) and not isinstance(self.metric_label, (str, bool))
                and float(self.metric_label) >= 0):
            raise InvalidInputError(f"MultilabelClassificationEvaluator metric_label={self.metric_label!r} "
                                    f"must be a label value >= 0 (a number, as in Spark)")

    def is_larger_better(self) -> bool:
        """False for hammingLoss, True for every other metric (Spark's ``isLargerBetter``)."""
        self._check()
        return self.metric_name != "hammingLoss"

    def evaluate(self, scored) -> float:
        """The metric over the rows of ``scored``."""
        self._check()
        label, prediction = self.label_col, self.prediction_col
        if _is_dataset(scored):
            columns = scored.columns()
            for c in (label, prediction):
                if c not in columns:
                    raise InvalidInputError(f"column {c!r} is missing from the scored Dataset given to "
                                            f"MultilabelClassificationEvaluator.evaluate(); available: "
                                            f"{columns}")
            values = metrics.multilabel_metrics(scored, label=label, prediction=prediction)
        else:
            frame = scored.to_pandas() if hasattr(scored, "to_pandas") and not hasattr(scored, "iloc") \
                else scored
            for c in (label, prediction):
                if c not in frame.columns:
                    raise InvalidInputError(f"column {c!r} is missing from the scored table given to "
                                            f"MultilabelClassificationEvaluator.evaluate(); available: "
                                            f"{list(frame.columns)}")
            values = metrics.multilabel_metrics(list(frame[label]), list(frame[prediction]))
        if self.metric_name.endswith("ByLabel"):
            which = ("precisionByLabel", "recallByLabel", "f1MeasureByLabel").index(self.metric_name)
            return float(values["by_label"].get(float(self.metric_label), (0.0, 0.0, 0.0))[which])
        return float(values[self.metric_name])


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
           "MultilabelClassificationEvaluator", "RankingEvaluator", "RegressionEvaluator"]
