"""shoal.ml.regression: Spark MLlib's regression models beyond the linear ones, with scikit-learn's API.

IsotonicRegression (pool adjacent violators on per-block aggregates),
GeneralizedLinearRegression (IRLS on per-block weighted Gram matrices; gaussian, binomial,
poisson, gamma and tweedie families with their links) and AFTSurvivalRegression (Weibull
accelerated failure time, L-BFGS on per-block likelihoods) fit across shoal's cluster. Every
name is also importable from shoal.ml. Names load lazily: worker processes import only
the map-side kernels.
"""
from __future__ import annotations

from shoal.ml._lazy import lazy_exports

_EXPORTS = {"IsotonicRegression": "_isotonic", "GeneralizedLinearRegression": "_glm",
            "AFTSurvivalRegression": "_aft"}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS)
