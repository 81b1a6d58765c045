"""Pipeline: scikit-learn's Pipeline, with save/load and shoal.data Datasets flowing through.

On a Dataset, fit with the label's column name as y: ``pipe.fit(ds, "label")``. Each
transformer fits on the feature columns (the label column is left out) and transforms the
Dataset lazily (the label passes through); the final estimator fits on the result.
"""
from __future__ import annotations

from sklearn.pipeline import Pipeline as _SklearnPipeline

from shoal.ml._base import ShoalEstimatorMixin


class Pipeline(ShoalEstimatorMixin, _SklearnPipeline):
    """A chain of transformers ending in any estimator (scikit-learn's API)."""


def make_pipeline(*steps, memory=None, verbose=False) -> Pipeline:
    """A Pipeline whose step names are the lower-cased class names."""
    from sklearn.pipeline import _name_estimators
    return Pipeline(_name_estimators(steps), memory=memory, verbose=verbose)
