"""Every shoal.ml estimator passes scikit-learn's estimator checks.

Not checked here (their input is not a numeric 2-D array, as for scikit-learn's own
LabelEncoder and FeatureHasher): StringIndexer (labels, 1-D), VectorAssembler (named columns),
Tokenizer and HashingTF (text / token lists), IDF (term-frequency matrices), FPGrowth
(transactions: lists of items), RegexTokenizer (text), RFormula (a formula over named columns),
ElementwiseProduct (its scaling vector fixes the width), IndexToString (indices to strings),
Word2Vec (token lists), MinHashLSH (sets: Spark rejects a row with no non-zero entry, which
the checks' data holds). Their behaviour is tested in test_features.py,
test_feature_transformers.py, test_word2vec.py and test_lsh.py.
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
    ml.GaussianMixture(n_components=2, random_state=0), ml.GaussianMixture(covariance_type="diag"),
    ml.BisectingKMeans(n_clusters=3, random_state=0),
    ml.IsotonicRegression(), ml.IsotonicRegression(increasing=False, out_of_bounds="clip"),
    ml.GeneralizedLinearRegression(), ml.GeneralizedLinearRegression(reg_param=0.1),
    ml.AFTSurvivalRegression(censor_col=None),   # a DataFrame in the checks has no censor column
    ml.OneVsRest(ml.LogisticRegression()), ml.OneVsRest(ml.GaussianNB(), parallelism=2),
    ml.FMRegressor(factor_size=2, max_iter=30, random_state=0),
    ml.FMClassifier(factor_size=2, random_state=0),
    ml.MultilayerPerceptronClassifier(hidden_layer_sizes=(6, 4), activation="relu", alpha=1e-3,
                                      max_iter=30, random_state=0),
    ml.LDA(n_components=3, max_iter=3, random_state=0),
    ml.VarianceThresholdSelector(), ml.VarianceThresholdSelector(threshold=1e-3, ddof=1),
    ml.ChiSqSelector(num_top_features=2), ml.UnivariateFeatureSelector(selection_threshold=2),
    ml.UnivariateFeatureSelector(label_type="continuous", selection_mode="fdr", selection_threshold=0.5),
    ml.BucketedRandomProjectionLSH(1.0, num_hash_tables=2, seed=0),
    ml.LDA(n_components=2, learning_method="batch", max_iter=3, random_state=0),
    ml.Binarizer(threshold=0.5), ml.RobustScaler(), ml.RobustScaler(with_centering=False, unit_variance=True),
    ml.VectorSlicer(indices=[0]), ml.DCT(), ml.DCT(inverse=True), ml.Interaction(), ml.VectorIndexer(),
    ml.TargetEncoder(), ml.TargetEncoder(smoothing="auto", handle_invalid="keep"), ml.FeatureHasher(num_features=32),
]


@parametrize_with_checks(ESTIMATORS)
def test_sklearn_compatible(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check(estimator)


def test_gaussian_nb_sample_weight_matches_sklearn():
    import numpy as np
    from sklearn.datasets import make_classification
    from sklearn.naive_bayes import GaussianNB as SkGaussianNB

    import shoal.ml as ml
    from shoal.ml._input import as_design_matrix
    X, y = make_classification(600, 4, n_informative=3, n_redundant=0, n_classes=3, random_state=0)
    w = np.random.default_rng(0).uniform(0, 2, len(y))
    theirs = SkGaussianNB().fit(X, y, sample_weight=w)
    dm = as_design_matrix(X, y, target="classification", block_rows=90, executor="local")
    for ours in (ml.GaussianNB().fit(X, y, sample_weight=w), ml.GaussianNB().fit(dm, sample_weight=w)):
        np.testing.assert_allclose(ours.theta_, theirs.theta_, rtol=1e-10)
        np.testing.assert_allclose(ours.var_, theirs.var_, rtol=1e-10)
        np.testing.assert_allclose(ours.class_count_, theirs.class_count_)
        np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))
