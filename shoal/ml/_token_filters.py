"""Token-list transformers: NGram and StopWordsRemover (Spark's, no fitting needed).

On a Dataset each reads ``input_col`` (token lists, Tokenizer's output) and lazily adds
``output_col``; on arrays and pandas input they return an object array of lists."""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from shoal.exceptions import InvalidInputError
from shoal.ml._base import ShoalEstimatorMixin
from shoal.ml._count_vectorizer import _token_lists
from shoal.ml._input import _is_dataset
from shoal.ml._text import _add_column, _check_column, _OneColumn


def _as_object_array(lists):
    out = np.empty(len(lists), dtype=object)
    out[:] = lists
    return out


def _ngrams(tokens, n):
    return [" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def _lists_table(table, who, column, output_col, fn, *args):
    """Runs in a task: output_col = fn(token list, *args) for every row of column."""
    import pyarrow as pa
    _check_column(table, column, who)
    col = table.column(column)
    if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)):
        raise InvalidInputError(f"{who} takes token lists, but column {column!r} is {col.type}; run "
                                f"Tokenizer on the text first")
    out = [None if t is None else fn(t, *args) for t in col.to_pylist()]
    return _add_column(table, output_col, pa.array(out, type=pa.list_(pa.string())))


class _TokenListTransformer(_OneColumn, ShoalEstimatorMixin, TransformerMixin, BaseEstimator):
    def fit(self, X=None, y=None, *, features=None, label=None):
        """Nothing to learn; records the input column (features=) and checks the parameters."""
        self._fit_column(X, y, features, label)
        self._args()
        return self

    def transform(self, X):
        args = self._args()
        who = type(self).__name__
        if _is_dataset(X):
            return X.map_batches(_lists_table, batch_format="pyarrow",
                                 fn_args=(who, self._column(), self.output_col, type(self)._apply) + args)
        return _as_object_array([self._apply(list(t), *args)
                                 for t in _token_lists(self._documents_of(X), who)])

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.input_tags.two_d_array = False
        return tags


class NGram(_TokenListTransformer):
    """The n-grams of each token list, tokens joined by a space (Spark's NGram); a list
    shorter than n gives no n-grams. Parameters: n (default 2), input_col, output_col."""

    def __init__(self, n=2, *, input_col="tokens", output_col="ngrams"):
        self.n = n
        self.input_col = input_col
        self.output_col = output_col

    def _args(self):
        if not (isinstance(self.n, (int, np.integer)) and not isinstance(self.n, bool) and self.n >= 1):
            raise InvalidInputError(f"NGram n={self.n!r} must be a positive int")
        return (int(self.n),)

    @staticmethod
    def _apply(tokens, n):
        return _ngrams(tokens, n)


class StopWordsRemover(_TokenListTransformer):
    """Drop stop words from each token list (Spark's StopWordsRemover).

    Parameters: stop_words (default: scikit-learn's English list, ENGLISH_STOP_WORDS),
    case_sensitive (default False: compared lower-cased), input_col, output_col ("filtered").
    """

    def __init__(self, *, stop_words=None, case_sensitive=False, input_col="tokens",
                 output_col="filtered"):
        self.stop_words = stop_words
        self.case_sensitive = case_sensitive
        self.input_col = input_col
        self.output_col = output_col

    def _args(self):
        words = self.stop_words
        if words is None:
            from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS
            words = ENGLISH_STOP_WORDS
        if isinstance(words, str) or not all(isinstance(w, str) for w in words):
            raise InvalidInputError("StopWordsRemover stop_words must be a list of strings "
                                    "(or None for the English list)")
        cs = bool(self.case_sensitive)
        return (frozenset(words if cs else (w.lower() for w in words)), cs)

    @staticmethod
    def _apply(tokens, stop, case_sensitive):
        if case_sensitive:
            return [t for t in tokens if t not in stop]
        return [t for t in tokens if t.lower() not in stop]
