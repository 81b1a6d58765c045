"""shoal.ml.stat: Spark MLlib's statistics (pyspark.ml.stat) over shoal's blocks.

Correlation (Pearson, Spearman), ChiSquareTest and Summarizer: one or two passes of
per-block sums merged as a tree, on arrays, DataFrames, Arrow tables or a Dataset. Every
name is also importable from shoal.ml. Names load lazily.
"""
from __future__ import annotations

from shoal.ml._lazy import lazy_exports

_EXPORTS = {"Correlation": "_correlation", "ChiSquareTest": "_chi_square",
            "ChiSquareResult": "_chi_square", "Summarizer": "_summarizer"}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS)
