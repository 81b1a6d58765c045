"""Map-side kernels of the LSH models: hashing a block, probing it with a key, and the
candidate pairs of two blocks (NumPy, SciPy sparse and Arrow only: these run in tasks).

A model is described to a kernel by a small tuple ``spec``:
``("minhash", a, b)`` (Spark's MinHash: h(x) = min over the non-zero indices j of x of
((1 + j) * a + b) mod HASH_PRIME) or ``("brp", R, bucket_length)`` (Spark's bucketed random
projection: h(x) = floor(x . r / bucket_length) for unit vectors r, the rows of R).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from shoal.exceptions import InvalidInputError
from shoal.ml._input import column_to_matrix, dense_to_vectors, is_sparse_vector_type, sparse_vectors_to_csr

HASH_PRIME = 2038074743     # Spark's MinHashLSH.HASH_PRIME


def block_vectors(table, column, who, width=None):
    """The column's vectors of one Arrow block: CSR for sparse vectors (padded to ``width``
    columns when given), a float64 matrix otherwise."""
    if column not in table.column_names:
        raise InvalidInputError(f"column {column!r} (input_col of {who}) is missing; available "
                                f"columns: {table.column_names}; set input_col='<column>'")
    col = table.column(column)
    if is_sparse_vector_type(col.type):
        X = sparse_vectors_to_csr(col)
        if width is not None and X.shape[1] < width:
            X = sp.csr_matrix((X.data, X.indices, X.indptr), shape=(X.shape[0], width))
    else:
        X = column_to_matrix(col, column)
    if width is not None and X.shape[1] != width and X.shape[0]:
        raise InvalidInputError(f"column {column!r} holds vectors of {X.shape[1]} entries, but {who} "
                                f"was fitted on {width}; transform data of the shape it was fitted on.")
    data = X.data if sp.issparse(X) else X
    if not np.isfinite(data).all():
        raise InvalidInputError(f"column {column!r} holds NaN or infinity; {who} needs finite vectors")
    return X


def block_width(table, column, who):
    """Runs in a task: (rows, vector width) of one block's input column."""
    X = block_vectors(table, column, who)
    return X.shape[0], X.shape[1]


def hashes(X, spec, column="features"):
    """The (n, num_hash_tables) hash values of the rows of X (float64, integral)."""
    kind = spec[0]
    if kind == "brp":
        _, R, bucket_length = spec
        P = np.asarray(X @ R.T)
        return np.floor(P / bucket_length)
    _, a, b = spec
    X = sp.csr_matrix(X, copy=True)     # Arrow-backed buffers are read-only
    X.eliminate_zeros()
    counts = np.diff(X.indptr)
    if X.shape[0] and (counts == 0).any():
        row = int(np.flatnonzero(counts == 0)[0])
        raise InvalidInputError(f"MinHashLSH: row {row} of column {column!r} has no non-zero entry; "
                                f"MinHash needs at least one (Spark's rule). Drop empty sets first.")
    if X.shape[0] == 0:
        return np.empty((0, len(a)))
    idx = X.indices.astype(np.int64) + 1
    out = np.empty((X.shape[0], len(a)))
    for t in range(len(a)):     # one table at a time: the temporaries stay nnz-sized
        v = (idx * a[t] + b[t]) % HASH_PRIME
        out[:, t] = np.minimum.reduceat(v, X.indptr[:-1])
    return out


def distances(A, B, spec):
    """Row-wise key distance of A[i] and B[i]: Jaccard distance of the non-zero index sets
    (MinHash) or the Euclidean distance (bucketed random projection)."""
    if spec[0] == "brp":
        D = A - B
        if sp.issparse(D):
            return np.sqrt(np.asarray(D.multiply(D).sum(axis=1)).ravel())
        return np.sqrt(np.einsum("ij,ij->i", D, D))
    A = (sp.csr_matrix(A, copy=True) != 0).astype(np.float64)
    B = (sp.csr_matrix(B, copy=True) != 0).astype(np.float64)
    width = max(A.shape[1], B.shape[1])
    A = sp.csr_matrix((A.data, A.indices, A.indptr), shape=(A.shape[0], width))
    B = sp.csr_matrix((B.data, B.indices, B.indptr), shape=(B.shape[0], width))
    inter = np.asarray(A.multiply(B).sum(axis=1)).ravel()
    union = np.diff(A.indptr) + np.diff(B.indptr) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, 1.0 - inter / np.maximum(union, 1), 0.0)


def _rows(X, idx):
    return X[idx] if not sp.issparse(X) else X.tocsr()[idx]


def _set_column(table, name, values):
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, values)
    return table.append_column(name, values)


def hash_table(table, column, output_col, spec, width, who):
    """Runs in a task: the block with its hash column (one value per hash table) added."""
    H = hashes(block_vectors(table, column, who, width), spec, column)
    return _set_column(table, output_col, dense_to_vectors(H))


def probe_block(table, column, output_col, spec, width, who, key, key_hash, k, dist_col):
    """Runs in a task: this block's rows that share a bucket with the key in some hash table,
    nearest first, at most k, with the hash and distance columns added (Spark's single probe)."""
    import pyarrow as pa
    X = block_vectors(table, column, who, width)
    H = hashes(X, spec, column)
    hit = np.flatnonzero((H == key_hash).any(axis=1))
    d = distances(_rows(X, hit), _repeat_key(key, len(hit)), spec)
    order = np.argsort(d, kind="stable")[:k]
    out = table.take(pa.array(hit[order], type=pa.int64()))
    out = _set_column(out, output_col, dense_to_vectors(H[hit[order]].reshape(-1, H.shape[1])))
    return _set_column(out, dist_col, pa.array(d[order], type=pa.float64()))


def _repeat_key(key, n):
    if sp.issparse(key):
        return sp.vstack([key] * n).tocsr() if n else key[:0]
    return np.repeat(key.reshape(1, -1), n, axis=0)


def block_hashes(table, column, spec, width, who):
    """Runs in a task: the (rows, tables) hash matrix of one block, as int64 keys."""
    return hashes(block_vectors(table, column, who, width), spec, column).astype(np.int64)


def candidate_pairs(HA, HB):
    """Distinct (i, j) with HA[i, t] == HB[j, t] for some hash table t (sort-merge per table)."""
    pairs = []
    for t in range(HA.shape[1]):
        order = np.argsort(HB[:, t], kind="stable")
        keys = HB[order, t]
        lo = np.searchsorted(keys, HA[:, t], side="left")
        hi = np.searchsorted(keys, HA[:, t], side="right")
        n = hi - lo
        if not n.sum():
            continue
        i = np.repeat(np.arange(len(HA)), n)
        starts = np.repeat(lo - np.concatenate([[0], np.cumsum(n)[:-1]]), n)
        j = order[starts + np.arange(n.sum())]
        pairs.append(i.astype(np.int64) * max(len(HB), 1) + j)
    if not pairs:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    ids = np.unique(np.concatenate(pairs))
    return ids // max(len(HB), 1), ids % max(len(HB), 1)


def _struct(table):
    import pyarrow as pa
    table = table.combine_chunks()
    arrays = [c.chunk(0) if c.num_chunks else pa.array([], type=c.type) for c in table.columns]
    return pa.StructArray.from_arrays(arrays, names=table.column_names)


def join_blocks(table_a, table_b, HA, HB, column, spec, width, threshold, dist_col):
    """Runs in a task: the pairs of rows of two blocks that share a bucket in some hash table
    and lie closer than ``threshold``: columns datasetA and datasetB (each row as a struct)
    and ``dist_col`` (Spark's approxSimilarityJoin output)."""
    import pyarrow as pa
    i, j = candidate_pairs(HA, HB)
    A = block_vectors(table_a, column, "approx_similarity_join (dataset_a)", width)
    B = block_vectors(table_b, column, "approx_similarity_join (dataset_b)", width)
    d = distances(_rows(A, i), _rows(B, j), spec)
    keep = d < threshold
    i, j, d = i[keep], j[keep], d[keep]
    return pa.table({"datasetA": _struct(table_a.take(pa.array(i, pa.int64()))),
                     "datasetB": _struct(table_b.take(pa.array(j, pa.int64()))),
                     dist_col: pa.array(d, pa.float64())})
