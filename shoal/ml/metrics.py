"""Evaluation metrics, on arrays or distributed over a shoal.data Dataset.

Every metric takes either ``(y_true, y_pred)`` arrays or a Dataset and column names::

    accuracy_score(y_true, y_pred)
    accuracy_score(ds, label="y", prediction="pred")

On a Dataset each block computes small sufficient statistics in a task (a confusion table,
error sums, score histograms) and the driver folds them: no rows travel to the driver.
"""
from __future__ import annotations

import numpy as np

from shoal.exceptions import InvalidInputError
from shoal.ml._input import _is_dataset, map_dataset_blocks

__all__ = ["accuracy_score", "precision_score", "recall_score", "f1_score", "roc_auc_score",
           "log_loss", "mean_squared_error", "root_mean_squared_error", "mean_absolute_error",
           "r2_score", "silhouette_score", "confusion_matrix", "multilabel_metrics"]


# ----------------------------------------------------------------------------------
# inputs

def _pair(y_true, y_pred, label, prediction, what):
    if y_pred is None:
        raise InvalidInputError(f"{what} needs y_pred (or a Dataset with label= and prediction= columns)")
    t = np.asarray(y_true)
    p = np.asarray(y_pred)
    if t.ndim == 2 and t.shape[1] == 1:
        t = t.ravel()
    if t.shape[0] != p.shape[0]:
        raise InvalidInputError(f"y_true and y_pred have different lengths: {t.shape[0]} and {p.shape[0]}")
    if t.shape[0] == 0:
        raise InvalidInputError(f"{what} got empty y_true and y_pred")
    return t, p


def _columns(table, label, prediction):
    df = table.to_pandas() if hasattr(table, "to_pandas") else table
    for c in (label, prediction):
        if c not in df.columns:
            raise InvalidInputError(f"column {c!r} is missing from the Dataset; available: {list(df.columns)}")
    t = df[label].to_numpy()
    p = df[prediction].to_numpy()
    if p.dtype.kind == "O" and len(p) and np.ndim(p[0]) == 1:
        p = np.stack(p)
    return t, p


def _dataset_args(ds, label, prediction, what):
    if label is None or prediction is None:
        raise InvalidInputError(f"{what} on a Dataset needs label='<column>' and prediction='<column>'")
    return ds, label, prediction


# ----------------------------------------------------------------------------------
# classification: a confusion table folds from blocks

def _confusion_pairs(t, p):
    """Distinct (true, predicted) pairs and their counts."""
    if t.dtype.kind in "biuf" and p.dtype.kind in "biuf":
        stacked = np.stack([t.astype(np.float64), p.astype(np.float64)], axis=1)
    else:
        stacked = np.stack([t.astype(str), p.astype(str)], axis=1)
    return np.unique(stacked, axis=0, return_counts=True)


def _block_confusion(table, label, prediction):
    t, p = _columns(table, label, prediction)
    return _confusion_pairs(t, p)


def _confusion(y_true, y_pred, label, prediction, what):
    """(classes, K x K count matrix with rows = true class, columns = predicted class)."""
    if _is_dataset(y_true):
        _dataset_args(y_true, label, prediction, what)
        parts = map_dataset_blocks(y_true, _block_confusion, label, prediction)
        parts = [pp for pp in parts if len(pp[0])]
        if not parts:
            raise InvalidInputError(f"{what} got an empty Dataset")
        pairs = np.concatenate([pp[0] for pp in parts])
        counts = np.concatenate([pp[1] for pp in parts])
    else:
        t, p = _pair(y_true, y_pred, label, prediction, what)
        pairs, counts = _confusion_pairs(t, p)
    classes, inv = np.unique(pairs.ravel(), return_inverse=True)
    inv = inv.reshape(pairs.shape)
    K = len(classes)
    M = np.zeros((K, K))
    np.add.at(M, (inv[:, 0], inv[:, 1]), counts)
    return classes, M


def confusion_matrix(y_true, y_pred=None, *, label=None, prediction=None):
    """(classes, matrix): matrix[i, j] counts rows of true class i predicted as class j."""
    return _confusion(y_true, y_pred, label, prediction, "confusion_matrix")


def _block_correct(table, label, prediction):
    t, p = _columns(table, label, prediction)
    return int((t == p).sum()), len(t)


def accuracy_score(y_true, y_pred=None, *, label=None, prediction=None) -> float:
    if _is_dataset(y_true):
        _dataset_args(y_true, label, prediction, "accuracy_score")
        parts = map_dataset_blocks(y_true, _block_correct, label, prediction)
        n = sum(p[1] for p in parts)
        if n == 0:
            raise InvalidInputError("accuracy_score got an empty Dataset")
        return sum(p[0] for p in parts) / n
    t, p = _pair(y_true, y_pred, label, prediction, "accuracy_score")
    return float((t == p).mean())


def _prf(y_true, y_pred, label, prediction, average, pos_label, what):
    classes, M = _confusion(y_true, y_pred, label, prediction, what)
    tp = np.diag(M)
    pred = M.sum(axis=0)
    true = M.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(pred > 0, tp / pred, 0.0)
        recall = np.where(true > 0, tp / true, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    if average == "binary":
        if len(classes) > 2:
            raise InvalidInputError(f"{what}: the target has {len(classes)} classes; pass average='macro', "
                                    f"'weighted' or 'micro'")
        if pos_label not in classes:
            if len(classes) == 1:
                return 0.0, 0.0, 0.0
            raise InvalidInputError(f"{what}: pos_label={pos_label!r} is not a label: {classes.tolist()}")
        i = int(np.flatnonzero(classes == pos_label)[0])
        return precision[i], recall[i], f1[i]
    if average == "micro":
        s = tp.sum() / M.sum()
        return s, s, s
    present = true > 0
    if average == "macro":
        labels = present | (pred > 0)
        return precision[labels].mean(), recall[labels].mean(), f1[labels].mean()
    if average == "weighted":
        w = true / true.sum()
        return precision @ w, recall @ w, f1 @ w
    raise InvalidInputError(f"average must be 'binary', 'micro', 'macro' or 'weighted', got {average!r}")


def precision_score(y_true, y_pred=None, *, label=None, prediction=None, average="binary", pos_label=1):
    return float(_prf(y_true, y_pred, label, prediction, average, pos_label, "precision_score")[0])


def recall_score(y_true, y_pred=None, *, label=None, prediction=None, average="binary", pos_label=1):
    return float(_prf(y_true, y_pred, label, prediction, average, pos_label, "recall_score")[1])


def f1_score(y_true, y_pred=None, *, label=None, prediction=None, average="binary", pos_label=1):
    return float(_prf(y_true, y_pred, label, prediction, average, pos_label, "f1_score")[2])


# ----------------------------------------------------------------------------------
# ROC AUC: exact, from per-block (score, positives, negatives) tables

def _score_table(t, s, pos_label):
    pos = (t == pos_label)
    values, inv = np.unique(s.astype(np.float64), return_inverse=True)
    return values, np.bincount(inv, weights=pos, minlength=len(values)), \
        np.bincount(inv, weights=~pos, minlength=len(values))


def _block_score_table(table, label, prediction, pos_label):
    t, s = _columns(table, label, prediction)
    if s.ndim == 2:
        s = s[:, -1]
    return _score_table(t, s, pos_label)


def roc_auc_score(y_true, y_score=None, *, label=None, prediction=None, pos_label=1) -> float:
    """Binary ROC AUC (ties count one half), exact; ``y_score`` is the positive class's score."""
    if _is_dataset(y_true):
        _dataset_args(y_true, label, prediction, "roc_auc_score")
        parts = map_dataset_blocks(y_true, _block_score_table, label, prediction, pos_label)
        values = np.concatenate([p[0] for p in parts])
        pos = np.concatenate([p[1] for p in parts])
        neg = np.concatenate([p[2] for p in parts])
        values, inv = np.unique(values, return_inverse=True)
        pos = np.bincount(inv, weights=pos, minlength=len(values))
        neg = np.bincount(inv, weights=neg, minlength=len(values))
    else:
        t, s = _pair(y_true, y_score, label, prediction, "roc_auc_score")
        if s.ndim == 2:
            s = s[:, -1]
        classes = np.unique(t)
        if len(classes) > 2:
            raise InvalidInputError("roc_auc_score is binary here: y_true has more than 2 classes")
        if pos_label not in classes and len(classes) == 2:
            pos_label = classes[1]
        _, pos, neg = _score_table(t, s, pos_label)
    P, N = pos.sum(), neg.sum()
    if P == 0 or N == 0:
        raise InvalidInputError("roc_auc_score needs both classes in y_true; only one is present")
    # for each score level: negatives strictly below count fully, ties count half
    neg_below = np.cumsum(neg) - neg
    return float((pos * (neg_below + 0.5 * neg)).sum() / (P * N))


# ----------------------------------------------------------------------------------
# log loss

def _log_loss_sum(t_codes, P, eps):
    P = np.clip(P, eps, 1 - eps)
    P = P / P.sum(axis=1, keepdims=True)
    return float(-np.log(P[np.arange(len(t_codes)), t_codes]).sum()), len(t_codes)


def _block_log_loss(table, label, prediction, classes, eps):
    t, p = _columns(table, label, prediction)
    P = np.column_stack([1 - p, p]) if p.ndim == 1 else p
    codes = np.searchsorted(classes, t)
    if np.any(codes >= len(classes)) or np.any(classes[np.minimum(codes, len(classes) - 1)] != t):
        raise InvalidInputError("log_loss: y_true holds a label outside labels=")
    return _log_loss_sum(codes, P, eps)


def log_loss(y_true, y_proba=None, *, label=None, prediction=None, labels=None, eps=1e-15) -> float:
    """Mean negative log-likelihood; ``y_proba`` is (n, K) (classes sorted) or (n,) for P(class 1)."""
    if _is_dataset(y_true):
        _dataset_args(y_true, label, prediction, "log_loss")
        if labels is None:
            raise InvalidInputError("log_loss on a Dataset needs labels=[...] (the sorted classes)")
        parts = map_dataset_blocks(y_true, _block_log_loss, label, prediction, np.asarray(labels), eps)
        total = sum(p[0] for p in parts)
        n = sum(p[1] for p in parts)
        return total / n
    t, p = _pair(y_true, y_proba, label, prediction, "log_loss")
    classes = np.unique(t) if labels is None else np.asarray(labels)
    P = np.column_stack([1 - p, p]) if p.ndim == 1 else p.astype(np.float64)
    if P.shape[1] != len(classes):
        if labels is None and P.shape[1] > len(classes):
            raise InvalidInputError(f"y_true holds {len(classes)} classes but y_proba has {P.shape[1]} columns; "
                                    f"pass labels=")
        raise InvalidInputError(f"y_proba has {P.shape[1]} columns for {len(classes)} classes")
    codes = np.searchsorted(classes, t)
    total, n = _log_loss_sum(codes, P, eps)
    return total / n


# ----------------------------------------------------------------------------------
# regression: one pass of sums

def _regression_sums(t, p):
    t = t.astype(np.float64)
    p = p.astype(np.float64).reshape(t.shape)
    e = t - p
    return np.array([float(e @ e), float(np.abs(e).sum()), float(t.sum()), float(t @ t), float(len(t))])


def _block_regression_sums(table, label, prediction):
    return _regression_sums(*_columns(table, label, prediction))


def _reg(y_true, y_pred, label, prediction, what):
    if _is_dataset(y_true):
        _dataset_args(y_true, label, prediction, what)
        s = np.sum(map_dataset_blocks(y_true, _block_regression_sums, label, prediction), axis=0)
        if s[4] == 0:
            raise InvalidInputError(f"{what} got an empty Dataset")
        return s
    t, p = _pair(y_true, y_pred, label, prediction, what)
    if t.dtype.kind not in "biuf" or p.dtype.kind not in "biuf":
        raise InvalidInputError(f"{what} needs numeric y_true and y_pred")
    return _regression_sums(t, p)


def mean_squared_error(y_true, y_pred=None, *, label=None, prediction=None) -> float:
    s = _reg(y_true, y_pred, label, prediction, "mean_squared_error")
    return float(s[0] / s[4])


def root_mean_squared_error(y_true, y_pred=None, *, label=None, prediction=None) -> float:
    return float(np.sqrt(mean_squared_error(y_true, y_pred, label=label, prediction=prediction)))


def mean_absolute_error(y_true, y_pred=None, *, label=None, prediction=None) -> float:
    s = _reg(y_true, y_pred, label, prediction, "mean_absolute_error")
    return float(s[1] / s[4])


def r2_score(y_true, y_pred=None, *, label=None, prediction=None) -> float:
    sse, _, st, stt, n = _reg(y_true, y_pred, label, prediction, "r2_score")
    sst = stt - st * st / n
    if sst <= 0:
        return 1.0 if sse == 0 else 0.0
    return float(1.0 - sse / sst)


# ----------------------------------------------------------------------------------
# silhouette: blocked exact distances; each block of rows against all points

def _silhouette_rows(X, labels, X_all, labels_all, k):
    """Silhouette value of each row of X (with cluster ``labels``) against every point."""
    counts = np.bincount(labels_all, minlength=k).astype(np.float64)
    sq_all = np.einsum("ij,ij->i", X_all, X_all)
    out = np.empty(X.shape[0])
    step = max(1, (1 << 22) // max(1, X_all.shape[0]))
    indicator = np.eye(k)[labels_all] if k <= 64 else None
    for s in range(0, X.shape[0], step):
        Xc = X[s:s + step]
        D = np.einsum("ij,ij->i", Xc, Xc)[:, None] - 2.0 * Xc @ X_all.T + sq_all[None, :]
        np.sqrt(np.maximum(D, 0.0), out=D)
        sums = D @ indicator if indicator is not None else \
            np.stack([np.bincount(labels_all, weights=row, minlength=k) for row in D])
        own = labels[s:s + step]
        rows = np.arange(len(own))
        n_own = counts[own]
        a = np.where(n_own > 1, sums[rows, own] / np.maximum(n_own - 1, 1), 0.0)
        mean_other = sums / np.where(counts > 0, counts, np.inf)
        mean_other[rows, own] = np.inf
        mean_other[:, counts == 0] = np.inf
        b = mean_other.min(axis=1)
        sil = np.where(n_own > 1, (b - a) / np.maximum(a, b), 0.0)
        out[s:s + step] = sil
    return out


def silhouette_score(X, labels, *, sample_size=None, random_state=None) -> float:
    """Mean silhouette coefficient (Euclidean). Rows are split into blocks scored as tasks against
    all points; ``sample_size`` scores a random subset (O(n^2) otherwise)."""
    from shoal.ml._input import _to_float_matrix, as_design_matrix
    Xa = _to_float_matrix(X, "X", "silhouette_score")
    lab = np.asarray(labels)
    if lab.shape[0] != Xa.shape[0]:
        raise InvalidInputError(f"X and labels have different lengths: {Xa.shape[0]} and {lab.shape[0]}")
    if sample_size is not None:
        idx = np.random.RandomState(random_state).permutation(Xa.shape[0])[:sample_size]
        Xa, lab = Xa[idx], lab[idx]
    classes, codes = np.unique(lab, return_inverse=True)
    k = len(classes)
    if not 2 <= k <= Xa.shape[0] - 1:
        raise InvalidInputError(f"Number of labels is {k}. Valid values are 2 to n_samples - 1 (inclusive)")
    dm = as_design_matrix(Xa, codes.astype(np.float64), target="regression", estimator="silhouette_score")
    total, n = dm.map_reduce(_block_silhouette_codes, Xa, codes, k)
    return float(total / n)


def _block_silhouette_codes(X, y, X_all, labels_all, k):
    return float(_silhouette_rows(X, y.astype(np.int64), X_all, labels_all, k).sum()), X.shape[0]


# ----------------------------------------------------------------------------------
# multilabel: per-document sums and per-label counts fold from blocks (Spark's MultilabelMetrics)

MULTILABEL_METRICS = ("subsetAccuracy", "accuracy", "hammingLoss", "precision", "recall", "f1Measure",
                      "precisionByLabel", "recallByLabel", "f1MeasureByLabel", "microPrecision",
                      "microRecall", "microF1Measure")


def _label_sets(column, what):
    out = []
    for i, row in enumerate(column):
        if row is None or isinstance(row, (str, bytes)) or not hasattr(row, "__iter__"):
            raise InvalidInputError(f"{what} takes a list of labels per row, but row {i} holds "
                                    f"{type(row).__name__}: {row!r}")
        out.append(set(np.asarray(row, dtype=np.float64).tolist()))
    return out


def _multilabel_sums(true_sets, pred_sets):
    """(docs, [subset, accuracy, precision, recall, f1, hamming] sums, labels, tp, fp, fn)."""
    sums = np.zeros(6)
    tp, fp, fn = {}, {}, {}
    for L, P in zip(true_sets, pred_sets):
        inter = len(L & P)
        sums[0] += L == P
        union = len(L) + len(P) - inter
        sums[1] += inter / union if union else 1.0    # no labels, none predicted: exact
        sums[2] += inter / len(P) if P else 0.0
        sums[3] += inter / len(L) if L else 0.0
        sums[4] += 2.0 * inter / (len(L) + len(P)) if L or P else 0.0
        sums[5] += len(L) + len(P) - 2 * inter
        for v in L & P:
            tp[v] = tp.get(v, 0) + 1
        for v in P - L:
            fp[v] = fp.get(v, 0) + 1
        for v in L - P:
            fn[v] = fn.get(v, 0) + 1
    labels = np.array(sorted(set(tp) | set(fp) | set(fn)), dtype=np.float64)
    seen_true = np.array(sorted(set().union(*true_sets)), dtype=np.float64)
    counts = [np.array([d.get(v, 0) for v in labels.tolist()], dtype=np.float64) for d in (tp, fp, fn)]
    return len(true_sets), sums, labels, seen_true, *counts


def _block_multilabel(table, label, prediction):
    for c in (label, prediction):
        if c not in table.column_names:
            raise InvalidInputError(f"column {c!r} is missing from the Dataset; available: "
                                    f"{table.column_names}")
    return _multilabel_sums(_label_sets(table.column(label).to_pylist(), f"column {label!r}"),
                            _label_sets(table.column(prediction).to_pylist(), f"column {prediction!r}"))


def multilabel_metrics(y_true, y_pred=None, *, label=None, prediction=None) -> dict:
    """Spark's MultilabelMetrics: ``y_true`` and ``y_pred`` hold one list of labels per row
    (a Dataset: the ``label=`` and ``prediction=`` list columns, per-block sums as tasks).

    Returns a dict: subsetAccuracy, accuracy (mean Jaccard index; a row with no labels and
    no predictions counts 1), hammingLoss (over the distinct true labels), precision, recall,
    f1Measure (averaged over rows), microPrecision, microRecall, microF1Measure, and
    ``by_label``: {label: (precision, recall, f1)} for every label seen.
    """
    if _is_dataset(y_true):
        _dataset_args(y_true, label, prediction, "multilabel_metrics")
        parts = map_dataset_blocks(y_true, _block_multilabel, label, prediction)
    else:
        if y_pred is None:
            raise InvalidInputError("multilabel_metrics needs y_pred (or a Dataset with label= and "
                                    "prediction= columns)")
        t, p = list(y_true), list(y_pred)
        if len(t) != len(p):
            raise InvalidInputError(f"y_true and y_pred have different lengths: {len(t)} and {len(p)}")
        parts = [_multilabel_sums(_label_sets(t, "y_true"), _label_sets(p, "y_pred"))]
    n = sum(q[0] for q in parts)
    if n == 0:
        raise InvalidInputError("multilabel_metrics got no rows")
    sums = np.sum([q[1] for q in parts], axis=0)
    labels, inv = np.unique(np.concatenate([q[2] for q in parts]), return_inverse=True)
    tp, fp, fn = (np.bincount(inv, weights=np.concatenate([q[i] for q in parts]), minlength=len(labels))
                  for i in (4, 5, 6))
    num_labels = len(np.unique(np.concatenate([q[3] for q in parts])))

    def ratio(a, b):
        return float(a / b) if b else 0.0

    by_label = {}
    for v, a, b, c in zip(labels.tolist(), tp, fp, fn):
        pr, rc = ratio(a, a + b), ratio(a, a + c)
        by_label[v] = (pr, rc, ratio(2 * pr * rc, pr + rc))
    micro_p, micro_r = ratio(tp.sum(), tp.sum() + fp.sum()), ratio(tp.sum(), tp.sum() + fn.sum())
    return {"subsetAccuracy": sums[0] / n, "accuracy": sums[1] / n,
            "hammingLoss": ratio(sums[5], n * num_labels), "precision": sums[2] / n,
            "recall": sums[3] / n, "f1Measure": sums[4] / n, "microPrecision": micro_p,
            "microRecall": micro_r, "microF1Measure": ratio(2 * tp.sum(), 2 * tp.sum() + fp.sum() + fn.sum()),
            "by_label": by_label}
