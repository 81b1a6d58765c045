"""shoal.ml.regression: Spark MLlib's regression models beyond the linear ones, with scikit-learn's API.

IsotonicRegression (pool adjacent violators on per-block aggregates),
GeneralizedLinearRegression (IRLS on per-block weighted Gram matrices; gaussian, binomial,
poisson, gamma and tweedie families with their links) and AFTSurvivalRegression (Weibull
accelerated failure time, L-BFGS on per-block likelihoods) fit across shoal's cluster. Every
name is also importable from shoal.ml. Names load lazily: worker processes import only
the map-side kernels.
"""
from __future__ import annotations

import importlib

_EXPORTS = {"IsotonicRegression": "_isotonic", "GeneralizedLinearRegression": "_glm",
            "AFTSurvivalRegression": "_aft"}


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'shoal.ml.regression' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"shoal.ml.regression.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = sorted(_EXPORTS)
