"""The blocked layout of ALS and its task bodies (Spark's ``ALS.train`` design).

Users are hashed into ``nu`` blocks and items into ``ni`` blocks. Every rating goes to
its user's block and to its item's block (``partition_ratings``, one task per input
block), and each block builds once (``build_block``):

- its rows (the sorted ids of its users, or items) and their ratings as CSR, each rating
  pointing at a row of the *received* matrix: the other side's factors that this block
  needs, stacked in the order (other block, other id);
- its *send lists*: for each block of the other side, which of its own rows that block
  needs, in id order. Both sides derive the same lists from the same ratings, so no
  index is ever exchanged.

A half-iteration is one ``solve_block`` task per block: it stacks the parts the other
side sent, solves every row's normal equations, and returns its new factors plus one
part per block of the other side (just the rows that block needs) and, for implicit
feedback, its Gram matrix X^T X. Blocks and parts live in the object store; no process
ever holds the whole rating matrix.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shoal.exceptions import InvalidInputError
from shoal.ml._als_kernels import solve_rows

_MIX = np.uint64(0x9E3779B97F4A7C15)   # Fibonacci hashing: consecutive ids spread over blocks
ID_RANGE = 2**31                        # Spark's ids are Java ints; so are ours


def block_of(ids: np.ndarray, n: int) -> np.ndarray:
    """The block in ``[0, n)`` of each id (int64)."""
    return ((ids.view(np.uint64) * _MIX) >> np.uint64(32)).astype(np.int64) % n


# ---------------------------------------------------------------- input ---

def id_array(column, name: str, role: str) -> np.ndarray:
    """An id column as int64; InvalidInputError naming the column for nulls, text, fractions."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if column.null_count:
        raise InvalidInputError(
            f"column {name!r} ({role} ids) has {column.null_count} null value(s); ALS needs an "
            f"id in every row. Drop those rows (e.g. ds.filter(expr=pc.field({name!r})"
            f".is_valid())) or fill them before fit.")
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if pa.types.is_integer(column.type):
        ids = column.cast(pa.int64()).to_numpy(zero_copy_only=False)
    elif pa.types.is_floating(column.type):
        values = column.to_numpy(zero_copy_only=False)
        if not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
            raise InvalidInputError(
                f"column {name!r} ({role} ids) holds non-integral or non-finite numbers; ALS "
                f"ids are integers (as Spark's). Map them to integers first.")
        ids = values.astype(np.int64)
    else:
        raise InvalidInputError(
            f"column {name!r} ({role} ids) is {column.type}; ALS takes integer ids. Index text "
            f"ids first, e.g. with shoal.ml.StringIndexer, and fit on the index column.")
    if ids.size and (ids.min() < -ID_RANGE or ids.max() >= ID_RANGE):
        raise InvalidInputError(
            f"column {name!r} ({role} ids) has ids outside the 32-bit integer range that ALS "
            f"(as Spark) supports; re-index them, e.g. with StringIndexer.")
    return ids


def rating_array(column, name: str) -> np.ndarray:
    """A rating column as float64; InvalidInputError naming it for nulls, text, NaN/inf."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)
            or pa.types.is_boolean(column.type) or pa.types.is_decimal(column.type)):
        raise InvalidInputError(
            f"column {name!r} (ratings) is {column.type}; ALS needs numeric ratings. Cast the "
            f"column to numbers first (e.g. ds.map_batches or pandas' astype(float)).")
    if column.null_count:
        raise InvalidInputError(
            f"column {name!r} (ratings) has {column.null_count} null value(s); drop or fill "
            f"them before fit.")
    values = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
    if not np.all(np.isfinite(values)):
        raise InvalidInputError(f"column {name!r} (ratings) has NaN or infinite values; drop "
                                f"or fill them before fit.")
    return values


def check_rating_types(schema: pa.Schema, user: str, item: str, rating: str) -> None:
    """The checks ``id_array``/``rating_array`` make that the schema alone answers."""
    for name, role in ((user, "user"), (item, "item")):
        t = schema.field(name).type
        t = t.value_type if pa.types.is_dictionary(t) else t
        if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_null(t)):
            id_array(pa.array([], t), name, role)
    rating_array(pa.array([], schema.field(rating).type), rating)


# ----------------------------------------------------------- task bodies ---

def partition_ratings(cols: tuple, nu: int, ni: int, table: pa.Table):
    """One input block's ratings, as ``nu`` parts by user block then ``ni`` by item block."""
    user, item, rating = cols
    u = id_array(table.column(user), user, "user")
    i = id_array(table.column(item), item, "item")
    r = rating_array(table.column(rating), rating)
    parts = []
    for own, other, n in ((u, i, nu), (i, u, ni)):
        b = block_of(own, n)
        order = np.argsort(b, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(np.bincount(b, minlength=n))])
        o, t, v = own[order], other[order], r[order]
        parts += [(o[s:e], t[s:e], v[s:e]) for s, e in zip(bounds[:-1], bounds[1:])]
    return parts


def _pair_index(block: np.ndarray, ids: np.ndarray):
    """Order of ``(block, id)`` pairs and the rank of each distinct pair in that order."""
    order = np.lexsort((ids, block))
    sb, si = block[order], ids[order]
    new = np.ones(len(order), dtype=bool)
    new[1:] = (sb[1:] != sb[:-1]) | (si[1:] != si[:-1])
    return order, new, np.cumsum(new) - 1


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def initial_factors(ids: np.ndarray, rank: int, seed: int, nonnegative: bool) -> np.ndarray:
    """Gaussian rows of unit norm (Spark's initialisation), each a function of its id and
    the seed only, so a fit does not depend on how ids fall into blocks."""
    base = _splitmix64(ids.astype(np.int64).view(np.uint64) ^ np.uint64(seed & (2**64 - 1)))
    cols = np.arange(2 * rank, dtype=np.uint64)
    bits = _splitmix64(base[:, None] * np.uint64(0x100000001B3) + cols[None, :])
    uniform = ((bits >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53   # in (0, 1)
    u1, u2 = uniform[:, :rank], uniform[:, rank:]
    factors = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)         # Box-Muller
    factors /= np.maximum(np.linalg.norm(factors, axis=1, keepdims=True), 1e-30)
    return np.abs(factors) if nonnegative else factors


def build_block(index: int, n_other: int, rank: int, seed, nonnegative: bool, *parts):
    """The layout of one block (see the module docstring), random initial factors, the
    parts they send, and their Gram matrix: ``(layout, factors, *sends, gram)``."""
    own = np.concatenate([p[0] for p in parts])
    other = np.concatenate([p[1] for p in parts])
    vals = np.concatenate([p[2] for p in parts])
    ids, own_loc = np.unique(own, return_inverse=True)
    other_block = block_of(other, n_other)
    order, new, rank_of = _pair_index(other_block, other)
    cols = np.empty(len(other), dtype=np.int64)
    cols[order] = rank_of
    expected = np.bincount(other_block[order][new], minlength=n_other)
    # which of our rows each block of the other side needs, in id order
    order2, new2, _ = _pair_index(other_block, own_loc)
    firsts = order2[new2]
    send_block, send_row = other_block[firsts], own_loc[firsts]
    bounds = np.concatenate([[0], np.cumsum(np.bincount(send_block, minlength=n_other))])
    sends = [send_row[s:e] for s, e in zip(bounds[:-1], bounds[1:])]
    by_row = np.argsort(own_loc, kind="stable")
    indptr = np.concatenate([[0], np.cumsum(np.bincount(own_loc, minlength=len(ids)))])
    layout = {"ids": ids, "indptr": indptr, "cols": cols[by_row], "vals": vals[by_row],
              "sends": sends, "expected": expected}
    factors = initial_factors(ids, rank, seed, nonnegative)
    return (layout, factors, *[factors[s] for s in sends], factors.T @ factors)


def solve_block(layout: dict, params: tuple, gram, *received):
    """One half-iteration for one block: ``(factors, *sends, gram)`` from the parts sent."""
    reg, implicit, alpha, nonnegative, rank = params
    for j, (part, n) in enumerate(zip(received, layout["expected"])):
        if part.shape[0] != n:
            raise RuntimeError(f"ALS block exchange out of step: block {j} sent {part.shape[0]} "
                               f"rows where {n} were expected")
    Y = np.vstack(received) if received else np.zeros((0, rank))
    X = np.empty((len(layout["ids"]), rank))
    YtY = gram if implicit else np.zeros((rank, rank))
    solve_rows(layout["indptr"], layout["cols"], layout["vals"], np.ascontiguousarray(Y),
               np.ascontiguousarray(YtY), reg, implicit, alpha, nonnegative, X)
    return (X, *[X[s] for s in layout["sends"]], X.T @ X)


def block_ids(layout: dict) -> np.ndarray:
    return layout["ids"]


# -------------------------------------------------------- recommendation ---

def recommend_block(ids: np.ndarray, X: np.ndarray, other_ids: np.ndarray, Y: np.ndarray,
                    k: int, id_name: str, other_name: str) -> pa.Table:
    """Top ``k`` of the other side for each row: a block of ``id_name`` and
    ``recommendations`` (a list of structs ``{other_name, rating}``, best first)."""
    k = min(k, len(other_ids))
    idx = np.empty((len(ids), k), dtype=np.int64)
    score = np.empty((len(ids), k), dtype=np.float32)
    for s in range(0, len(ids), 1024):
        S = X[s:s + 1024] @ Y.T
        part = np.argpartition(-S, k - 1, axis=1)[:, :k] if k < S.shape[1] else \
            np.broadcast_to(np.arange(S.shape[1]), S.shape).copy()
        top = np.take_along_axis(S, part, axis=1)
        rank = np.argsort(-top, axis=1, kind="stable")
        idx[s:s + 1024] = np.take_along_axis(part, rank, axis=1)
        score[s:s + 1024] = np.take_along_axis(top, rank, axis=1)
    structs = pa.StructArray.from_arrays(
        [pa.array(other_ids[idx.ravel()]), pa.array(score.ravel())], names=[other_name, "rating"])
    offsets = pa.array(np.arange(0, len(ids) * k + 1, k, dtype=np.int32))
    return pa.table({id_name: pa.array(ids),
                     "recommendations": pa.ListArray.from_arrays(offsets, structs)})


def lookup(sorted_ids: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``wanted`` in ``sorted_ids`` and whether each was found."""
    pos = np.searchsorted(sorted_ids, wanted)
    pos = np.minimum(pos, max(len(sorted_ids) - 1, 0))
    found = (sorted_ids[pos] == wanted) if len(sorted_ids) else np.zeros(len(wanted), bool)
    return pos, found


def predict_table(table: pa.Table, cols: tuple, user_ids, U, item_ids, V, drop: bool,
                  out: str) -> pa.Table:
    """A block with ``out`` = the predicted rating of its (user, item) pairs appended (NaN for
    an id not seen in fit; such rows removed when ``drop``)."""
    user, item = cols
    pred = predict_pairs(id_array(table.column(user), user, "user"),
                         id_array(table.column(item), item, "item"), user_ids, U, item_ids, V)
    if out in table.column_names:
        table = table.drop_columns([out])
    table = table.append_column(out, pa.array(pred))
    return table.filter(pc.invert(pc.is_nan(table.column(out)))) if drop else table


def predict_pairs(u, i, user_ids, U, item_ids, V) -> np.ndarray:
    pu, fu = lookup(user_ids, u)
    pi, fi = lookup(item_ids, i)
    pred = np.einsum("ij,ij->i", U[pu], V[pi]) if len(u) else np.zeros(0)
    pred[~(fu & fi)] = np.nan
    return pred
