"""shoal.ml.clustering: Spark MLlib's clustering beyond KMeans, with scikit-learn's API.

GaussianMixture (EM, full or diagonal covariances, restarts), BisectingKMeans and
PowerIterationClustering (on a graph's edges) and LDA (topic models by online variational
Bayes; also named LatentDirichletAllocation as in scikit-learn) fit on
per-block sufficient statistics across shoal's cluster, like shoal.ml.KMeans (re-exported
here). Every name is also importable from shoal.ml. Names load lazily: worker processes
import only the map-side kernels.
"""
from __future__ import annotations

import importlib

_EXPORTS = {"GaussianMixture": "_gaussian_mixture", "BisectingKMeans": "_bisecting_kmeans",
            "PowerIterationClustering": "_power_iteration", "LDA": "_lda",
            "LatentDirichletAllocation": "_lda"}


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        if name == "KMeans":
            from shoal.ml._kmeans import KMeans
            return KMeans
        raise AttributeError(f"module 'shoal.ml.clustering' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"shoal.ml.clustering.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS) | {"KMeans"})


__all__ = sorted(set(_EXPORTS) | {"KMeans"})
