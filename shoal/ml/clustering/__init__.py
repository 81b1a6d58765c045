"""shoal.ml.clustering: Spark MLlib's clustering beyond KMeans, with scikit-learn's API.

GaussianMixture (EM, full or diagonal covariances, restarts), BisectingKMeans and
PowerIterationClustering (on a graph's edges) and LDA (topic models by online variational
Bayes; also named LatentDirichletAllocation as in scikit-learn) fit on
per-block sufficient statistics across shoal's cluster, like shoal.ml.KMeans (re-exported
here). Every name is also importable from shoal.ml. Names load lazily: worker processes
import only the map-side kernels.
"""
from __future__ import annotations

from shoal.ml._lazy import lazy_exports

_EXPORTS = {"GaussianMixture": "_gaussian_mixture", "BisectingKMeans": "_bisecting_kmeans",
            "PowerIterationClustering": "_power_iteration", "LDA": "_lda",
            "LatentDirichletAllocation": "_lda", "KMeans": "shoal.ml._kmeans"}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS)
