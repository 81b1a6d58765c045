"""Map-side kernels of shoal.ml.fpm: item counts, conditional transactions, and the mining of
one group of items (parallel FP-growth's steps; Li et al. 2008, as Spark's FPGrowth).

NumPy and Arrow only: these run in worker tasks. Items are ranked by descending frequency
(rank 0 the most frequent); a transaction is its frequent items' ranks in increasing order.
"""
from __future__ import annotations

import numpy as np

from shoal.exceptions import InvalidInputError


def transactions_of(table, column):
    """(row lengths, flattened items) of an Arrow list column; a null transaction or item, a
    column that holds no lists, is an InvalidInputError naming the column."""
    import pyarrow as pa
    if column not in table.column_names:
        raise InvalidInputError(f"column {column!r} is missing from the Dataset; available columns: "
                                f"{table.column_names}")
    col = table.column(column)
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)):
        raise InvalidInputError(f"column {column!r} must hold a list of items per row (Spark's "
                                f"array column), got {col.type}")
    if col.null_count:
        raise InvalidInputError(f"column {column!r} holds a null transaction; drop those rows or "
                                f"give them an empty list.")
    import pyarrow.compute as pc
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False).astype(np.int64)
    values = col.flatten()
    if values.null_count:
        raise InvalidInputError(f"column {column!r} holds a null item in a transaction; drop or "
                                f"fill the nulls first.")
    return lengths, values


def _check_unique(lengths, values, column):
    import pyarrow.compute as pc
    if len(values) == 0:
        return
    enc = pc.dictionary_encode(values)
    codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    size = len(enc.dictionary)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    key = np.sort(rows * size + codes)
    dup = np.nonzero(np.diff(key) == 0)[0]
    if len(dup):
        row = int(key[dup[0]] // size)
        start = int(lengths[:row].sum())
        items = values[start:start + int(lengths[row])].to_pylist()
        raise InvalidInputError(f"Items in a transaction must be unique but got {items} (column "
                                f"{column!r}); FPGrowth counts an item once per transaction: "
                                f"deduplicate each row first (Spark rejects these rows too).")


def count_items(table, column):
    """(distinct items, their transaction counts, transactions) of one block; duplicates
    inside a transaction are rejected."""
    import pyarrow.compute as pc
    lengths, values = transactions_of(table, column)
    _check_unique(lengths, values, column)
    vc = pc.value_counts(values)
    return vc.field("values"), vc.field("counts").to_numpy(zero_copy_only=False), len(lengths)


def ranked_transactions(table, column, frequent):
    """The block's transactions as (offsets, ranks): frequent items only, by rank."""
    import pyarrow.compute as pc
    lengths, values = transactions_of(table, column)
    ranks = pc.index_in(values, value_set=frequent)
    valid = ~np.asarray(ranks.is_null().to_numpy(zero_copy_only=False))
    r = ranks.to_numpy(zero_copy_only=False)
    rows = np.repeat(np.arange(len(lengths)), lengths)[valid]
    r = np.asarray(r[valid], dtype=np.int64)
    order = np.lexsort((r, rows))
    r, rows = r[order], rows[order]
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=len(lengths)), out=offsets[1:])
    return offsets, r


def conditional_transactions(table, column, frequent, n_groups):
    """Split one block into the conditional transactions of each item group.

    Item of rank r belongs to group r % n_groups. For every group a transaction touches,
    the group gets the transaction's prefix up to its last item of that group: all a
    group needs to mine the itemsets whose least frequent item is one of its own.
    Returns one (offsets, ranks) pair per group (a task with num_returns=n_groups)."""
    offsets, r = ranked_transactions(table, column, frequent)
    n = len(offsets) - 1
    rows = np.repeat(np.arange(n), np.diff(offsets))
    key = rows * n_groups + r % n_groups
    rev = key[::-1]
    pairs, first_rev = np.unique(rev, return_index=True)
    last = len(key) - 1 - first_rev                 # the last position of each (row, group)
    pair_rows, pair_groups = pairs // n_groups, pairs % n_groups
    starts = offsets[pair_rows]
    out = []
    for g in range(n_groups):
        sel = pair_groups == g
        s, e = starts[sel], last[sel] + 1
        lens = e - s
        off = np.zeros(len(lens) + 1, dtype=np.int64)
        np.cumsum(lens, out=off[1:])
        gather = np.repeat(s - off[:-1], lens) + np.arange(off[-1])
        out.append((off, r[gather].astype(np.int32)))
    return out[0] if n_groups == 1 else tuple(out)


def _bitsets(tx_local, tx_items, n_items, n_tx):
    """(n_items, words) uint64 bitsets: bit t of row j set when transaction t holds item j."""
    words = (n_tx + 63) // 64
    M = np.zeros(n_items * words, dtype=np.uint64)
    if len(tx_items):
        key = tx_items * words + tx_local // 64
        bits = np.left_shift(np.uint64(1), (tx_local % 64).astype(np.uint64))
        order = np.argsort(key, kind="stable")
        key, bits = key[order], bits[order]
        uniq, start = np.unique(key, return_index=True)
        M[uniq] = np.add.reduceat(bits, start)       # distinct bits: the sum is the OR
    return M.reshape(n_items, words)


def _eclat(prefix, rows, items, min_count, found):
    """Depth-first over the extensions of ``prefix``: rows[j] is the transaction bitset of
    prefix + items[j] (items in increasing rank, every one frequent)."""
    for j in range(1, len(items)):
        sub = rows[:j] & rows[j]
        counts = np.bitwise_count(sub).sum(axis=1, dtype=np.int64)
        keep = np.nonzero(counts >= min_count)[0]
        if len(keep):
            base = prefix + (int(items[j]),)
            for k in keep:
                found.append((base + (int(items[k]),), int(counts[k])))
            _eclat(base, sub[keep], items[keep], min_count, found)


def mine_group(group, n_groups, min_count, *parts):
    """Frequent itemsets (2 items or more) whose least frequent item is in ``group``, from the
    group's conditional transactions gathered from every block; each root item's projected
    transactions are searched depth-first on bitsets (Eclat). Returns (flat ranks, itemset
    lengths, counts)."""
    offs, ranks = [], []
    base = 0
    for off, r in parts:
        offs.append(off[1:] + base if len(offs) else off + base)
        ranks.append(r)
        base += int(off[-1])
    offsets = np.concatenate(offs) if offs else np.zeros(1, dtype=np.int64)
    ranks = np.concatenate(ranks).astype(np.int64) if ranks else np.zeros(0, dtype=np.int64)
    n_tx = len(offsets) - 1
    tx_of = np.repeat(np.arange(n_tx), np.diff(offsets))
    # an inverted index: the transactions holding each item
    order = np.argsort(ranks, kind="stable")
    by_item, tx_sorted = ranks[order], tx_of[order]
    found: list = []
    roots = np.unique(ranks[ranks % n_groups == group])
    for i in roots:
        lo, hi = np.searchsorted(by_item, [i, i + 1])
        txs = tx_sorted[lo:hi]
        if len(txs) < min_count:
            continue
        # the projected transactions: their items more frequent than i
        lens = np.diff(offsets)[txs]
        gather = np.repeat(offsets[txs] - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens) + \
            np.arange(lens.sum())
        items = ranks[gather]
        local_tx = np.repeat(np.arange(len(txs)), lens)
        keep = items < i
        items, local_tx = items[keep], local_tx[keep]
        cand, inv, counts = np.unique(items, return_inverse=True, return_counts=True)
        frequent = counts >= min_count
        if not frequent.any():
            continue
        remap = np.full(len(cand), -1, dtype=np.int64)
        remap[frequent] = np.arange(frequent.sum())
        sel = remap[inv] >= 0
        rows = _bitsets(local_tx[sel], remap[inv][sel], int(frequent.sum()), len(txs))
        cand, counts = cand[frequent], counts[frequent]
        root = (int(i),)
        for c, n in zip(cand, counts):
            found.append((root + (int(c),), int(n)))
        _eclat(root, rows, cand, min_count, found)
    lengths = np.array([len(s) for s, _ in found], dtype=np.int32)
    flat = np.array([x for s, _ in found for x in s], dtype=np.int32)
    counts = np.array([n for _, n in found], dtype=np.int64)
    return flat, lengths, counts


def predict_block(table, column, antecedents, consequents, out_type, output_col):
    """Runs in a task: a block with the rules' predictions for each transaction appended.

    A transaction's prediction: the consequents of the rules whose antecedent it holds,
    less the items it already has, in rule order, each once (Spark's FPGrowthModel.transform)."""
    import pyarrow as pa
    lengths, values = transactions_of(table, column)
    items = values.to_pylist()
    out, at = [], 0
    rules = [(frozenset(a), c) for a, c in zip(antecedents, consequents)]
    for n in lengths:
        have = set(items[at:at + n])
        at += n
        pred, seen = [], set()
        for a, c in rules:
            if c not in have and c not in seen and a <= have:
                seen.add(c)
                pred.append(c)
        out.append(pred)
    column_values = pa.array(out, type=pa.list_(out_type))
    if output_col in table.column_names:
        return table.set_column(table.column_names.index(output_col), output_col, column_values)
    return table.append_column(output_col, column_values)


# ----------------------------------------------------------------------- PrefixSpan

def sequences_of(table, column):
    """A column of sequences (lists of itemsets, each a list of items) as Python lists;
    a null sequence, itemset or item, or a column of another type, names the column."""
    import pyarrow as pa
    if column not in table.column_names:
        raise InvalidInputError(f"column {column!r} is missing from the Dataset; available columns: "
                                f"{table.column_names}")
    t = table.column(column).type
    if not ((pa.types.is_list(t) or pa.types.is_large_list(t)) and
            (pa.types.is_list(t.value_type) or pa.types.is_large_list(t.value_type))):
        raise InvalidInputError(f"column {column!r} must hold one sequence of itemsets per row (a "
                                f"list of lists of items, Spark's array<array<...>>), got {t}")
    rows = table.column(column).to_pylist()
    for seq in rows:
        if seq is None or any(s is None or None in s for s in seq):
            raise InvalidInputError(f"column {column!r} holds a null sequence, itemset or item; drop "
                                    f"or fill the nulls first.")
    return rows


def count_sequence_items(table, column):
    """(items, the number of sequences holding each, sequences) of one block."""
    import pyarrow as pa
    from collections import Counter
    rows = sequences_of(table, column)
    c: Counter = Counter()
    for seq in rows:
        c.update({x for itemset in seq for x in itemset})
    items = list(c)
    return pa.array(items, type=table.column(column).type.value_type.value_type), \
        np.array([c[x] for x in items], dtype=np.int64), len(rows)


def project_sequences(table, column, frequent, n_groups):
    """Each sequence as ranked itemsets (frequent items only, empty itemsets dropped), sent to
    the group of every item it holds: one list of sequences per group (num_returns=n_groups)."""
    rank = {x: r for r, x in enumerate(frequent.to_pylist())}
    out = [[] for _ in range(n_groups)]
    for seq in sequences_of(table, column):
        clean = [tuple(sorted({rank[x] for x in s if x in rank})) for s in seq]
        clean = [s for s in clean if s]
        if not clean:
            continue
        for g in {x % n_groups for s in clean for x in s}:
            out[g].append(clean)
    return out[0] if n_groups == 1 else tuple(out)


def _grow(pattern, length, proj, min_count, max_length, found):
    """Extend ``pattern`` (a tuple of itemset tuples) over its projected sequences.

    proj: (sequence, positions) pairs: the itemset indices where the pattern's last itemset
    is matched, its earlier itemsets matched before the first of them."""
    if length >= max_length:
        return
    s_ext: dict = {}
    i_ext: dict = {}
    last = pattern[-1][-1]
    for n, (seq, pos) in enumerate(proj):
        seen_s, seen_i = set(), set()
        for k in range(pos[0] + 1, len(seq)):
            seen_s.update(seq[k])
        for j in pos:
            seen_i.update(x for x in seq[j] if x > last)
        for x in seen_s:
            s_ext.setdefault(x, []).append(n)
        for x in seen_i:
            i_ext.setdefault(x, []).append(n)
    for x in sorted(i_ext):
        hits = i_ext[x]
        if len(hits) >= min_count:
            new = pattern[:-1] + (pattern[-1] + (x,),)
            found.append((new, len(hits)))
            sub = []
            for n in hits:
                seq, pos = proj[n]
                sub.append((seq, [j for j in pos if x in seq[j]]))
            _grow(new, length + 1, sub, min_count, max_length, found)
    for x in sorted(s_ext):
        hits = s_ext[x]
        if len(hits) >= min_count:
            new = pattern + ((x,),)
            found.append((new, len(hits)))
            sub = []
            for n in hits:
                seq, pos = proj[n]
                sub.append((seq, [k for k in range(pos[0] + 1, len(seq)) if x in seq[k]]))
            _grow(new, length + 1, sub, min_count, max_length, found)


def mine_sequences(group, n_groups, min_count, max_length, *parts):
    """The frequent sequential patterns whose first item (the smallest rank of the first
    itemset) is in ``group``, from the group's sequences gathered from every block.
    Returns a list of (pattern as a tuple of rank tuples, count)."""
    seqs = [s for p in parts for s in p]
    roots: dict = {}
    for n, seq in enumerate(seqs):
        for x in {x for s in seq for x in s if x % n_groups == group}:
            roots.setdefault(x, []).append(n)
    found: list = []
    for x in sorted(roots):
        hits = roots[x]
        if len(hits) < min_count:
            continue
        pattern = ((x,),)
        found.append((pattern, len(hits)))
        proj = [(seqs[n], [j for j, s in enumerate(seqs[n]) if x in s]) for n in hits]
        _grow(pattern, 1, proj, min_count, max_length, found)
    return found
