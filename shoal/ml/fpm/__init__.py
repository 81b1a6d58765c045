"""shoal.ml.fpm: frequent pattern mining (Spark MLlib's pyspark.ml.fpm).

FPGrowth (frequent itemsets and association rules, parallel FP-growth across shoal's
cluster) and PrefixSpan (frequent sequential patterns). Both are also importable from
shoal.ml. Names load lazily: worker processes import only the map-side kernels.
"""
from __future__ import annotations

from shoal.ml._lazy import lazy_exports

_EXPORTS = {"FPGrowth": "_fpgrowth", "PrefixSpan": "_prefixspan"}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS)
