"""shoal.ml.neural_network: Spark's MultilayerPerceptronClassifier with scikit-learn's API.

Full-batch L-BFGS over per-block gradients folded across shoal's cluster. Also importable
from shoal.ml. Names load lazily: worker processes import only the map-side kernels.
"""
from __future__ import annotations

from shoal.ml._lazy import lazy_exports

_EXPORTS = {"MultilayerPerceptronClassifier": "_multilayer_perceptron"}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS)
