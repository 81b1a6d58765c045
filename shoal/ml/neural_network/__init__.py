"""shoal.ml.neural_network: Spark's MultilayerPerceptronClassifier with scikit-learn's API.

Full-batch L-BFGS over per-block gradients folded across shoal's cluster. Also importable
from shoal.ml. Names load lazily: worker processes import only the map-side kernels.
"""
from __future__ import annotations

import importlib

_EXPORTS = {"MultilayerPerceptronClassifier": "_multilayer_perceptron"}


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'shoal.ml.neural_network' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"shoal.ml.neural_network.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = sorted(_EXPORTS)
