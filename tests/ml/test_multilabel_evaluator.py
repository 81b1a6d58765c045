"""MultilabelClassificationEvaluator against Spark's documented MultilabelMetrics values and
scikit-learn's multilabel metrics on indicator matrices."""
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from sklearn import metrics as skm
from sklearn.preprocessing import MultiLabelBinarizer

import shoal.data as sd
import shoal.ml as ml
from shoal.exceptions import InvalidInputError
from tests.ml._cluster import cluster  # noqa: F401

# pyspark.mllib.evaluation.MultilabelMetrics' example: (predictions, labels) per row
SPARK_ROWS = [([0.0, 1.0], [0.0, 2.0]), ([0.0, 2.0], [0.0, 1.0]), ([], [0.0]), ([2.0], [2.0]),
              ([2.0, 0.0], [2.0, 0.0]), ([0.0, 1.0, 2.0], [0.0, 1.0]), ([1.0], [1.0, 2.0])]
# its documented values (as printed there, to the digits shown)
SPARK_VALUES = {"recall": 0.64, "f1Measure": 0.63, "precision": 0.66, "subsetAccuracy": 0.28,
                "accuracy": 0.54, "hammingLoss": 0.33, "microPrecision": 0.72, "microRecall": 0.66,
                "microF1Measure": 0.69}
SPARK_BY_LABEL = [("recallByLabel", 1.0, 0.66), ("f1MeasureByLabel", 1.0, 0.66),
                  ("precisionByLabel", 2.0, 0.5)]


def _spark_frame():
    return pd.DataFrame({"prediction": [p for p, _ in SPARK_ROWS], "label": [t for _, t in SPARK_ROWS]})


@pytest.mark.parametrize("metric", sorted(SPARK_VALUES))
def test_sparks_documented_values(metric):
    value = ml.MultilabelClassificationEvaluator(metric).evaluate(_spark_frame())
    assert value == pytest.approx(SPARK_VALUES[metric], abs=0.01)
    assert int(value * 100) == int(SPARK_VALUES[metric] * 100)     # the digits Spark prints


@pytest.mark.parametrize("metric,label,expected", SPARK_BY_LABEL)
def test_sparks_documented_values_by_label(metric, label, expected):
    value = ml.MultilabelClassificationEvaluator(metric, metric_label=label).evaluate(_spark_frame())
    assert int(value * 100) == int(expected * 100)


def _random_rows(n=400, k=6, seed=0):
    rng = np.random.default_rng(seed)
    truth = [sorted(set(rng.choice(k, rng.integers(1, 4), replace=False).tolist())) for _ in range(n)]
    pred = [sorted({t for t in row if rng.random() < 0.7} | set(rng.choice(k, rng.integers(0, 2)).tolist()))
            for row in truth]
    return [[float(v) for v in r] for r in truth], [[float(v) for v in r] for r in pred]


def test_matches_sklearns_multilabel_metrics():
    truth, pred = _random_rows()
    mlb = MultiLabelBinarizer().fit(truth + pred)
    T, P = mlb.transform(truth), mlb.transform(pred)
    expected = {
        "subsetAccuracy": skm.accuracy_score(T, P),
        "accuracy": skm.jaccard_score(T, P, average="samples", zero_division=1),
        "hammingLoss": skm.hamming_loss(T, P),
        "precision": skm.precision_score(T, P, average="samples", zero_division=0),
        "recall": skm.recall_score(T, P, average="samples", zero_division=0),
        "f1Measure": skm.f1_score(T, P, average="samples", zero_division=0),
        "microPrecision": skm.precision_score(T, P, average="micro"),
        "microRecall": skm.recall_score(T, P, average="micro"),
        "microF1Measure": skm.f1_score(T, P, average="micro"),
    }
    frame = pd.DataFrame({"label": truth, "prediction": pred})
    for metric, value in expected.items():
        ours = ml.MultilabelClassificationEvaluator(metric).evaluate(frame)
        assert ours == pytest.approx(value, rel=1e-12), metric
    per_label = {"precisionByLabel": skm.precision_score(T, P, average=None, zero_division=0),
                 "recallByLabel": skm.recall_score(T, P, average=None, zero_division=0),
                 "f1MeasureByLabel": skm.f1_score(T, P, average=None, zero_division=0)}
    for metric, values in per_label.items():
        for label, value in zip(mlb.classes_, values):
            ours = ml.MultilabelClassificationEvaluator(metric, metric_label=label).evaluate(frame)
            assert ours == pytest.approx(value, rel=1e-12), (metric, label)


def test_a_dataset_gives_the_same_values_as_a_table(cluster):  # noqa: F811
    truth, pred = _random_rows(n=300, seed=1)
    table = pa.table({"label": pa.array(truth, pa.list_(pa.float64())),
                      "prediction": pa.array(pred, pa.list_(pa.float64()))})
    ds = sd.from_arrow(table).repartition(4)
    for metric in ("f1Measure", "hammingLoss", "microF1Measure", "accuracy"):
        ev = ml.MultilabelClassificationEvaluator(metric)
        assert ev.evaluate(ds) == pytest.approx(ev.evaluate(table), rel=1e-12)
    assert not ml.MultilabelClassificationEvaluator("hammingLoss").is_larger_better()
    assert ml.MultilabelClassificationEvaluator().is_larger_better()
    with pytest.raises(InvalidInputError, match="column 'labels' is missing"):
        ml.MultilabelClassificationEvaluator(label_col="labels").evaluate(ds)


def test_bad_input_is_named():
    frame = _spark_frame()
    with pytest.raises(InvalidInputError, match="metric_name='f2'"):
        ml.MultilabelClassificationEvaluator("f2").evaluate(frame)
    with pytest.raises(InvalidInputError, match="metric_label='a'"):
        ml.MultilabelClassificationEvaluator("recallByLabel", metric_label="a").evaluate(frame)
    with pytest.raises(InvalidInputError, match="column 'pred' is missing"):
        ml.MultilabelClassificationEvaluator(prediction_col="pred").evaluate(frame)
    bad = frame.assign(prediction=["0 1"] + [[0.0]] * (len(frame) - 1))
    with pytest.raises(InvalidInputError, match="list of labels per row.*row 0"):
        ml.MultilabelClassificationEvaluator().evaluate(bad)
