"""A distributed scikit-learn-style pipeline: StandardScaler + LogisticRegression on shoal.

    python examples/ml_pipeline.py [rows]

The data is split into blocks held in shoal's object store; each L-BFGS step sends only
the coefficients to the workers, which compute the loss and gradient of their blocks.
"""
import sys
import time

import numpy as np

import shoal
import shoal.ml as ml


def make_data(rows: int, features: int = 20, seed: int = 0):
    """Features on different scales and a noisy linear decision rule."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, features)) * rng.uniform(0.1, 100.0, features)
    w = rng.standard_normal(features) / X.std(axis=0)
    y = (X @ w + rng.standard_normal(rows) > 0).astype(np.int64)
    return X, y


def main():
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 3_000_000
    shoal.init(num_cpus=2)
    X, y = make_data(rows)
    cut = int(0.8 * rows)
    X_train, y_train, X_test, y_test = X[:cut], y[:cut], X[cut:], y[cut:]

    pipe = ml.Pipeline([("scale", ml.StandardScaler()), ("logreg", ml.LogisticRegression())])
    start = time.perf_counter()
    pipe.fit(X_train, y_train)
    fit_s = time.perf_counter() - start

    accuracy = ml.metrics.accuracy_score(y_test, pipe.predict(X_test))
    print(f"StandardScaler + LogisticRegression on {cut:,} x {X.shape[1]} rows: "
          f"fit {fit_s:.2f} s, test accuracy {accuracy:.4f}")

    # A random forest on the same data: the blocks are binned once on actors that keep
    # them, and every tree grows in the same passes (one pass per level).
    forest = ml.RandomForestClassifier(n_estimators=20, max_depth=8, random_state=0)
    start = time.perf_counter()
    forest.fit(X_train, y_train)
    fit_s = time.perf_counter() - start
    accuracy = ml.metrics.accuracy_score(y_test, forest.predict(X_test))
    top = np.argsort(forest.feature_importances_)[::-1][:3]
    print(f"RandomForestClassifier (20 trees, depth 8): fit {fit_s:.2f} s, "
          f"test accuracy {accuracy:.4f}, most important features {top.tolist()}")
    shoal.shutdown()


if __name__ == "__main__":
    main()
