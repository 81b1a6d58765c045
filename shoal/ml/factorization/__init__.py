"""shoal.ml.factorization: Spark's factorization machines (FMClassifier, FMRegressor) with scikit-learn's API.

Full-batch L-BFGS on per-block losses and gradients folded across shoal's cluster. Also
importable from shoal.ml. Names load lazily: worker processes import only the map-side
kernels.
"""
from __future__ import annotations

from shoal.ml._lazy import lazy_exports

_EXPORTS = {"FMClassifier": "_factorization_machine", "FMRegressor": "_factorization_machine"}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS)
