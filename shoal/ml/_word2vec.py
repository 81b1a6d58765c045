"""Word2Vec: word embeddings by skip-gram with hierarchical softmax, Spark's algorithm.

Fit, on a Dataset of token lists (or any list of token lists):

1. one task per block counts its words; the driver keeps the words seen at least
   ``min_count`` times, most frequent first, and builds their Huffman tree;
2. one task per block encodes its documents as word ids (unknown words dropped, documents
   cut into sentences of at most ``max_sentence_length``); the encoded blocks stay in the
   object store and are dealt to ``num_partitions`` partitions;
3. each of ``max_iter`` iterations trains every partition in its own task from the current
   vectors (a Numba loop: skip-gram, hierarchical softmax, the learning rate decaying
   linearly over all the words to train), then averages each vector over the partitions
   that changed it, as Spark does.

``transform`` gives each document the mean of its words' vectors (divided by its number of
words, unknown ones included, as Spark); ``find_synonyms`` ranks words by cosine similarity.
"""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from shoal.exceptions import InvalidInputError
from shoal.ml import _word2vec_kernels as K
from shoal.ml._base import ShoalEstimatorMixin, check_fitted
from shoal.ml._executor import _dataset_block_refs, _is_dataset, _shoal_core, map_dataset_blocks
from shoal.ml._input import dense_to_vectors
from shoal.ml._text import _add_column, _OneColumn


def _token_lists(X):
    """Token lists of in-memory input: a list/array of lists, or a one-column table."""
    from shoal.ml._columns import as_frame
    X = as_frame(X)
    if hasattr(X, "columns"):
        if X.shape[1] != 1:
            raise InvalidInputError(f"Word2Vec takes one column of token lists, got {X.shape[1]} "
                                    f"columns; name it with input_col= or features=[...]")
        X = X.iloc[:, 0]
    docs = list(X)
    for i, d in enumerate(docs):
        if d is None or isinstance(d, (str, bytes)) or not hasattr(d, "__iter__"):
            raise InvalidInputError(f"Word2Vec takes token lists, but document {i} is "
                                    f"{type(d).__name__}; run Tokenizer on the text first")
    return [list(map(str, d)) for d in docs]


def _positive_int(name, value):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise InvalidInputError(f"Word2Vec {name}={value!r} must be an int >= 1")


class Word2Vec(_OneColumn, ShoalEstimatorMixin, TransformerMixin, BaseEstimator):
    """Word vectors learned by skip-gram with hierarchical softmax (Spark's Word2Vec, its
    parameters in snake case), trained in ``num_partitions`` tasks whose vectors are averaged
    after every iteration (see the module docstring).

    Parameters: vector_size (100), window_size (5), min_count (5: rarer words are dropped),
    max_iter (1), step_size (0.025, the initial learning rate), num_partitions (1),
    max_sentence_length (1000), seed, input_col ("tokens": a column of token lists) and
    output_col ("vector": a document's mean word vector).

    Fitted: vocabulary_ (words, most frequent first), word_index_ (word -> row),
    word_counts_, vectors_ ((len(vocabulary_), vector_size) float32); get_vectors(),
    find_synonyms(word_or_vector, num), transform.
    """

    def __init__(self, *, vector_size=100, window_size=5, min_count=5, max_iter=1, step_size=0.025,
                 num_partitions=1, max_sentence_length=1000, seed=None, input_col="tokens",
                 output_col="vector"):
        self.vector_size = vector_size
        self.window_size = window_size
        self.min_count = min_count
        self.max_iter = max_iter
        self.step_size = step_size
        self.num_partitions = num_partitions
        self.max_sentence_length = max_sentence_length
        self.seed = seed
        self.input_col = input_col
        self.output_col = output_col

    def _documents_of(self, X):
        """A table's ``input_col`` (named in the error when missing); arrays pass as they are."""
        from shoal.ml._columns import is_table, table_columns
        if is_table(X) and not _is_dataset(X) and self._column() not in table_columns(X):
            raise InvalidInputError(f"column {self._column()!r} (input_col of Word2Vec) is missing; "
                                    f"available columns: {table_columns(X)}; set input_col='<column>'")
        return super()._documents_of(X)

    def _check_params(self):
        for name in ("vector_size", "window_size", "max_iter", "num_partitions", "max_sentence_length"):
            _positive_int(name, getattr(self, name))
        if not isinstance(self.min_count, (int, np.integer)) or isinstance(self.min_count, bool) \
                or self.min_count < 0:
            raise InvalidInputError(f"Word2Vec min_count={self.min_count!r} must be an int >= 0")
        s = self.step_size
        if not (np.isscalar(s) and not isinstance(s, (str, bool)) and np.isfinite(s) and s > 0):
            raise InvalidInputError(f"Word2Vec step_size={s!r} must be a number > 0")

    def fit(self, X, y=None, *, features=None, label=None):
        """Learn the vocabulary and the word vectors; returns self."""
        self._check_params()
        if _is_dataset(X):
            X = X.materialize()
        X = self._fit_column(X, y, features, label)
        column = self._column()
        if _is_dataset(X):
            parts = map_dataset_blocks(X, K.block_word_counts, column)
        else:
            docs = _token_lists(self._documents_of(X))
            flat = [w for d in docs for w in d]
            words, counts = np.unique(np.asarray(flat, dtype=object), return_counts=True) if flat else ([], [])
            parts = [(list(words), np.asarray(counts, np.int64), len(docs))]
        self._build_vocabulary(parts)
        index = self.word_index_
        P = int(self.num_partitions)
        if _is_dataset(X):
            core = _shoal_core()
            encode = core.remote(K.encode_block)
            encoded = [encode.remote(r, column, index, int(self.max_sentence_length))
                       for r in _dataset_block_refs(X)]
            train = core.remote(K.train_partition)

            def run(syn0, syn1, tree, params, it):
                s0, s1, t = core.put(syn0), core.put(syn1), core.put(tree)
                return core.get([train.remote(s0, s1, t, params, it, p, *encoded[p::P])
                                 for p in range(P)])
        else:
            chunk = -(-len(docs) // P)
            encoded = [K.encode_token_lists(docs[p * chunk:(p + 1) * chunk], index,
                                            int(self.max_sentence_length)) for p in range(P)]

            def run(syn0, syn1, tree, params, it):
                return [K.train_partition(syn0, syn1, tree, params, it, p, encoded[p]) for p in range(P)]
        self._train(run)
        return self

    def _build_vocabulary(self, parts):
        totals = {}
        for words, counts, _ in parts:
            for w, c in zip(words, counts.tolist()):
                totals[w] = totals.get(w, 0) + c
        kept = [(w, c) for w, c in totals.items() if c >= self.min_count]
        kept.sort(key=lambda wc: (-wc[1], wc[0]))     # most frequent first (ties by word)
        if len(kept) < 2:
            raise InvalidInputError(f"Word2Vec needs at least 2 distinct words seen min_count="
                                    f"{self.min_count} times or more, found {len(kept)} (of "
                                    f"{len(totals)} words); lower min_count or give more text.")
        self.vocabulary_ = [w for w, _ in kept]
        self.word_index_ = {w: i for i, w in enumerate(self.vocabulary_)}
        self.word_counts_ = np.array([c for _, c in kept], dtype=np.int64)

    def _train(self, run):
        V, d = len(self.vocabulary_), int(self.vector_size)
        seed = self.seed if self.seed is not None else int(np.random.SeedSequence().entropy % (1 << 31))
        rng = np.random.default_rng(seed)
        syn0 = ((rng.random((V, d), dtype=np.float32) - 0.5) / d).astype(np.float32)
        syn1 = np.zeros((V - 1, d), np.float32)
        tree = K.huffman_tree(self.word_counts_)
        train_words = int(self.word_counts_.sum())
        params = (int(self.window_size), float(self.step_size), train_words, int(self.num_partitions),
                  int(self.max_iter), int(seed))
        for it in range(int(self.max_iter)):
            results = run(syn0, syn1, tree, params, it)
            syn0 = _average(syn0, [(r[0], r[2]) for r in results])
            syn1 = _average(syn1, [(r[1], r[3]) for r in results])
        self.vectors_ = syn0
        self.n_features_in_ = 1

    def get_vectors(self):
        """A pandas DataFrame of the words and their vectors (Spark's getVectors)."""
        import pandas as pd
        check_fitted(self, "vectors_")
        return pd.DataFrame({"word": self.vocabulary_, "vector": list(self.vectors_.astype(np.float64))})

    def find_synonyms(self, word, num):
        """The ``num`` words most similar to ``word`` (a word, itself left out, or a vector) by
        cosine similarity, most similar first: a pandas DataFrame (word, similarity), as
        Spark's findSynonyms."""
        import pandas as pd
        check_fitted(self, "vectors_")
        _positive_int("find_synonyms num", num)
        exclude = None
        if isinstance(word, str):
            if word not in self.word_index_:
                raise InvalidInputError(f"Word2Vec.find_synonyms(): {word!r} is not in the vocabulary "
                                        f"({len(self.vocabulary_)} words seen at least min_count="
                                        f"{self.min_count} times)")
            exclude = self.word_index_[word]
            query = self.vectors_[exclude].astype(np.float64)
        else:
            query = np.asarray(word, dtype=np.float64).ravel()
            if query.shape != (self.vectors_.shape[1],):
                raise InvalidInputError(f"Word2Vec.find_synonyms(): the query vector has {query.size} "
                                        f"entries, the model's vectors {self.vectors_.shape[1]}")
        W = self.vectors_.astype(np.float64)
        norms = np.linalg.norm(W, axis=1) * np.linalg.norm(query)
        with np.errstate(invalid="ignore", divide="ignore"):
            sim = np.where(norms > 0, W @ query / norms, 0.0)
        if exclude is not None:
            sim[exclude] = -np.inf
        order = np.argsort(-sim, kind="stable")[:int(num) if exclude is None else min(int(num), len(sim) - 1)]
        return pd.DataFrame({"word": [self.vocabulary_[i] for i in order], "similarity": sim[order]})

    def _document_vectors(self, docs):
        out = np.zeros((len(docs), self.vectors_.shape[1]))
        index = self.word_index_
        for i, tokens in enumerate(docs):
            if tokens:
                ids = [index[w] for w in tokens if w in index]
                if ids:
                    out[i] = self.vectors_[ids].astype(np.float64).sum(axis=0) / len(tokens)
        return out

    def transform(self, X):
        """Each document's mean word vector: a Dataset (or table) gets ``output_col``; token
        lists give an (n_documents, vector_size) array."""
        check_fitted(self, "vectors_")
        if _is_dataset(X):
            return X.map_batches(_vector_table, batch_format="pyarrow", fn_args=(self,))
        return self._document_vectors(_token_lists(self._documents_of(X)))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        return tags


def _average(current, results):
    """Each row averaged over the partitions that touched it (others keep ``current``)."""
    total = np.zeros_like(current, dtype=np.float64)
    count = np.zeros(current.shape[0])
    for values, touched in results:
        total[touched] += values[touched]
        count += touched
    out = current.copy()
    hit = count > 0
    out[hit] = (total[hit] / count[hit, None]).astype(current.dtype)
    return out


def _vector_table(table, model):
    """Runs in a task: the block with each document's mean word vector added."""
    col = K._token_column(table, model._column())
    return _add_column(table, model.output_col, dense_to_vectors(model._document_vectors(col.to_pylist())))
