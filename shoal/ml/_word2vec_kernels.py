"""Map-side kernels of Word2Vec: counting and encoding token lists per block, Spark's Huffman
tree, and the skip-gram with hierarchical softmax training loop (Numba).

NumPy, Numba and Arrow only: these run in worker tasks.
"""
from __future__ import annotations

import numba
import numpy as np

from shoal.exceptions import InvalidInputError

MAX_EXP = 6.0
MAX_CODE_LENGTH = 40       # Spark's (and word2vec.c's) limit on a Huffman code


def _token_column(table, column):
    import pyarrow as pa
    if column not in table.column_names:
        raise InvalidInputError(f"column {column!r} (input_col of Word2Vec) is missing; available "
                                f"columns: {table.column_names}; set input_col='<column>'")
    col = table.column(column)
    if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)) or \
            not (pa.types.is_string(col.type.value_type) or pa.types.is_large_string(col.type.value_type)):
        raise InvalidInputError(f"Word2Vec takes token lists (list<string>), but column {column!r} is "
                                f"{col.type}; run Tokenizer on the text first")
    return col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)


def block_word_counts(table, column):
    """Runs in a task: (distinct words, their counts, documents) of one block."""
    import pyarrow.compute as pc
    col = _token_column(table, column)
    words = col.flatten()
    if len(words) == 0:
        return [], np.zeros(0, np.int64), len(col)
    vc = pc.value_counts(words.drop_null() if words.null_count else words)
    return vc.field("values").to_pylist(), vc.field("counts").to_numpy().astype(np.int64), len(col)


def encode_token_lists(docs, word_index, max_sentence_length):
    """(word ids, sentence offsets) of token lists: unknown words dropped, each document cut
    into sentences of at most max_sentence_length words (as Spark)."""
    ids, offsets = [], [0]
    for tokens in docs:
        row = [word_index[w] for w in (tokens or ()) if w in word_index]
        for s in range(0, len(row), max_sentence_length):
            ids.extend(row[s:s + max_sentence_length])
            offsets.append(len(ids))
    return np.asarray(ids, dtype=np.int32), np.asarray(offsets, dtype=np.int64)


def encode_block(table, column, word_index, max_sentence_length):
    """Runs in a task: one block's token lists as (word ids, sentence offsets)."""
    import pyarrow.compute as pc
    col = _token_column(table, column)
    words = col.flatten()
    encoded = pc.dictionary_encode(words)
    lookup = np.array([word_index.get(w, -1) for w in encoded.dictionary.to_pylist()] + [-1], np.int64)
    codes = encoded.indices.fill_null(len(lookup) - 1).to_numpy(zero_copy_only=False)
    ids = lookup[codes]
    lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False)
    doc = np.repeat(np.arange(len(col)), lengths)
    keep = ids >= 0
    ids, doc = ids[keep].astype(np.int32), doc[keep]
    kept = np.bincount(doc, minlength=len(col))
    # sentences: each document, cut every max_sentence_length words
    ends = []
    start = 0
    for n in kept:
        for s in range(max_sentence_length, int(n), max_sentence_length):
            ends.append(start + s)
        if n:
            ends.append(start + int(n))
        start += int(n)
    return ids, np.asarray([0] + ends, dtype=np.int64)


@numba.njit(cache=True, nogil=True)
def huffman_tree(counts):
    """Spark's (word2vec.c's) Huffman coding of words sorted by count, most frequent first:
    (codes (V, 40) int8, points (V, 40) int32, code lengths (V,) int32); points index the
    V - 1 inner nodes."""
    V = counts.shape[0]
    count = np.empty(2 * V - 1, np.int64)
    count[:V] = counts
    count[V:] = np.int64(1) << 60
    parent = np.zeros(2 * V - 1, np.int64)
    binary = np.zeros(2 * V - 1, np.int8)
    pos1, pos2 = V - 1, V
    for a in range(V - 1):
        if pos1 >= 0 and count[pos1] < count[pos2]:
            min1 = pos1
            pos1 -= 1
        else:
            min1 = pos2
            pos2 += 1
        if pos1 >= 0 and count[pos1] < count[pos2]:
            min2 = pos1
            pos1 -= 1
        else:
            min2 = pos2
            pos2 += 1
        count[V + a] = count[min1] + count[min2]
        parent[min1] = V + a
        parent[min2] = V + a
        binary[min2] = 1
    codes = np.zeros((V, MAX_CODE_LENGTH), np.int8)
    points = np.zeros((V, MAX_CODE_LENGTH), np.int32)
    lengths = np.zeros(V, np.int32)
    code = np.zeros(MAX_CODE_LENGTH, np.int8)
    point = np.zeros(MAX_CODE_LENGTH, np.int64)
    for a in range(V):
        b = a
        i = 0
        while True:
            code[i] = binary[b]
            point[i] = b
            i += 1
            b = parent[b]
            if b == 2 * V - 2 or i >= MAX_CODE_LENGTH:
                break
        lengths[a] = i
        points[a, 0] = V - 2
        for k in range(i):
            codes[a, i - k - 1] = code[k]
            if i - k < MAX_CODE_LENGTH:
                points[a, i - k] = point[k] - V
    return codes, points, lengths


@numba.njit(cache=True, nogil=True, fastmath=True)   # lets LLVM vectorise the float32 dot and axpy loops
def train_skipgram_hs(ids, offsets, syn0, syn1, codes, points, lengths, window, learning_rate,
                      words_before, total_words, num_partitions, seed):
    """One partition's pass of skip-gram with hierarchical softmax over its sentences (Spark's
    Word2Vec inner loop). Updates syn0/syn1 in place; returns (words processed, syn0 rows
    touched, syn1 rows touched). The learning rate decays linearly over all partitions'
    words of all iterations, as Spark's, recomputed every 10,000 words."""
    d = syn0.shape[1]
    touched0 = np.zeros(syn0.shape[0], np.bool_)
    touched1 = np.zeros(syn1.shape[0], np.bool_)
    neu1e = np.zeros(d, np.float32)
    rand = np.uint64(seed)
    alpha = learning_rate
    word_count = 0
    last_count = 0
    for s in range(offsets.shape[0] - 1):
        start, end = offsets[s], offsets[s + 1]
        for pos in range(start, end):
            if word_count - last_count > 10000:
                last_count = word_count
                alpha = learning_rate * (1.0 - (num_partitions * word_count + words_before) / total_words)
                if alpha < learning_rate * 0.0001:
                    alpha = learning_rate * 0.0001
            word = ids[pos]
            rand = rand * np.uint64(25214903917) + np.uint64(11)
            b = np.int64((rand >> np.uint64(16)) % np.uint64(window))
            for a in range(b, window * 2 + 1 - b):
                if a == window:
                    continue
                c = pos - window + a
                if c < start or c >= end:
                    continue
                l1 = ids[c]
                neu1e[:] = 0.0
                for k in range(lengths[word]):
                    inner = points[word, k]
                    f = np.float32(0.0)
                    for j in range(d):
                        f += syn0[l1, j] * syn1[inner, j]
                    if f <= -MAX_EXP or f >= MAX_EXP:
                        continue
                    f = 1.0 / (1.0 + np.exp(-f))
                    g = np.float32((1 - codes[word, k] - f) * alpha)
                    for j in range(d):
                        neu1e[j] += g * syn1[inner, j]
                    for j in range(d):
                        syn1[inner, j] += g * syn0[l1, j]
                    touched1[inner] = True
                for j in range(d):
                    syn0[l1, j] += neu1e[j]
                touched0[l1] = True
            word_count += 1
    return word_count, touched0, touched1


def train_partition(syn0, syn1, tree, params, iteration, partition, *encoded):
    """Runs in a task: one partition's pass from the current vectors; returns its copies of
    syn0 and syn1 and the rows it touched."""
    codes, points, lengths = tree
    window, learning_rate, train_words, num_partitions, max_iter, seed = params
    ids = np.concatenate([e[0] for e in encoded]) if encoded else np.zeros(0, np.int32)
    offsets = [np.zeros(1, np.int64)]
    base = 0
    for e in encoded:
        offsets.append(e[1][1:] + base)
        base += len(e[0])
    offsets = np.concatenate(offsets)
    syn0, syn1 = syn0.copy(), syn1.copy()
    mix = (int(seed) ^ ((partition + 1) << 16) ^ ((iteration + 1) << 8)) & 0xFFFFFFFFFFFF
    _, t0, t1 = train_skipgram_hs(ids, offsets, syn0, syn1, codes, points, lengths, int(window),
                                  float(learning_rate), float(iteration * train_words),
                                  float(max_iter * train_words + 1), int(num_partitions), mix)
    return syn0, syn1, t0, t1
