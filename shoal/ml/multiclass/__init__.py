"""shoal.ml.multiclass: multiclass strategies over shoal.ml's binary classifiers (Spark's OneVsRest).

Also importable from shoal.ml. Names load lazily: worker processes import only the
map-side kernels.
"""
from __future__ import annotations

from shoal.ml._lazy import lazy_exports

_EXPORTS = {"OneVsRest": "_one_vs_rest"}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS)
