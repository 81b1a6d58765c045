"""shoal.ml.stat: Spark MLlib's statistics (pyspark.ml.stat) over shoal's blocks.

Correlation (Pearson, Spearman), ChiSquareTest and Summarizer: one or two passes of
per-block sums merged as a tree, on arrays, DataFrames, Arrow tables or a Dataset. Every
name is also importable from shoal.ml. Names load lazily.
"""
from __future__ import annotations

import importlib

_EXPORTS = {"Correlation": "_correlation", "ChiSquareTest": "_chi_square",
            "ChiSquareResult": "_chi_square", "Summarizer": "_summarizer"}


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'shoal.ml.stat' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"shoal.ml.stat.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = sorted(_EXPORTS)
