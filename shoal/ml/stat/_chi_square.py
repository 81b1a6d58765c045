"""ChiSquareTest: Pearson's independence test of each categorical feature against the label (Spark's)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shoal.exceptions import InvalidInputError
from shoal.ml._input import as_design_matrix
from shoal.ml.stat import _kernels as K

MAX_CATEGORIES = 10_000      # Spark's limit on distinct values of a feature or the label


@dataclass
class ChiSquareResult:
    """Per feature: p_values, degrees_of_freedom and statistics (Spark's pValues,
    degreesOfFreedom, statistics)."""

    p_values: np.ndarray
    degrees_of_freedom: np.ndarray
    statistics: np.ndarray


class ChiSquareTest:
    """Pearson's chi-squared test of independence of every feature from the label (Spark's
    ``ChiSquareTest.test``); features and label are categorical (their distinct values are
    the categories, at most 10,000 each, as Spark).

    ``ChiSquareTest.test(X, y=None, *, features=None, label=None)`` takes fit's signature:
    arrays with y, or a table (shoal.data Dataset, pandas, Polars, Arrow) with the columns
    named. One pass counts (value, label) pairs per block; the contingency tables are built
    in the driver. Returns a ChiSquareResult.
    """

    @staticmethod
    def test(X, y=None, *, features=None, label=None) -> ChiSquareResult:
        """The chi-squared statistic, degrees of freedom and p-value of every feature."""
        from scipy.stats import chi2
        dm = as_design_matrix(X, y, features=features, label=label, target="classification",
                              estimator="ChiSquareTest")
        parts = dm.map(K.contingency)
        p, dof, stat = [], [], []
        for j in range(dm.n_features):
            values = np.concatenate([q[j][0] for q in parts])
            labels = np.concatenate([q[j][1] for q in parts])
            counts = np.concatenate([q[j][2] for q in parts])
            vals, vi = np.unique(values, return_inverse=True)
            labs, li = np.unique(labels, return_inverse=True)
            for what, n in (("feature " + str(j), len(vals)), ("label", len(labs))):
                if n > MAX_CATEGORIES:
                    raise InvalidInputError(f"ChiSquareTest: the {what} has {n} distinct values, more "
                                            f"than {MAX_CATEGORIES} categories (Spark's limit); bucket "
                                            f"it first (Bucketizer, QuantileDiscretizer).")
            O = np.zeros((len(vals), len(labs)))
            np.add.at(O, (vi, li), counts)
            E = O.sum(axis=1, keepdims=True) * O.sum(axis=0, keepdims=True) / O.sum()
            s = float(((O - E) ** 2 / E).sum())
            df = (len(vals) - 1) * (len(labs) - 1)
            stat.append(s)
            dof.append(df)
            p.append(float(chi2.sf(s, df)) if df > 0 else 1.0)
        return ChiSquareResult(np.array(p), np.array(dof, dtype=np.int64), np.array(stat))
