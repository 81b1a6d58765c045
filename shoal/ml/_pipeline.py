"""Pipeline: scikit-learn's Pipeline, with save/load, fused distributed fitting and Datasets.

On array input that is laid out on the cluster, a Pipeline of shoal.ml steps is fused: the
data is put in the object store once, each transformer fits on the blocks and then
transforms them where they live (a task per block), and the final estimator fits on the
transformed blocks. Nothing returns to the driver between steps.

On a Dataset, fit with the label's column name as y: ``pipe.fit(ds, "label")``. Each
transformer fits on the feature columns (the label column is left out) from per-block
statistics, then transforms the Dataset (the label passes through; the output is
materialized once so that later steps do not rerun it); the final estimator fits on the
result. ``predict``/``transform`` on a Dataset stay lazy until the final estimator's
block-parallel predict.
"""
from __future__ import annotations

from sklearn.base import is_classifier, is_regressor
from sklearn.pipeline import Pipeline as _SklearnPipeline

from shoal.ml import _input


class Pipeline(_SklearnPipeline):
    """A chain of transformers ending in any estimator (scikit-learn's API)."""

    def save(self, path) -> None:
        from shoal.ml._persist import save
        save(self, path)

    def fit(self, X, y=None, **params):
        if _input._is_dataset(X) and not params and self.memory is None:
            return self._fit_dataset(X, y)
        if params or self.memory is not None or not self._fusable(X):
            return super().fit(X, y, **params)
        final = self._final_estimator
        target = ("classification" if is_classifier(final) else
                  "regression" if is_regressor(final) else None)
        dm = _input.as_design_matrix(X, y, target=target, estimator=final)
        if not dm.distributed:
            return super().fit(X, y)
        for _, step in self.steps[:-1]:
            if step is None or step == "passthrough":
                continue
            step.fit(dm)
            fn, args = step._block_transform()
            dm = dm.map_blocks(fn, *args)
        if final != "passthrough":
            final.fit(dm)
        return self

    def _fit_dataset(self, ds, y):
        """Fit each step on the previous step's output, materialized once: a lazy chain would
        rerun every earlier transform for every later fit."""
        self._validate_steps()
        ds = ds.materialize()
        for _, step in self.steps[:-1]:
            if step is None or step == "passthrough":
                continue
            ds = step.fit(ds, y).transform(ds).materialize()
        final = self._final_estimator
        if final is not None and final != "passthrough":
            final.fit(ds, y)
        return self

    def _fusable(self, X) -> bool:
        if _input._is_dataset(X) or isinstance(X, str):
            return False
        steps = [s for _, s in self.steps if s is not None and s != "passthrough"]
        if not steps or not getattr(steps[-1], "_fits_design_matrix", False):
            return False
        return all(getattr(step, "_fits_design_matrix", False) and step._can_block_transform()
                   for step in steps[:-1])


def make_pipeline(*steps, memory=None, verbose=False) -> Pipeline:
    """A Pipeline whose step names are the lower-cased class names."""
    from sklearn.pipeline import _name_estimators
    return Pipeline(_name_estimators(steps), memory=memory, verbose=verbose)
