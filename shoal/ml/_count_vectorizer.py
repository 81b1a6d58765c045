"""CountVectorizer: token lists to term counts over a learned vocabulary (Spark's CountVectorizer).

Fit counts every term's corpus frequency and document frequency per block (tasks on a
Dataset) and merges the counters on the driver; the vocabulary is the ``vocab_size`` most
frequent terms among those passing ``min_df``/``max_df``, most frequent first (ties by term),
as Spark orders it. On a Dataset ``input_col`` "tokens" -> ``output_col`` "tf" (sparse
vectors), so ``Pipeline([Tokenizer(), CountVectorizer(), IDF()])`` and LDA run on it.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, TransformerMixin

from shoal.exceptions import InvalidInputError
from shoal.ml._base import ShoalEstimatorMixin, check_fitted
from shoal.ml._executor import map_dataset_blocks
from shoal.ml._input import _is_dataset, csr_to_sparse_vectors
from shoal.ml._text import _add_column, _check_column, _OneColumn


def _token_lists(X, who):
    """Token lists of array-like input (one list per document)."""
    if hasattr(X, "columns"):
        if X.shape[1] != 1:
            raise InvalidInputError(f"{who} takes one column of token lists, got {X.shape[1]} columns")
        X = X.iloc[:, 0]
    docs = list(X)
    if not docs:
        raise InvalidInputError(f"the input of {who} is empty (0 documents)")
    for i, d in enumerate(docs):
        if isinstance(d, str) or d is None or not hasattr(d, "__iter__"):
            raise InvalidInputError(f"{who} takes token lists, but document {i} is {type(d).__name__}; "
                                    f"run Tokenizer on the text first")
    return docs


def _count_terms(docs):
    """(term frequencies, document frequencies, documents) of a list of token lists."""
    tf, df = Counter(), Counter()
    for tokens in docs:
        tf.update(tokens)
        df.update(set(tokens))
    return tf, df, len(docs)


def _block_term_counts(table, column):
    """Runs in a task: one block's term and document frequencies."""
    _check_column(table, column, "CountVectorizer")
    import pyarrow as pa
    col = table.column(column)
    if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)):
        raise InvalidInputError(f"CountVectorizer takes token lists, but column {column!r} is {col.type}; "
                                f"run Tokenizer on the text first")
    return _count_terms([t or [] for t in col.to_pylist()])


class CountVectorizer(_OneColumn, ShoalEstimatorMixin, TransformerMixin, BaseEstimator):
    """Term counts of token lists over a vocabulary learned from the corpus (sparse CSR output).

    Parameters (Spark's names): vocab_size: keep at most this many terms, the most frequent
    across the corpus. min_df / max_df: a term must appear in at least min_df (and at most
    max_df) documents; a value below 1 (min_df) or at most 1.0 (max_df, a float) is a
    fraction of the documents. min_tf: in transform, ignore a term counted fewer times in a
    document (below 1: a fraction of the document's length). binary: 1 for every present
    term (for Bernoulli models). input_col / output_col: the Dataset columns.

    Fitted: vocabulary (list, column order), vocabulary_ (term -> column, as scikit-learn),
    doc_freq_, term_freq_ (per column), num_docs_.
    """

    def __init__(self, *, vocab_size=1 << 18, min_df=1.0, max_df=2**63 - 1, min_tf=1.0, binary=False,
                 input_col="tokens", output_col="tf"):
        self.vocab_size = vocab_size
        self.min_df = min_df
        self.max_df = max_df
        self.min_tf = min_tf
        self.binary = binary
        self.input_col = input_col
        self.output_col = output_col

    def fit(self, X, y=None, *, features=None, label=None):
        """Learn the vocabulary; returns self."""
        if not (isinstance(self.vocab_size, (int, np.integer)) and self.vocab_size >= 1):
            raise InvalidInputError(f"CountVectorizer vocab_size={self.vocab_size!r} must be a positive int")
        for name in ("min_df", "max_df", "min_tf"):
            if not (np.isscalar(getattr(self, name)) and getattr(self, name) >= 0):
                raise InvalidInputError(f"CountVectorizer {name}={getattr(self, name)!r} must be >= 0")
        if _is_dataset(X):
            X = X.materialize()
        X = self._fit_column(X, y, features, label)
        if _is_dataset(X):
            _check_column(X, self._column(), "CountVectorizer")
            parts = map_dataset_blocks(X, _block_term_counts, self._column())
        else:
            parts = [_count_terms(_token_lists(self._documents_of(X), "CountVectorizer"))]
        tf, df, m = Counter(), Counter(), 0
        for t, d, n in parts:
            tf.update(t)
            df.update(d)
            m += n
        if m == 0:
            raise InvalidInputError("CountVectorizer got an empty corpus (0 documents)")
        lo = self.min_df if self.min_df >= 1 else self.min_df * m
        hi = self.max_df if self.max_df > 1 or isinstance(self.max_df, (int, np.integer)) \
            else self.max_df * m
        terms = [w for w in tf if lo <= df[w] <= hi]
        if lo > hi:
            raise InvalidInputError(f"CountVectorizer max_df={self.max_df} corresponds to fewer documents "
                                    f"than min_df={self.min_df}")
        terms.sort(key=lambda w: (-tf[w], w))
        self.vocabulary = terms[:int(self.vocab_size)]
        if not self.vocabulary:
            raise InvalidInputError("CountVectorizer kept no term (empty vocabulary); lower min_df or "
                                    "raise max_df")
        self.vocabulary_ = {w: i for i, w in enumerate(self.vocabulary)}
        self.term_freq_ = np.array([tf[w] for w in self.vocabulary], dtype=np.float64)
        self.doc_freq_ = np.array([df[w] for w in self.vocabulary], dtype=np.float64)
        self.num_docs_ = m
        return self

    def transform(self, X):
        """Counts (n_documents, len(vocabulary)) as CSR; a Dataset gets ``output_col``."""
        check_fitted(self, "vocabulary_")
        if _is_dataset(X):
            return X.map_batches(_count_table, batch_format="pyarrow", fn_args=(self,))
        return self._counts(_token_lists(self._documents_of(X), "CountVectorizer"))

    def _counts(self, docs):
        vocab = self.vocabulary_
        rows, cols = [], []
        lengths = np.zeros(len(docs))
        for i, tokens in enumerate(docs):
            ids = [vocab[w] for w in tokens if w in vocab]
            lengths[i] = len(tokens)
            rows.extend([i] * len(ids))
            cols.extend(ids)
        X = sp.csr_matrix((np.ones(len(cols)), (np.asarray(rows, dtype=np.int64),
                                                np.asarray(cols, dtype=np.int64))),
                          shape=(len(docs), len(self.vocabulary)))   # sums repeats
        X.sort_indices()
        if self.min_tf != 1.0:
            need = self.min_tf if self.min_tf >= 1 else self.min_tf * np.repeat(lengths, np.diff(X.indptr))
            X.data[X.data < need] = 0.0
            X.eliminate_zeros()
        if self.binary:
            X.data[:] = 1.0
        return X

    def get_feature_names_out(self, input_features=None):
        """The vocabulary, in column order."""
        check_fitted(self, "vocabulary_")
        return np.asarray(self.vocabulary, dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        return tags


def _count_table(table, cv):
    """Runs in a task: the block with the term-count column added."""
    _check_column(table, cv._column(), "CountVectorizer")
    docs = [t or [] for t in table.column(cv._column()).to_pylist()]
    return _add_column(table, cv.output_col, csr_to_sparse_vectors(cv._counts(docs)))
