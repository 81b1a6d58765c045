"""Every shoal.ml estimator passes scikit-learn's estimator checks.

Not checked here (their input is not a numeric 2-D array, as for scikit-learn's own
LabelEncoder and FeatureHasher): StringIndexer (labels, 1-D), VectorAssembler (named columns),
Tokenizer and HashingTF (text / token lists), IDF (term-frequency matrices). Their behaviour
is tested in test_features.py.
"""
import warnings

import numpy as np
from sklearn.utils.estimator_checks import parametrize_with_checks

import shoal.ml as ml

ESTIMATORS = [
    ml.LinearRegression(), ml.Ridge(), ml.Lasso(), ml.ElasticNet(), ml.LogisticRegression(),
    ml.LinearSVC(), ml.GaussianNB(), ml.MultinomialNB(), ml.BernoulliNB(),
    ml.KMeans(n_clusters=3, random_state=0), ml.PCA(), ml.StandardScaler(), ml.MinMaxScaler(),
    ml.MaxAbsScaler(), ml.Normalizer(), ml.Imputer(), ml.PolynomialExpansion(),
    ml.Bucketizer(splits=[-np.inf, 0.0, 1.0, np.inf]), ml.QuantileDiscretizer(num_buckets=3),
    ml.OneHotEncoder(handle_unknown="ignore"),
]


@parametrize_with_checks(ESTIMATORS)
def test_sklearn_compatible(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check(estimator)
