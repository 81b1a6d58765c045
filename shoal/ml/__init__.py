"""shoal.ml: Spark MLlib's algorithms with scikit-learn's API, trained across shoal's cluster.

Every estimator, transformer and Pipeline fits the same way: ``fit(X, y)`` on NumPy arrays,
``fit(table, features=[...], label="y")`` on a shoal.data Dataset, a pandas or Polars
DataFrame or an Arrow Table (``y="column"`` means ``label="column"``; unknown columns are an
error listing the available ones). On a Dataset, ``predict`` returns the Dataset with a
``prediction`` column appended and ``transform`` the Dataset with its output columns; on
arrays both return arrays.
Names load lazily so that worker processes, which import only the map-side kernels,
never pay for scikit-learn's import.
"""
from __future__ import annotations

import importlib
import importlib.util

from shoal.exceptions import MissingDependencyError

MissingDependencyError.require("shoal.ml", "ml", "sklearn", "scipy", "numba")

_EXPORTS = {
    # input layer
    "DesignMatrix": "_input", "as_design_matrix": "_input", "set_executor": "_executor",
    "use_executor": "_executor", "NotFittedError": "_base",
    # linear models
    "LinearRegression": "_linear", "Ridge": "_linear", "Lasso": "_linear", "ElasticNet": "_linear",
    "LogisticRegression": "_linear", "LinearSVC": "_linear",
    # naive Bayes, clustering, decomposition
    "GaussianNB": "_naive_bayes", "MultinomialNB": "_naive_bayes", "BernoulliNB": "_naive_bayes",
    "KMeans": "_kmeans", "PCA": "_pca",
    # clustering (shoal.ml.clustering) and frequent patterns (shoal.ml.fpm)
    "GaussianMixture": "clustering", "BisectingKMeans": "clustering",
    "PowerIterationClustering": "clustering", "LDA": "clustering",
    "LatentDirichletAllocation": "clustering",
    "FPGrowth": "fpm", "PrefixSpan": "fpm",
    # regression beyond the linear models (shoal.ml.regression)
    "IsotonicRegression": "regression", "GeneralizedLinearRegression": "regression",
    "AFTSurvivalRegression": "regression",
    # factorization machines (shoal.ml.factorization)
    "FMClassifier": "factorization", "FMRegressor": "factorization",
    # neural networks (shoal.ml.neural_network)
    "MultilayerPerceptronClassifier": "neural_network",
    # multiclass strategies (shoal.ml.multiclass)
    "OneVsRest": "multiclass",
    # statistics (shoal.ml.stat)
    "Correlation": "stat", "ChiSquareTest": "stat", "Summarizer": "stat",
    # recommendation
    "ALS": "recommendation",
    # features
    "StandardScaler": "_scalers", "MinMaxScaler": "_scalers", "MaxAbsScaler": "_scalers",
    "Normalizer": "_scalers", "Imputer": "_scalers", "PolynomialExpansion": "_scalers",
    "Binarizer": "_scalers", "RobustScaler": "_scalers",
    "Bucketizer": "_discretize", "QuantileDiscretizer": "_discretize",
    "OneHotEncoder": "_categorical", "StringIndexer": "_categorical", "VectorAssembler": "_categorical",
    "Tokenizer": "_text", "RegexTokenizer": "_text", "HashingTF": "_text", "IDF": "_text",
    "CountVectorizer": "_count_vectorizer", "NGram": "_token_filters", "StopWordsRemover": "_token_filters", "VarianceThresholdSelector": "_selectors",
    "VectorSlicer": "_vectors", "ElementwiseProduct": "_vectors", "DCT": "_vectors",
    "Interaction": "_vectors", "VectorIndexer": "_vectors", "FeatureHasher": "_feature_hasher",
    "TargetEncoder": "_target_encoder", "IndexToString": "_index_to_string", "RFormula": "_rformula",
    "Word2Vec": "_word2vec", "MinHashLSH": "_lsh", "BucketedRandomProjectionLSH": "_lsh",
    "ChiSqSelector": "_univariate_selectors", "UnivariateFeatureSelector": "_univariate_selectors",
    # workflow
    "Pipeline": "_pipeline", "make_pipeline": "_pipeline",
    "CrossValidator": "_tuning", "TrainValidationSplit": "_tuning", "ParamGridBuilder": "_tuning",
    "save": "_persist", "load": "_persist", "metrics": "metrics",
    "RegressionEvaluator": "evaluation", "BinaryClassificationEvaluator": "evaluation",
    "MulticlassClassificationEvaluator": "evaluation", "ClusteringEvaluator": "evaluation",
    "RankingEvaluator": "evaluation", "MultilabelClassificationEvaluator": "evaluation",
    # trees and ensembles (written alongside; optional until their modules exist)
    "DecisionTreeClassifier": "tree", "DecisionTreeRegressor": "tree",
    "RandomForestClassifier": "ensemble", "RandomForestRegressor": "ensemble",
    "GradientBoostingClassifier": "ensemble", "GradientBoostingRegressor": "ensemble",
}


def _available(name: str) -> bool:
    try:
        __getattr__(name)
        return True
    except (AttributeError, ImportError):
        return False


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'shoal.ml' has no attribute {name!r}")
    mod = importlib.import_module(f"shoal.ml.{module}")
    value = mod if name == module else getattr(mod, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


def _module_exists(module: str) -> bool:
    return importlib.util.find_spec(f"shoal.ml.{module}") is not None


__all__ = sorted(n for n, m in _EXPORTS.items() if _module_exists(m))
