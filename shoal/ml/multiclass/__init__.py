"""shoal.ml.multiclass: multiclass strategies over shoal.ml's binary classifiers (Spark's OneVsRest).

Also importable from shoal.ml. Names load lazily: worker processes import only the
map-side kernels.
"""
from __future__ import annotations

import importlib

_EXPORTS = {"OneVsRest": "_one_vs_rest"}


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'shoal.ml.multiclass' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"shoal.ml.multiclass.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = sorted(_EXPORTS)
