"""shoal.ml vs Spark MLlib (local[N]) vs scikit-learn on the same Parquet data.

Data: N x 20 float features, a binary label (``label``) and a continuous target
(``target``), generated once and written as Parquet (train 80% / test 20%);
every system reads the Parquet files. Algorithms: LogisticRegression (20
iterations), LinearRegression, KMeans (k=10, 20 iterations), RandomForest
(20 trees, depth 8), GradientBoosting (20 rounds, depth 5). Fit time excludes
starting Spark's session and reading the data (Spark's DataFrame is cached and
counted before the clock starts); quality is measured on the test split: AUC
for classifiers, RMSE for regression, inertia (sum of squared distances to the
nearest center) for KMeans.

    .venv/bin/python benchmarks/ml.py            # 1,000,000 rows
    .venv/bin/python benchmarks/ml.py --quick    # 200,000 rows, fewer algorithms
    .venv/bin/python benchmarks/ml.py --large    # 10,000,000 rows

Needs ``pyspark`` (and Java 17) for the Spark column: it is in the ``bench`` extra.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
import traceback

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

N_FEATURES = 20
FEATURES = [f"f{i}" for i in range(N_FEATURES)]
ALGORITHMS = ["logistic", "linear", "kmeans", "random_forest", "gbt"]
QUICK_ALGORITHMS = ["logistic", "kmeans", "random_forest", "gbt"]
METRIC = {"logistic": "AUC", "linear": "RMSE", "kmeans": "inertia", "random_forest": "AUC", "gbt": "AUC"}
HIGHER_IS_BETTER = {"AUC": True, "RMSE": False, "inertia": False}


# ----------------------------------------------------------------------------- data

def make_data(folder: str, rows: int) -> tuple[str, str]:
    """Write train/test Parquet once per size; later runs reuse them."""
    train, test = os.path.join(folder, f"train-{rows}.parquet"), os.path.join(folder, f"test-{rows}.parquet")
    if os.path.exists(train) and os.path.exists(test):
        return train, test
    from sklearn.datasets import make_classification
    X, y = make_classification(rows, N_FEATURES, n_informative=10, n_redundant=4, flip_y=0.03,
                               class_sep=0.8, random_state=0)
    rng = np.random.default_rng(1)
    w = rng.normal(size=N_FEATURES)
    target = X @ w + 0.3 * np.sin(3 * X[:, 0]) + rng.normal(scale=0.5, size=rows)
    cut = int(rows * 0.8)
    for path, sl in ((train, slice(0, cut)), (test, slice(cut, rows))):
        cols = {name: X[sl, i] for i, name in enumerate(FEATURES)}
        cols["label"] = y[sl].astype(np.int64)
        cols["target"] = target[sl]
        pq.write_table(pa.table(cols), path + ".tmp", row_group_size=1 << 17)
        os.replace(path + ".tmp", path)
    return train, test


def read_numpy(path: str):
    t = pq.read_table(path)
    X = np.column_stack([t.column(c).to_numpy() for c in FEATURES])
    return X, t.column("label").to_numpy(), t.column("target").to_numpy()


def auc(y, score) -> float:
    from sklearn.metrics import roc_auc_score
    return float(roc_auc_score(y, score))


def rmse(y, pred) -> float:
    return float(np.sqrt(np.mean((np.asarray(y) - np.asarray(pred)) ** 2)))


def inertia(X, centers) -> float:
    centers = np.asarray(centers)
    d = (X * X).sum(1)[:, None] - 2 * X @ centers.T + (centers * centers).sum(1)[None, :]
    return float(np.maximum(d.min(axis=1), 0).sum())


# ----------------------------------------------------------------------------- systems

def run_numpy_system(name: str, algo: str, train, test, cpus: int):
    """shoal.ml or scikit-learn: the same estimator calls, different modules."""
    X, y, t = train
    Xt, yt, tt = test
    if name == "shoal":
        import shoal.ml as m
        models = {
            "logistic": lambda: m.LogisticRegression(max_iter=20),
            "linear": lambda: m.LinearRegression(),
            "kmeans": lambda: m.KMeans(10, max_iter=20, random_state=0),
            "random_forest": lambda: m.RandomForestClassifier(20, max_depth=8, random_state=0),
            "gbt": lambda: m.GradientBoostingClassifier(20, max_depth=5, random_state=0),
        }
    else:
        from sklearn import cluster, ensemble, linear_model
        models = {
            "logistic": lambda: linear_model.LogisticRegression(max_iter=20),
            "linear": lambda: linear_model.LinearRegression(),
            "kmeans": lambda: cluster.KMeans(10, max_iter=20, n_init=1, random_state=0),
            "random_forest": lambda: ensemble.RandomForestClassifier(20, max_depth=8, n_jobs=cpus,
                                                                     random_state=0),
            "gbt": lambda: ensemble.GradientBoostingClassifier(n_estimators=20, max_depth=5, random_state=0),
        }
    est = models[algo]()
    target = t if algo == "linear" else None if algo == "kmeans" else y
    start = time.perf_counter()
    est.fit(X, target) if target is not None else est.fit(X)
    fit_s = time.perf_counter() - start
    if algo == "linear":
        return fit_s, rmse(tt, est.predict(Xt))
    if algo == "kmeans":
        return fit_s, inertia(Xt, est.cluster_centers_)
    return fit_s, auc(yt, est.predict_proba(Xt)[:, 1])


def start_spark(cpus: int, memory: str):
    from pyspark.sql import SparkSession
    return (SparkSession.builder.master(f"local[{cpus}]").appName("shoal-bench")
            .config("spark.driver.memory", memory).config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.sql.shuffle.partitions", str(cpus * 2)).getOrCreate())


def spark_frames(spark, train_path, test_path):
    from pyspark.ml.feature import VectorAssembler
    asm = VectorAssembler(inputCols=FEATURES, outputCol="features")
    tr = asm.transform(spark.read.parquet(train_path)).select("features", "label", "target").cache()
    te = asm.transform(spark.read.parquet(test_path)).select("features", "label", "target").cache()
    tr.count(), te.count()     # materialize the cache before any clock starts
    return tr, te


def run_spark(algo: str, tr, te, test_np):
    from pyspark.ml import classification as C, clustering as K, regression as R
    from pyspark.ml.functions import vector_to_array
    models = {
        "logistic": lambda: C.LogisticRegression(maxIter=20, labelCol="label"),
        "linear": lambda: R.LinearRegression(labelCol="target"),
        "kmeans": lambda: K.KMeans(k=10, maxIter=20, seed=0),
        "random_forest": lambda: C.RandomForestClassifier(numTrees=20, maxDepth=8, labelCol="label", seed=0),
        "gbt": lambda: C.GBTClassifier(maxIter=20, maxDepth=5, labelCol="label", seed=0),
    }
    est = models[algo]()
    start = time.perf_counter()
    model = est.fit(tr)
    fit_s = time.perf_counter() - start
    Xt, yt, tt = test_np
    if algo == "kmeans":
        return fit_s, inertia(Xt, np.array(model.clusterCenters()))
    pred = model.transform(te)
    if algo == "linear":
        p = pred.select("target", "prediction").toPandas()
        return fit_s, rmse(p["target"], p["prediction"])
    p = pred.select("label", vector_to_array("probability")[1].alias("p1")).toPandas()
    return fit_s, auc(p["label"], p["p1"])


# ----------------------------------------------------------------------------- table

def fmt_metric(metric: str, v) -> str:
    if v is None:
        return "-"
    return f"{v:.4f}" if metric in ("AUC", "RMSE") else f"{v:.4g}"


def print_table(rows: list[dict], n_rows: int, cpus: int) -> None:
    print(f"\nshoal.ml vs Spark MLlib (local[{cpus}]) vs scikit-learn — {n_rows:,} x {N_FEATURES}, "
          f"fit seconds (test-split quality)\n")
    head = (f"{'algorithm':<15}{'shoal s':>9}{'Spark s':>9}{'sklearn s':>10}{'x vs Spark':>11}"
            f"{'x vs sklearn':>13}   {'metric':<8}{'shoal':>10}{'Spark':>10}{'sklearn':>10}")
    print(head)
    print("-" * len(head))
    for r in rows:
        s, k, l = r.get("shoal"), r.get("spark"), r.get("sklearn")

        def t(x):
            return f"{x[0]:.2f}" if x else "-"

        def ratio(other):
            return f"{other[0] / s[0]:.1f}x" if s and other else "-"
        m = METRIC[r["algo"]]
        print(f"{r['algo']:<15}{t(s):>9}{t(k):>9}{t(l):>10}{ratio(k):>11}{ratio(l):>13}   {m:<8}"
              f"{fmt_metric(m, s and s[1]):>10}{fmt_metric(m, k and k[1]):>10}{fmt_metric(m, l and l[1]):>10}")
    print("\nx vs Spark / x vs sklearn: the other system's fit time divided by shoal's (higher is better).")
    for r in rows:
        for note in r.get("notes", []):
            print(f"note: {r['algo']}: {note}")


# ----------------------------------------------------------------------------- main

def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="200,000 rows, fewer algorithms")
    ap.add_argument("--large", action="store_true", help="10,000,000 rows")
    ap.add_argument("--cpus", type=int, default=2, help="shoal workers = Spark local[N] = sklearn n_jobs")
    ap.add_argument("--algorithms", default=None, help=f"comma-separated subset of {ALGORITHMS}")
    ap.add_argument("--systems", default="shoal,spark,sklearn")
    ap.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "shoal-bench-ml"))
    ap.add_argument("--spark-memory", default="6g")
    args = ap.parse_args(argv)

    rows = args.rows or (200_000 if args.quick else 10_000_000 if args.large else 1_000_000)
    algos = (args.algorithms.split(",") if args.algorithms else
             QUICK_ALGORITHMS if args.quick else ALGORITHMS)
    systems = args.systems.split(",")
    os.makedirs(args.data_dir, exist_ok=True)
    train_path, test_path = make_data(args.data_dir, rows)
    results = {a: {"algo": a, "notes": []} for a in algos}

    if "shoal" in systems or "sklearn" in systems:
        train, test = read_numpy(train_path), read_numpy(test_path)
        for name in [s for s in ("shoal", "sklearn") if s in systems]:
            if name == "shoal":
                import shoal
                shoal.init(num_cpus=args.cpus)
            try:
                for a in algos:
                    try:
                        results[a][name] = run_numpy_system(name, a, train, test, args.cpus)
                        print(f"{name:8} {a:15} fit {results[a][name][0]:8.2f} s  "
                              f"{METRIC[a]} {results[a][name][1]:.4g}", flush=True)
                    except (AttributeError, ImportError) as e:   # an estimator not written yet
                        results[a]["notes"].append(f"{name} skipped: {e}")
                    gc.collect()
            finally:
                if name == "shoal":
                    shoal.shutdown()
        del train
        gc.collect()

    if "spark" in systems:
        try:
            spark = start_spark(args.cpus, args.spark_memory)
        except Exception as e:  # pyspark or Java missing: report, keep the other columns
            spark = None
            for a in algos:
                results[a]["notes"].append(f"Spark skipped: {type(e).__name__}: {e}".splitlines()[0])
        if spark is not None:
            try:
                spark.sparkContext.setLogLevel("ERROR")
                tr, te = spark_frames(spark, train_path, test_path)
                test = read_numpy(test_path)
                for a in algos:
                    try:
                        results[a]["spark"] = run_spark(a, tr, te, test)
                        print(f"{'spark':8} {a:15} fit {results[a]['spark'][0]:8.2f} s  "
                              f"{METRIC[a]} {results[a]['spark'][1]:.4g}", flush=True)
                    except Exception as e:
                        traceback.print_exc()
                        results[a]["notes"].append(f"Spark failed: {e}".splitlines()[0])
            finally:
                spark.stop()

    print_table([results[a] for a in algos], rows, args.cpus)


if __name__ == "__main__":
    main()
