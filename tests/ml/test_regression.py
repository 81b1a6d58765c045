"""shoal.ml.regression: IsotonicRegression and GeneralizedLinearRegression against
scikit-learn (and known values), distributed over a shoal.data Dataset, and bad input."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import shoal.data as sd
import shoal.ml as ml
from shoal.exceptions import InvalidInputError
from shoal.ml import as_design_matrix
from tests.ml._cluster import cluster  # noqa: F401


def _blocks(X, y, rows=70):
    """A DesignMatrix of several in-process blocks: the fold across blocks is exercised."""
    return as_design_matrix(X, y, target="regression", block_rows=rows, executor="local")


# ---------------------------------------------------------------------------- isotonic

def _isotonic_data(n=600, seed=0):
    rng = np.random.default_rng(seed)
    x = np.round(rng.uniform(0, 10, n), 1)          # ties: rows pool by distinct value
    return x, np.log1p(x) + rng.normal(0, 0.3, n)


@pytest.mark.parametrize("increasing", [True, False])
@pytest.mark.parametrize("out_of_bounds", ["nan", "clip"])
def test_isotonic_matches_sklearn(increasing, out_of_bounds):
    from sklearn.isotonic import IsotonicRegression as SkIsotonic
    x, y = _isotonic_data()
    y = y if increasing else -y
    theirs = SkIsotonic(increasing=increasing, out_of_bounds=out_of_bounds, y_min=-1.5, y_max=2.2).fit(x, y)
    ours = ml.IsotonicRegression(increasing=increasing, out_of_bounds=out_of_bounds, y_min=-1.5,
                                 y_max=2.2).fit(_blocks(x[:, None], y))
    np.testing.assert_allclose(ours.X_thresholds_, theirs.X_thresholds_, rtol=1e-12)
    np.testing.assert_allclose(ours.y_thresholds_, theirs.y_thresholds_, rtol=1e-10, atol=1e-12)
    t = np.linspace(-1, 11, 97)
    np.testing.assert_allclose(ours.predict(t[:, None]), theirs.predict(t), rtol=1e-10, equal_nan=True)
    np.testing.assert_allclose(ours.transform(t[:, None]), theirs.transform(t), rtol=1e-10, equal_nan=True)


def test_isotonic_feature_index_picks_the_column_spark_names():
    x, y = _isotonic_data(200)
    X = np.column_stack([np.zeros_like(x), x])
    ours = ml.IsotonicRegression(feature_index=1).fit(X, y)
    plain = ml.IsotonicRegression().fit(x[:, None], y)
    np.testing.assert_allclose(ours.predict(X), plain.predict(x[:, None]))
    with pytest.raises(InvalidInputError, match="feature_index=2"):
        ml.IsotonicRegression(feature_index=2).fit(X, y)
    with pytest.raises(InvalidInputError, match="out_of_bounds"):
        ml.IsotonicRegression(out_of_bounds="extend").fit(X, y)
    with pytest.raises(InvalidInputError, match="outside the fitted range"):
        ml.IsotonicRegression(out_of_bounds="raise").fit(x[:, None], y).predict(np.array([[20.0]]))


def test_isotonic_on_a_dataset(cluster):  # noqa: F811
    from sklearn.isotonic import IsotonicRegression as SkIsotonic
    x, y = _isotonic_data(900, seed=1)
    ds = sd.from_pandas(pd.DataFrame({"x": x, "y": y, "id": np.arange(len(x))})).repartition(4)
    ours = ml.IsotonicRegression(out_of_bounds="clip").fit(ds, features=["x"], label="y")
    theirs = SkIsotonic(out_of_bounds="clip").fit(x, y)
    out = ours.predict(ds).to_pandas()
    np.testing.assert_allclose(out["prediction"], theirs.predict(x), rtol=1e-10)
    np.testing.assert_array_equal(out["id"], np.arange(len(x)))
    assert ours.score(ds, label="y") == pytest.approx(theirs.score(x, y), rel=1e-9)


def test_isotonic_rejects_a_string_label_naming_the_column(cluster):  # noqa: F811
    table = pa.table({"x": [1.0, 2.0, 3.0], "grade": ["a", "b", "c"]})
    with pytest.raises(InvalidInputError, match="grade"):
        ml.IsotonicRegression().fit(sd.from_arrow(table), features=["x"], label="grade")
    with pytest.raises(InvalidInputError, match="x"):
        ml.IsotonicRegression().fit(pd.DataFrame({"x": [1.0, np.nan, 2.0], "y": [1.0, 2.0, 3.0]}),
                                    label="y")


# ---------------------------------------------------------------------------- GLM

def _glm_data(n=1500, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    return rng, X, X @ np.array([0.3, -0.2, 0.1]) + 0.5


def _sklearn_glm(family):
    from sklearn.linear_model import GammaRegressor, LogisticRegression, PoissonRegressor, TweedieRegressor
    opts = dict(tol=1e-10, max_iter=1000)
    return {"poisson": PoissonRegressor(alpha=0, **opts), "gamma": GammaRegressor(alpha=0, **opts),
            "tweedie": TweedieRegressor(power=1.5, link="log", alpha=0, **opts),
            "binomial": LogisticRegression(C=np.inf, **opts)}[family]


def _glm_labels(family, rng, lin):
    n = len(lin)
    return {"poisson": lambda: rng.poisson(np.exp(lin)).astype(float),
            "gamma": lambda: rng.gamma(2.0, np.exp(lin) / 2.0),
            "tweedie": lambda: rng.poisson(np.exp(lin)) * rng.gamma(2.0, 0.5, n),
            "binomial": lambda: (rng.uniform(size=n) < 1 / (1 + np.exp(-lin))).astype(float)}[family]()


GLM_PARAMS = {"poisson": dict(family="poisson"), "gamma": dict(family="gamma", link="log"),
              "tweedie": dict(family="tweedie", variance_power=1.5, link_power=0),
              "binomial": dict(family="binomial")}


@pytest.mark.parametrize("family", sorted(GLM_PARAMS))
def test_glm_matches_sklearn(family):
    # maximum likelihood (scikit-learn's GLMs at alpha=0) to 1e-6
    rng, X, lin = _glm_data()
    y = _glm_labels(family, rng, lin)
    ours = ml.GeneralizedLinearRegression(**GLM_PARAMS[family]).fit(_blocks(X, y, 250))
    theirs = _sklearn_glm(family).fit(X, y)
    np.testing.assert_allclose(ours.coef_, np.ravel(theirs.coef_), atol=1e-6)
    assert ours.intercept_ == pytest.approx(float(np.ravel(theirs.intercept_)[0]), abs=1e-6)
    if family != "binomial":
        np.testing.assert_allclose(ours.predict(X), theirs.predict(X), rtol=1e-6)


def test_glm_l2_penalty_matches_sklearn_alpha():
    from sklearn.linear_model import PoissonRegressor
    rng, X, lin = _glm_data(seed=3)
    y = rng.poisson(np.exp(lin)).astype(float)
    ours = ml.GeneralizedLinearRegression(family="poisson", reg_param=0.05).fit(_blocks(X, y, 200))
    theirs = PoissonRegressor(alpha=0.05, tol=1e-10, max_iter=1000).fit(X, y)
    np.testing.assert_allclose(ours.coef_, theirs.coef_, atol=1e-6)
    assert ours.intercept_ == pytest.approx(theirs.intercept_, abs=1e-6)


def test_glm_gaussian_summary_is_ordinary_least_squares():
    # known values: OLS coefficients, sigma^2 (X'X)^-1 standard errors, t-test p-values, AIC
    from scipy import stats
    rng, X, lin = _glm_data(400, seed=5)
    y = lin + rng.normal(size=len(lin))
    m = ml.GeneralizedLinearRegression().fit(_blocks(X, y, 90))
    A = np.column_stack([X, np.ones(len(y))])
    beta, *_ = np.linalg.lstsq(A, y, rcond=None)
    resid = y - A @ beta
    df = len(y) - 4
    sigma2 = resid @ resid / df
    se = np.sqrt(np.diag(np.linalg.inv(A.T @ A)) * sigma2)
    np.testing.assert_allclose(np.append(m.coef_, m.intercept_), beta, rtol=1e-9)
    np.testing.assert_allclose(m.coefficient_standard_errors_, se, rtol=1e-8)
    np.testing.assert_allclose(m.p_values_, 2 * stats.t.sf(np.abs(beta / se), df), rtol=1e-6)
    assert m.dispersion_ == pytest.approx(sigma2, rel=1e-9)
    assert m.deviance_ == pytest.approx(resid @ resid, rel=1e-9)
    assert m.null_deviance_ == pytest.approx(((y - y.mean()) ** 2).sum(), rel=1e-9)
    n = len(y)
    aic = n * (np.log(2 * np.pi * (resid @ resid) / n) + 1) + 2 + 2 * 4
    assert m.aic_ == pytest.approx(aic, rel=1e-9)
    assert (m.degrees_of_freedom_, m.residual_degree_of_freedom_) == (4, df)


def test_glm_poisson_and_gamma_summaries_from_their_likelihoods():
    from scipy import stats
    rng, X, lin = _glm_data(800, seed=7)
    y = rng.poisson(np.exp(lin)).astype(float)
    m = ml.GeneralizedLinearRegression(family="poisson").fit(_blocks(X, y, 150))
    mu = m.predict(X)
    assert m.aic_ == pytest.approx(-2 * stats.poisson.logpmf(y, mu).sum() + 2 * 4, rel=1e-9)
    A = np.column_stack([X, np.ones(len(y))])
    se = np.sqrt(np.diag(np.linalg.inv((A * mu[:, None]).T @ A)))    # Fisher information, log link
    np.testing.assert_allclose(m.coefficient_standard_errors_, se, rtol=1e-6)
    np.testing.assert_allclose(m.p_values_, 2 * stats.norm.sf(np.abs(np.append(m.coef_, m.intercept_) / se)),
                               rtol=1e-5)
    assert m.dispersion_ == 1.0

    y = rng.gamma(2.0, np.exp(lin) / 2.0)
    m = ml.GeneralizedLinearRegression(family="gamma", link="log").fit(_blocks(X, y, 150))
    mu = m.predict(X)
    disp = m.deviance_ / len(y)
    ll = stats.gamma.logpdf(y, a=1 / disp, scale=mu * disp).sum()
    assert m.aic_ == pytest.approx(-2 * ll + 2 + 2 * 4, rel=1e-9)
    assert m.dispersion_ == pytest.approx(((y - mu) ** 2 / mu ** 2).sum() / (len(y) - 4), rel=1e-9)


@pytest.mark.parametrize("link", ["probit", "cloglog"])
def test_glm_binomial_links_reach_the_likelihood_maximum(link):
    from scipy import optimize, stats
    rng, X, lin = _glm_data(1000, seed=11)
    y = (rng.uniform(size=len(lin)) < stats.norm.cdf(lin)).astype(float)
    m = ml.GeneralizedLinearRegression(family="binomial", link=link).fit(_blocks(X, y, 200))
    A = np.column_stack([X, np.ones(len(y))])
    inv = stats.norm.cdf if link == "probit" else (lambda e: -np.expm1(-np.exp(e)))

    def nll(b):
        mu = np.clip(inv(A @ b), 1e-15, 1 - 1e-15)
        return -(y * np.log(mu) + (1 - y) * np.log1p(-mu)).sum()
    best = optimize.minimize(nll, np.zeros(4), method="BFGS", options={"gtol": 1e-9}).x
    np.testing.assert_allclose(np.append(m.coef_, m.intercept_), best, atol=1e-4)
    assert nll(np.append(m.coef_, m.intercept_)) <= nll(best) + 1e-8


def test_glm_on_a_dataset(cluster):  # noqa: F811
    from sklearn.linear_model import PoissonRegressor
    rng, X, lin = _glm_data(1200, seed=2)
    y = rng.poisson(np.exp(lin)).astype(float)
    df = pd.DataFrame(X, columns=["a", "b", "c"]).assign(count=y, id=np.arange(len(y)))
    ds = sd.from_pandas(df).repartition(4)
    m = ml.GeneralizedLinearRegression(family="poisson").fit(ds, features=["a", "b", "c"], label="count")
    theirs = PoissonRegressor(alpha=0, tol=1e-10, max_iter=1000).fit(X, y)
    np.testing.assert_allclose(m.coef_, theirs.coef_, atol=1e-6)
    out = m.predict(ds).to_pandas()
    np.testing.assert_allclose(out["prediction"], theirs.predict(X), rtol=1e-6)
    np.testing.assert_array_equal(out["id"], np.arange(len(y)))


def test_glm_rejects_bad_labels_and_links_naming_them():
    X = np.arange(12.0).reshape(6, 2)
    frame = pd.DataFrame(X, columns=["a", "b"]).assign(claims=[0.0, 1.0, -2.0, 3.0, 1.0, 0.0])
    with pytest.raises(InvalidInputError, match="'claims'.*>= 0"):
        ml.GeneralizedLinearRegression(family="poisson").fit(frame, label="claims")
    with pytest.raises(InvalidInputError, match="'claims'.*> 0"):
        ml.GeneralizedLinearRegression(family="gamma").fit(frame, label="claims")
    with pytest.raises(InvalidInputError, match="'claims'.*in \\[0, 1\\]"):
        ml.GeneralizedLinearRegression(family="binomial").fit(frame, label="claims")
    with pytest.raises(InvalidInputError, match="link='logit' is not a link of the poisson family"):
        ml.GeneralizedLinearRegression(family="poisson", link="logit").fit(frame, label="claims")
    with pytest.raises(InvalidInputError, match="family='negbin'"):
        ml.GeneralizedLinearRegression(family="negbin").fit(frame, label="claims")
    with pytest.raises(InvalidInputError, match="variance_power"):
        ml.GeneralizedLinearRegression(family="tweedie", variance_power=0.5).fit(frame, label="claims")
    with pytest.raises(InvalidInputError, match="claims"):
        ml.GeneralizedLinearRegression().fit(frame.assign(claims=["x"] * 6), label="claims")


# ---------------------------------------------------------------------------- AFT survival

# Spark's documented example (examples/.../AFTSurvivalRegressionExample): its fit prints
# coefficients [-0.49631114666506776, 0.1984443769993409], intercept 2.6380946151, scale
# 1.5472345574364692, and the first row's 0.3 / 0.6 quantiles [1.1603238947151593, 4.995456010274735]
SPARK_AFT_X = np.array([[1.560, -0.605], [0.346, 2.158], [1.380, 0.231], [0.520, 1.151], [0.795, -0.226]])
SPARK_AFT_T = np.array([1.218, 2.949, 3.627, 0.273, 4.199])
SPARK_AFT_CENSOR = np.array([1.0, 0.0, 0.0, 1.0, 0.0])


def test_aft_matches_sparks_documented_example():
    m = ml.AFTSurvivalRegression(quantile_probabilities=[0.3, 0.6], tol=1e-10).fit(
        SPARK_AFT_X, SPARK_AFT_T, censor=SPARK_AFT_CENSOR)
    np.testing.assert_allclose(m.coef_, [-0.49631114666506776, 0.1984443769993409], atol=1e-4)
    assert m.intercept_ == pytest.approx(2.6380946151, abs=1e-4)
    assert m.scale_ == pytest.approx(1.5472345574364692, abs=1e-4)
    np.testing.assert_allclose(m.predict_quantiles(SPARK_AFT_X[:1])[0],
                               [1.1603238947151593, 4.995456010274735], rtol=1e-4)


def _weibull_data(n, seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2))
    t = np.exp(X @ np.array([0.5, -0.3]) + 1.0 + 0.7 * np.log(rng.exponential(size=n)))
    cens = rng.exponential(scale=np.exp(1.5), size=n)
    return X, np.minimum(t, cens), (t <= cens).astype(float)


def test_aft_recovers_a_censored_weibull_model_on_a_dataset(cluster):  # noqa: F811
    X, t, event = _weibull_data(3000, 0)
    df = pd.DataFrame(X, columns=["a", "b"]).assign(time=t, censor=event, id=np.arange(len(t)))
    ds = sd.from_pandas(df).repartition(4)
    # the censor column is read by its name and kept out of the default features
    assert list(ml.AFTSurvivalRegression(max_iter=5).fit(ds, label="time").feature_names_in_) == ["a", "b", "id"]
    m = ml.AFTSurvivalRegression(tol=1e-10).fit(ds, features=["a", "b"], label="time")
    np.testing.assert_allclose(m.coef_, [0.5, -0.3], atol=0.05)
    assert m.intercept_ == pytest.approx(1.0, abs=0.06) and m.scale_ == pytest.approx(0.7, abs=0.04)
    local = ml.AFTSurvivalRegression(tol=1e-10).fit(X, t, censor=event)
    np.testing.assert_allclose(m.coef_, local.coef_, atol=1e-6)
    out = m.predict(ds).to_pandas()
    np.testing.assert_allclose(out["prediction"], np.exp(X @ m.coef_ + m.intercept_), rtol=1e-10)
    np.testing.assert_array_equal(out["id"], np.arange(len(t)))


def test_aft_rejects_bad_times_and_censor_values_naming_the_column():
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0], "days": [1.0, 0.0, 2.0], "censor": [1.0, 0.0, 1.0]})
    with pytest.raises(InvalidInputError, match="'days'.*> 0"):
        ml.AFTSurvivalRegression().fit(frame, label="days")
    with pytest.raises(InvalidInputError, match="'censor'.*1 \\(event\\) or 0"):
        ml.AFTSurvivalRegression().fit(frame.assign(days=[1.0, 2.0, 3.0], censor=[1.0, 2.0, 0.0]), label="days")
    with pytest.raises(InvalidInputError, match="censor column 'died'.*available columns"):
        ml.AFTSurvivalRegression(censor_col="died").fit(frame, label="days")
    with pytest.raises(InvalidInputError, match="censor= has 2 values"):
        ml.AFTSurvivalRegression().fit(np.ones((3, 1)), np.ones(3), censor=[1, 0])


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("make", [lambda: ml.IsotonicRegression(feature_index=1),
                                  lambda: ml.GeneralizedLinearRegression(family="gamma", link="log"),
                                  lambda: ml.AFTSurvivalRegression(censor_col=None, max_iter=20)])
def test_save_and_load_predict_the_same(make, tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 3))
    y = np.exp(0.3 * X[:, 1]) + 0.1
    model = make().fit(X, y)
    model.save(tmp_path / "m")
    np.testing.assert_array_equal(ml.load(tmp_path / "m").predict(X), model.predict(X))


def test_glm_offset_is_a_rate_model_and_weights_are_repeated_rows():
    from sklearn.linear_model import PoissonRegressor
    rng, X, lin = _glm_data(1000, seed=13)
    exposure = rng.uniform(0.5, 3.0, len(lin))
    y = rng.poisson(exposure * np.exp(lin)).astype(float)
    ours = ml.GeneralizedLinearRegression(family="poisson").fit(X, y, offset=np.log(exposure))
    # known equivalence: log-link Poisson with offset log(e) is the rate y/e weighted by e
    theirs = PoissonRegressor(alpha=0, tol=1e-10, max_iter=1000).fit(X, y / exposure, sample_weight=exposure)
    np.testing.assert_allclose(ours.coef_, theirs.coef_, atol=1e-6)
    assert ours.intercept_ == pytest.approx(theirs.intercept_, abs=1e-6)
    # the null model with an offset is fitted (its intercept is log(sum y / sum e) in closed form)
    from sklearn.metrics import mean_poisson_deviance
    null_mu = exposure * y.sum() / exposure.sum()
    assert ours.null_deviance_ == pytest.approx(mean_poisson_deviance(y, null_mu) * len(y), rel=1e-8)

    counts = rng.integers(1, 4, len(lin))
    yg = rng.gamma(2.0, np.exp(lin) / 2.0)
    weighted = ml.GeneralizedLinearRegression(family="gamma", link="log").fit(X, yg, sample_weight=counts)
    repeated = ml.GeneralizedLinearRegression(family="gamma", link="log").fit(np.repeat(X, counts, axis=0),
                                                                            np.repeat(yg, counts))
    np.testing.assert_allclose(weighted.coef_, repeated.coef_, atol=1e-8)
    assert weighted.deviance_ == pytest.approx(repeated.deviance_, rel=1e-9)


def test_glm_weight_and_offset_columns_of_a_dataset(cluster):  # noqa: F811
    rng, X, lin = _glm_data(900, seed=17)
    exposure = rng.uniform(0.5, 3.0, len(lin))
    y = rng.poisson(exposure * np.exp(lin)).astype(float)
    w = rng.uniform(0.5, 2.0, len(lin))
    df = pd.DataFrame(X, columns=["a", "b", "c"]).assign(n=y, log_e=np.log(exposure), w=w)
    ds = sd.from_pandas(df).repartition(3)
    m = ml.GeneralizedLinearRegression(family="poisson", weight_col="w", offset_col="log_e").fit(ds, label="n")
    assert list(m.feature_names_in_) == ["a", "b", "c"]          # weight and offset are not features
    local = ml.GeneralizedLinearRegression(family="poisson").fit(X, y, sample_weight=w, offset=np.log(exposure))
    np.testing.assert_allclose(m.coef_, local.coef_, atol=1e-9)
    assert m.aic_ == pytest.approx(local.aic_, rel=1e-9)
    with pytest.raises(InvalidInputError, match="weight column 'w'.*>= 0"):
        ml.GeneralizedLinearRegression(weight_col="w").fit(df.assign(w=-w), label="n")
    with pytest.raises(InvalidInputError, match="'exposure' \\(offset_col=\\) is missing"):
        ml.GeneralizedLinearRegression(offset_col="exposure").fit(ds, label="n")


def test_isotonic_weights_match_sklearn_and_a_weight_column(cluster):  # noqa: F811
    from sklearn.isotonic import IsotonicRegression as SkIsotonic
    x, y = _isotonic_data(500, seed=4)
    w = np.random.default_rng(4).uniform(0, 2, len(x))
    w[::7] = 0.0                                             # zero-weight rows drop out
    theirs = SkIsotonic().fit(x, y, sample_weight=w)
    ours = ml.IsotonicRegression().fit(x[:, None], y, sample_weight=w)
    np.testing.assert_allclose(ours.X_thresholds_, theirs.X_thresholds_)
    np.testing.assert_allclose(ours.y_thresholds_, theirs.y_thresholds_, rtol=1e-10)
    ds = sd.from_pandas(pd.DataFrame({"x": x, "y": y, "w": w})).repartition(3)
    on_ds = ml.IsotonicRegression(weight_col="w").fit(ds, label="y")
    assert list(on_ds.feature_names_in_) == ["x"]
    np.testing.assert_allclose(on_ds.y_thresholds_, theirs.y_thresholds_, rtol=1e-10)
    with pytest.raises(InvalidInputError, match="weight column 'w' holds negative"):
        ml.IsotonicRegression(weight_col="w").fit(ds.map_batches(lambda t: t.assign(w=-t["w"]),
                                                                 batch_format="pandas"), label="y")
