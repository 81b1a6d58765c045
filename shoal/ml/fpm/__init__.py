"""shoal.ml.fpm: frequent pattern mining (Spark MLlib's pyspark.ml.fpm).

FPGrowth (frequent itemsets and association rules, parallel FP-growth across shoal's
cluster) and PrefixSpan (frequent sequential patterns). Both are also importable from
shoal.ml. Names load lazily: worker processes import only the map-side kernels.
"""
from __future__ import annotations

import importlib

_EXPORTS = {"FPGrowth": "_fpgrowth", "PrefixSpan": "_prefixspan"}


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'shoal.ml.fpm' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"shoal.ml.fpm.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = sorted(_EXPORTS)
