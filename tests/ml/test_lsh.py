"""MinHashLSH and BucketedRandomProjectionLSH: Spark's documented examples, recall against a
brute-force search on generated data, exact distances, and the Dataset paths."""
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import scipy.sparse as sp
from scipy.spatial.distance import cdist

import shoal.data as sd
import shoal.ml as ml
from shoal.exceptions import InvalidInputError
from shoal.ml._input import csr_to_sparse_vectors, dense_to_vectors
from tests.ml._cluster import cluster  # noqa: F401


def _sets(rows, width):
    indptr = np.cumsum([0] + [len(r) for r in rows])
    idx = np.concatenate([np.asarray(r, dtype=np.int64) for r in rows])
    return sp.csr_matrix((np.ones(len(idx)), idx, indptr), shape=(len(rows), width))


def _table(ids, X):
    vectors = csr_to_sparse_vectors(X) if sp.issparse(X) else dense_to_vectors(X)
    return pa.table({"id": pa.array(ids, pa.int64()), "features": vectors})


# Spark's MinHashLSH example (ml-features guide): sets over 6 items, key {1, 3}
SPARK_A = _table([0, 1, 2], _sets([[0, 1, 2], [2, 3, 4], [0, 2, 4]], 6))
SPARK_B = _table([3, 4, 5], _sets([[1, 3, 5], [2, 3, 5], [1, 2, 4]], 6))
# Spark's BucketedRandomProjectionLSH example: the corners and the edge midpoints of a square
BRP_A = _table([0, 1, 2, 3], np.array([[1.0, 1.0], [1.0, -1.0], [-1.0, -1.0], [-1.0, 1.0]]))
BRP_B = _table([4, 5, 6, 7], np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]]))


def _pairs(joined, dist_col="distCol"):
    if hasattr(joined, "to_arrow"):
        joined = joined.to_arrow()
    a = [r["id"] for r in joined.column("datasetA").to_pylist()]
    b = [r["id"] for r in joined.column("datasetB").to_pylist()]
    return dict(zip(zip(a, b), joined.column(dist_col).to_pylist()))


def test_minhash_reproduces_sparks_example():
    model = ml.MinHashLSH(num_hash_tables=5, seed=12345).fit(SPARK_A)
    exact = {(0, 5): 0.5, (1, 4): 0.5, (1, 5): 0.5, (2, 5): 0.5}   # every pair under 0.6
    found = _pairs(model.approx_similarity_join(SPARK_A, SPARK_B, 0.6, dist_col="JaccardDistance"),
                   "JaccardDistance")
    assert set(found) <= set(exact) and all(found[p] == exact[p] for p in found)
    many = ml.MinHashLSH(num_hash_tables=40, seed=0).fit(SPARK_A)
    assert _pairs(many.approx_similarity_join(SPARK_A, SPARK_B, 0.6)) == exact
    near = many.approx_nearest_neighbors(SPARK_A, _sets([[1, 3]], 6), 2)
    assert near.column("id").to_pylist() == [0, 1]
    assert near.column("distCol").to_pylist() == [0.75, 0.75]
    hashes = many.transform(SPARK_A).column("hashes").combine_chunks().to_numpy_ndarray()
    assert hashes.shape == (3, 40) and (hashes >= 0).all() and (hashes < 2038074743).all()


def test_minhash_hash_is_sparks_formula():
    model = ml.MinHashLSH(num_hash_tables=3, seed=1).fit(SPARK_A)
    a, b = model.coefficients_[:, 0], model.coefficients_[:, 1]
    X = _sets([[0, 1, 2], [2, 3, 4], [0, 2, 4]], 6)
    expected = [[min(((1 + j) * a[t] + b[t]) % 2038074743 for j in row) for t in range(3)]
                for row in ([0, 1, 2], [2, 3, 4], [0, 2, 4])]
    np.testing.assert_array_equal(model.transform(X), expected)


def test_bucketed_random_projection_reproduces_sparks_example():
    exact = {(0, 4): 1.0, (0, 6): 1.0, (1, 4): 1.0, (1, 7): 1.0, (2, 5): 1.0, (2, 7): 1.0,
             (3, 5): 1.0, (3, 6): 1.0}      # each corner with its two neighbouring midpoints
    model = ml.BucketedRandomProjectionLSH(2.0, num_hash_tables=3, seed=12345).fit(BRP_A)
    found = _pairs(model.approx_similarity_join(BRP_A, BRP_B, 1.5, dist_col="EuclideanDistance"),
                   "EuclideanDistance")
    assert set(found) <= set(exact) and all(found[p] == pytest.approx(1.0) for p in found)
    many = ml.BucketedRandomProjectionLSH(2.0, num_hash_tables=30, seed=0).fit(BRP_A)
    assert set(_pairs(many.approx_similarity_join(BRP_A, BRP_B, 1.5))) == set(exact)
    near = many.approx_nearest_neighbors(BRP_A.to_pandas(), np.array([1.0, 0.0]), 2)
    assert isinstance(near, pd.DataFrame)
    assert sorted(near["id"]) == [0, 1] and near["distCol"].tolist() == pytest.approx([1.0, 1.0])
    X = np.array([[1.0, 1.0], [1.0, -1.0], [-1.0, -1.0], [-1.0, 1.0]])
    np.testing.assert_array_equal(many.transform(X), np.floor(X @ many.rand_unit_vectors_.T / 2.0))


def _clustered_points(seed=0, n_base=300, copies=3, d=8, noise=0.04):
    rng = np.random.default_rng(seed)
    base = rng.uniform(-5, 5, size=(n_base, d))
    X = np.repeat(base, copies, axis=0) + noise * rng.standard_normal((n_base * copies, d))
    return X[rng.permutation(len(X))]


def _clustered_sets(seed=0, n_base=200, copies=3, universe=2000, size=20):
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n_base):
        base = rng.choice(universe, size, replace=False)
        for _ in range(copies):
            row = base.copy()
            row[rng.choice(size, 2, replace=False)] = rng.integers(0, universe, 2)
            rows.append(sorted(set(row.tolist())))
    order = rng.permutation(len(rows))
    return [rows[i] for i in order], universe


def _jaccard_distances(X, Y):
    Xb, Yb = (X != 0).astype(float), (Y != 0).astype(float)
    inter = (Xb @ Yb.T).toarray()
    union = np.asarray(Xb.sum(1)) + np.asarray(Yb.sum(1)).T - inter
    return 1.0 - inter / union


# the stated bounds: with these parameters a pair at the typical near distance collides in a
# table with probability ~0.9 (projections) / ~0.8 (MinHash), so misses are very rare
RECALL_BOUND = 0.95


def test_projection_join_recall_and_exact_distances():
    X = _clustered_points()
    table = _table(np.arange(len(X)), X)
    model = ml.BucketedRandomProjectionLSH(1.0, num_hash_tables=6, seed=3).fit(table)
    threshold = 0.3
    D = cdist(X, X)
    truth = {(i, j) for i, j in zip(*np.nonzero(D < threshold))}
    found = _pairs(model.approx_similarity_join(table, table, threshold))
    assert set(found) <= truth
    assert len(set(found) & truth) / len(truth) >= RECALL_BOUND
    for (i, j), dist in found.items():
        assert dist == pytest.approx(D[i, j], rel=1e-12, abs=1e-12)


def test_minhash_join_recall_and_exact_distances():
    rows, universe = _clustered_sets()
    X = _sets(rows, universe)
    table = _table(np.arange(len(rows)), X)
    model = ml.MinHashLSH(num_hash_tables=8, seed=4).fit(table)
    threshold = 0.45
    D = _jaccard_distances(X, X)
    truth = {(i, j) for i, j in zip(*np.nonzero(D < threshold))}
    found = _pairs(model.approx_similarity_join(table, table, threshold))
    assert set(found) <= truth
    assert len(set(found) & truth) / len(truth) >= RECALL_BOUND
    for (i, j), dist in found.items():
        assert dist == pytest.approx(D[i, j], abs=1e-12)


def test_nearest_neighbors_against_brute_force():
    X = _clustered_points(seed=5)
    table = _table(np.arange(len(X)), X)
    model = ml.BucketedRandomProjectionLSH(1.0, num_hash_tables=8, seed=6).fit(table)
    rng = np.random.default_rng(7)
    hits = 0
    for q in rng.choice(len(X), 40, replace=False):
        key = X[q] + 0.01
        near = model.approx_nearest_neighbors(table, key, 3)
        dist = np.linalg.norm(X - key, axis=1)
        got = near.column("distCol").to_numpy()
        assert (np.diff(got) >= 0).all()     # nearest first
        np.testing.assert_allclose(got, dist[near.column("id").to_numpy()], rtol=1e-12)
        hits += set(near.column("id").to_pylist()) == set(np.argsort(dist)[:3].tolist())
    assert hits / 40 >= RECALL_BOUND


def test_datasets_give_the_same_results_as_tables(cluster):  # noqa: F811
    X = _clustered_points(seed=8, n_base=80)
    table = _table(np.arange(len(X)), X)
    ds = sd.from_arrow(table).repartition(3)
    other = sd.from_arrow(table.slice(0, 100)).repartition(2)
    model = ml.BucketedRandomProjectionLSH(1.0, num_hash_tables=4, seed=9).fit(ds)
    local = ml.BucketedRandomProjectionLSH(1.0, num_hash_tables=4, seed=9).fit(table)
    np.testing.assert_array_equal(model.rand_unit_vectors_, local.rand_unit_vectors_)
    joined = model.approx_similarity_join(ds, other, 0.3)
    assert isinstance(joined, sd.Dataset)
    assert _pairs(joined) == pytest.approx(_pairs(local.approx_similarity_join(table, table.slice(0, 100), 0.3)))
    near = model.approx_nearest_neighbors(ds, X[5], 4)
    assert isinstance(near, sd.Dataset)
    assert near.to_pandas()["id"].tolist() == local.approx_nearest_neighbors(table, X[5], 4).column("id").to_pylist()
    hashed = model.transform(ds).to_pandas().sort_values("id")
    np.testing.assert_array_equal(np.stack(hashed["hashes"].to_numpy()), local.transform(X))
    sets = sd.from_arrow(SPARK_A).repartition(2)
    mh = ml.MinHashLSH(num_hash_tables=40, seed=0).fit(sets, features=["features"])
    assert _pairs(mh.approx_similarity_join(sets, sd.from_arrow(SPARK_B), 0.6)) == \
        {(0, 5): 0.5, (1, 4): 0.5, (1, 5): 0.5, (2, 5): 0.5}
    empty = pa.table({"id": [9], "features": csr_to_sparse_vectors(sp.csr_matrix((1, 6)))})
    with pytest.raises(Exception, match="no non-zero entry"):
        mh.transform(sd.from_arrow(empty)).materialize()


def test_bad_input_is_named():
    with pytest.raises(InvalidInputError, match="bucket_length=None"):
        ml.BucketedRandomProjectionLSH().fit(BRP_A)
    with pytest.raises(InvalidInputError, match="num_hash_tables=0"):
        ml.MinHashLSH(num_hash_tables=0).fit(SPARK_A)
    with pytest.raises(InvalidInputError, match="column 'vec'.*input_col"):
        ml.MinHashLSH(input_col="vec").fit(SPARK_A)
    model = ml.MinHashLSH(num_hash_tables=2, seed=0).fit(SPARK_A)
    with pytest.raises(InvalidInputError, match="row 0 of column 'features' has no non-zero entry"):
        model.transform(sp.csr_matrix((1, 6)))
    with pytest.raises(InvalidInputError, match="key has 3 entries"):
        model.approx_nearest_neighbors(SPARK_A, np.ones(3), 2)
    with pytest.raises(InvalidInputError, match="num_nearest_neighbors=0"):
        model.approx_nearest_neighbors(SPARK_A, np.ones(6), 0)
    with pytest.raises(InvalidInputError, match="threshold=-1"):
        model.approx_similarity_join(SPARK_A, SPARK_B, -1)
    brp = ml.BucketedRandomProjectionLSH(1.0).fit(BRP_A)
    with pytest.raises(InvalidInputError, match="X has 3 features.*expecting 2"):
        brp.transform(np.ones((2, 3)))
    with pytest.raises(InvalidInputError, match="vectors of 3 entries.*fitted on 2"):
        brp.transform(pa.table({"features": [[1.0, 2.0, 3.0]]}))


def test_fitted_models_save_and_load(tmp_path):
    for model, X in ((ml.MinHashLSH(num_hash_tables=3, seed=0), _sets([[0, 1], [2, 5]], 6)),
                     (ml.BucketedRandomProjectionLSH(1.0, num_hash_tables=3, seed=0), np.eye(3))):
        model.fit(X)
        ml.save(model, tmp_path / type(model).__name__)
        back = ml.load(tmp_path / type(model).__name__)
        np.testing.assert_array_equal(back.transform(X), model.transform(X))
