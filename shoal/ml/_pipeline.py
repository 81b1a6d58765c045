"""Pipeline: scikit-learn's Pipeline, with save/load, fused distributed fitting and Datasets.

On array input that is laid out on the cluster, a Pipeline of shoal.ml steps is fused: the
data is put in the object store once, each transformer fits on the blocks and then
transforms them where they live (a task per block), and the final estimator fits on the
transformed blocks. Nothing returns to the driver between steps.

On a table the Pipeline takes the one fit signature of shoal.ml (see
``shoal.ml._columns.resolve_fit_columns``): ``pipe.fit(ds, features=[...], label="y")``. On a
Dataset each transformer fits on its input columns from per-block statistics, then
transforms the Dataset (the label and other columns pass through; the output is
materialized once so that later steps do not rerun it); ``features=`` follows the data: a
step's output columns take the place of the columns it read, so each step is fitted with
``features=`` naming the columns the previous one wrote, and the final estimator with the
last of them. A step that names its own columns (``input_cols=``) reads those. On a
pandas/Polars DataFrame or Arrow Table, ``features=``/``label=`` pick the columns and the
label, then the Pipeline fits as on arrays. ``predict``/``transform`` on a Dataset stay
lazy until consumed and return a Dataset (``prediction`` column appended).
"""
from __future__ import annotations

from sklearn.base import is_classifier, is_regressor
from sklearn.pipeline import Pipeline as _SklearnPipeline

from shoal.ml import _input


def _skipped(step) -> bool:
    return step is None or (isinstance(step, str) and step == "passthrough")


def follow_columns(features: list, read: list, written: list) -> list:
    """The feature columns after a step that read ``read`` and wrote ``written``: its outputs
    take the place of the first column it read; the other features keep their order."""
    out, placed = [], False
    for c in features:
        if c in read:
            if not placed:
                out.extend(w for w in written if w not in out)
                placed = True
        elif c not in written:
            out.append(c)
    if not placed:   # the step read columns of its own: its outputs join the features
        out.extend(w for w in written if w not in out)
    return out


class Pipeline(_SklearnPipeline):
    """A chain of transformers ending in any estimator (scikit-learn's API).

    ``fit(X, y=None, *, features=None, label=None, **params)``: the signature of every
    shoal.ml estimator; on a Dataset ``features=``/``label=`` are routed through the steps
    (see the module docstring). get_params/set_params, named_steps, slicing and the other
    scikit-learn Pipeline behaviours are unchanged.
    """

    def save(self, path) -> None:
        from shoal.ml._persist import save
        save(self, path)

    def _supervised(self) -> bool:
        final = self._final_estimator
        return not _skipped(final) and (is_classifier(final) or is_regressor(final))

    def fit(self, X, y=None, *, features=None, label=None, **params):
        if _input._is_dataset(X):
            if params or self.memory is not None:
                raise _input.InvalidInputError(
                    "Pipeline.fit on a Dataset takes no step parameters or memory; fit the steps "
                    "one by one to pass them.")
            return self._fit_dataset(X, y, features, label)
        if features is not None or label is not None or isinstance(y, str):
            y, features, label = _input.resolve_fit_columns(
                X, y, features=features, label=label, estimator=self, supervised=self._supervised())
            if label is not None:
                y = _input.as_frame(X)[label].to_numpy()
            X = _input.select_table(X, features, label)
        if params or self.memory is not None or not self._fusable(X):
            return super().fit(X, y, **params)
        final = self._final_estimator
        target = ("classification" if is_classifier(final) else
                  "regression" if is_regressor(final) else None)
        dm = _input.as_design_matrix(X, y, target=target, estimator=final)
        if not dm.distributed:
            return super().fit(X, y)
        for _, step in self.steps[:-1]:
            if _skipped(step):
                continue
            step.fit(dm)
            fn, args = step._block_transform()
            dm = dm.map_blocks(fn, *args)
        if final != "passthrough":
            final.fit(dm)
        return self

    def _fit_dataset(self, ds, y, features, label):
        """Fit each step on the previous step's output, materialized once: a lazy chain would
        rerun every earlier transform for every later fit."""
        self._validate_steps()
        ds = ds.materialize()
        _, features, label = _input.resolve_fit_columns(ds, y, features=features, label=label,
                                                        estimator=self, supervised=self._supervised())
        for _, step in self.steps[:-1]:
            if _skipped(step):
                continue
            own = getattr(step, "_own_input_columns", lambda: None)()
            step.fit(ds, features=features if own is None else None, label=label)
            ds = step.transform(ds).materialize()
            if features is not None:
                features = follow_columns(features, *step._dataset_columns_io())
        final = self._final_estimator
        if not _skipped(final):
            final.fit(ds, features=features, label=label)
        return self

    def fit_transform(self, X, y=None, *, features=None, label=None, **params):
        if _input._is_dataset(X) or features is not None or label is not None or isinstance(y, str):
            return self.fit(X, y, features=features, label=label, **params).transform(X)
        return super().fit_transform(X, y, **params)

    def fit_predict(self, X, y=None, *, features=None, label=None, **params):
        if _input._is_dataset(X) or features is not None or label is not None or isinstance(y, str):
            return self.fit(X, y, features=features, label=label, **params).predict(X)
        return super().fit_predict(X, y, **params)

    def score(self, X, y=None, sample_weight=None, *, label=None, **params):
        if label is not None and not _input._is_dataset(X):
            y, _, label = _input.resolve_fit_columns(X, y, label=label, estimator=self, method="score")
            frame = _input.as_frame(X)
            X, y = frame.drop(columns=[label]), frame[label].to_numpy()
        elif label is not None:
            y = label
        return super().score(X, y, sample_weight=sample_weight, **params)

    def _fusable(self, X) -> bool:
        if _input._is_dataset(X) or isinstance(X, str):
            return False
        steps = [s for _, s in self.steps if not _skipped(s)]
        if not steps or not getattr(steps[-1], "_fits_design_matrix", False):
            return False
        return all(getattr(step, "_fits_design_matrix", False) and step._can_block_transform()
                   for step in steps[:-1])


def make_pipeline(*steps, memory=None, verbose=False) -> Pipeline:
    """A Pipeline whose step names are the lower-cased class names."""
    from sklearn.pipeline import _name_estimators
    return Pipeline(_name_estimators(steps), memory=memory, verbose=verbose)
