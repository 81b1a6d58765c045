"""Text features: Tokenizer, RegexTokenizer, HashingTF (the hashing trick) and IDF (Spark's smoothed formula).

On a Dataset each reads ``input_col`` (or the one column fit's ``features=`` names) and lazily
adds ``output_col`` (Spark's inputCol/outputCol):
Tokenizer "text" -> "tokens" (list of strings), HashingTF "tokens" -> "tf" and IDF "tf" -> "tfidf"
(sparse vectors: a struct of size, indices, values per row), so ``Pipeline([Tokenizer(),
HashingTF(), IDF()])`` runs on a Dataset with the defaults. IDF's document frequencies are
counted per block in tasks and summed.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.feature_extraction import FeatureHasher

from shoal.exceptions import InvalidInputError
from shoal.ml._base import ShoalEstimatorMixin, check_fitted
from shoal.ml._input import (_is_dataset, as_frame, column_to_matrix, csr_to_sparse_vectors,
                             dense_to_vectors, is_sparse_vector_type, is_table, map_dataset_blocks,
                             resolve_fit_columns, sparse_vectors_to_csr)


class _OneColumn:
    """A transformer reading one column of a table: ``input_col``, or the one column fit's
    ``features=`` names (it then wins: a Pipeline routes the column an earlier step wrote)."""

    def _fit_column(self, X, y, features, label):
        if X is not None:
            _, features, label = resolve_fit_columns(X, y, features=features, label=label, estimator=self)
        if features is not None:
            if len(features) != 1:
                raise InvalidInputError(f"{type(self).__name__} reads one column, but features= names "
                                        f"{len(features)}: {features}; pass one column.")
            self.input_col_ = features[0]
        elif hasattr(self, "input_col_"):
            del self.input_col_
        return X

    def _column(self) -> str:
        return getattr(self, "input_col_", self.input_col)

    def _own_input_columns(self):
        return None

    def _dataset_columns_io(self):
        return [self._column()], [self.output_col]

    def _documents_of(self, X):
        """A table's input column (arrays pass as they are)."""
        if is_table(X) and not _is_dataset(X):
            X = as_frame(X)
            if self._column() in X.columns:
                return X[[self._column()]]
        return X


def _documents(X, what):
    if type(X).__module__.startswith("pyarrow"):
        X = X.to_pandas()
    if hasattr(X, "columns"):
        if X.shape[1] != 1:
            raise InvalidInputError(f"{what} takes one text column, got {X.shape[1]} columns")
        X = X.iloc[:, 0]
    import pandas as pd
    s = pd.Series(np.asarray(X, dtype=object).ravel() if not isinstance(X, pd.Series) else X)
    if s.isna().any():
        raise InvalidInputError(f"the input of {what} holds a missing document at row {int(s.isna().to_numpy().argmax())}")
    if len(s) == 0:
        raise InvalidInputError(f"the input of {what} is empty")
    return s


class Tokenizer(_OneColumn, ShoalEstimatorMixin, TransformerMixin, BaseEstimator):
    """Lower-case each document and split it on ``pattern`` (a regex; default whitespace).

    On a Dataset the split runs in Arrow's regex kernel (RE2 syntax: no look-arounds or
    back-references); on arrays and pandas input, Python's ``re``.
    """

    def __init__(self, *, pattern=r"\s+", to_lowercase=True, min_token_length=1,
                 input_col="text", output_col="tokens"):
        self.pattern = pattern
        self.to_lowercase = to_lowercase
        self.min_token_length = min_token_length
        self.input_col = input_col
        self.output_col = output_col

    def fit(self, X=None, y=None, *, features=None, label=None):
        self._fit_column(X, y, features, label)
        return self

    def transform(self, X):
        if _is_dataset(X):   # lazy: a missing column is reported when the blocks run
            return X.map_batches(_tokenize_table, batch_format="pyarrow", fn_args=(self,))
        s = _documents(self._documents_of(X), "Tokenizer").astype(str)
        if self.to_lowercase:
            s = s.str.lower()
        tokens = s.str.split(self.pattern, regex=True)
        m = self.min_token_length
        # one list per document, even when all have the same length (np.array would make 2-D)
        return _as_token_array([[t for t in row if len(t) >= m] for row in tokens])

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        return tags


class RegexTokenizer(Tokenizer):
    """Split each document on a regex, or collect the regex's matches (Spark's RegexTokenizer).

    pattern (default whitespace, ``\\s+``); gaps: True (Spark's default) splits on the pattern,
    False collects every match of it as a token (``pattern=r"\\w+", gaps=False``);
    min_token_length: drop shorter tokens; to_lowercase: lower-case the text first.
    input_col ("text"), output_col ("tokens"). The regex is Python's ``re`` on arrays and
    pandas input; on a Dataset, splitting runs in Arrow's RE2 kernel (no look-arounds or
    back-references) and matching in ``re`` inside the block tasks. Spark's patterns are Java
    regexes; their common syntax (classes, quantifiers, ``\\w``, ``\\s``, groups) is the same.
    """

    def __init__(self, *, pattern=r"\s+", gaps=True, to_lowercase=True, min_token_length=1,
                 input_col="text", output_col="tokens"):
        self.pattern = pattern
        self.gaps = gaps
        self.to_lowercase = to_lowercase
        self.min_token_length = min_token_length
        self.input_col = input_col
        self.output_col = output_col

    def _check(self):
        import re
        try:
            re.compile(self.pattern)
        except (re.error, TypeError) as e:
            raise InvalidInputError(f"RegexTokenizer pattern={self.pattern!r} is not a valid regex: {e}") from None
        m = self.min_token_length
        if not (isinstance(m, (int, np.integer)) and not isinstance(m, bool) and m >= 0):
            raise InvalidInputError(f"RegexTokenizer min_token_length={m!r} must be an int >= 0")

    def fit(self, X=None, y=None, *, features=None, label=None):
        """Nothing to learn: records the input column (features=) and checks the pattern."""
        self._check()
        return super().fit(X, y, features=features, label=label)

    def transform(self, X):
        """Token lists (an object array of lists; a Dataset gets the list column ``output_col``)."""
        self._check()
        if self.gaps:
            return super().transform(X)
        if _is_dataset(X):
            return X.map_batches(_match_tokens_table, batch_format="pyarrow", fn_args=(self,))
        s = _documents(self._documents_of(X), "RegexTokenizer").astype(str)
        return _as_token_array(_match_tokens(s.tolist(), self))


def _match_tokens(docs, tokenizer):
    """The regex matches of each document that are long enough (gaps=False)."""
    import re
    rx = re.compile(tokenizer.pattern)
    m = tokenizer.min_token_length
    low = tokenizer.to_lowercase
    # group(0): the whole match, as Java's Matcher.group() (findall would return the groups)
    return [[t.group(0) for t in rx.finditer(d.lower() if low else d) if len(t.group(0)) >= m]
            for d in docs]


def _as_token_array(lists):
    out = np.empty(len(lists), dtype=object)
    out[:] = lists
    return out


def _text_column(table, tokenizer, who: str):
    """The tokenizer's input column of ``table``, checked: present, no missing document, text."""
    import pyarrow as pa
    name = tokenizer._column()
    _check_column(table, name, who)
    col = table.column(name)
    if col.null_count:
        raise InvalidInputError(f"column {name!r} holds a missing document; fill or "
                                f"drop it before {who}")
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        raise InvalidInputError(f"{who} reads text, but column {name!r} is {col.type}")
    return col


def _match_tokens_table(table, tokenizer):
    """Runs in a task: RegexTokenizer's matches (gaps=False) as a list column."""
    import pyarrow as pa
    col = _text_column(table, tokenizer, "RegexTokenizer")
    tokens = _match_tokens(col.to_pylist(), tokenizer)
    return _add_column(table, tokenizer.output_col, pa.array(tokens, type=pa.list_(pa.string())))


class HashingTF(_OneColumn, ShoalEstimatorMixin, TransformerMixin, BaseEstimator):
    """Term frequencies of token lists hashed into ``num_features`` columns (sparse CSR output)."""

    def __init__(self, num_features=1 << 18, *, binary=False, input_col="tokens", output_col="tf"):
        self.num_features = num_features
        self.binary = binary
        self.input_col = input_col
        self.output_col = output_col

    def fit(self, X=None, y=None, *, features=None, label=None):
        self._fit_column(X, y, features, label)
        return self

    def transform(self, X):
        if not (isinstance(self.num_features, (int, np.integer)) and self.num_features >= 1):
            raise InvalidInputError(f"num_features must be a positive integer, got {self.num_features!r}")
        if _is_dataset(X):
            return X.map_batches(_hash_table, batch_format="pyarrow", fn_args=(self,))
        X = self._documents_of(X)
        docs = list(X.iloc[:, 0] if hasattr(X, "iloc") and X.ndim == 2 else X)
        for i, d in enumerate(docs[:1]):
            if isinstance(d, str):
                raise InvalidInputError("HashingTF takes token lists; run Tokenizer on the text first")
        hasher = FeatureHasher(n_features=int(self.num_features), input_type="string", alternate_sign=False)
        out = hasher.transform(docs).astype(np.float64)
        if self.binary:
            out.data[:] = 1.0
        return out.tocsr()

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.input_tags.two_d_array = False
        return tags


class IDF(_OneColumn, ShoalEstimatorMixin, TransformerMixin, BaseEstimator):
    """Inverse document frequency weights: idf = log((m + 1) / (df + 1)) (Spark's formula);
    terms in fewer than ``min_doc_freq`` documents get weight 0."""

    def __init__(self, *, min_doc_freq=0, input_col="tf", output_col="tfidf"):
        self.min_doc_freq = min_doc_freq
        self.input_col = input_col
        self.output_col = output_col

    def fit(self, X, y=None, *, features=None, label=None):
        if _is_dataset(X):
            X = X.materialize()   # one run serves the column check and the per-block pass
        X = self._fit_column(X, y, features, label)
        if _is_dataset(X):
            _check_column(X, self._column(), "IDF")
            parts = map_dataset_blocks(X, _block_doc_freq, self._column())
            m = sum(p[0] for p in parts)
            if m == 0:
                raise InvalidInputError("IDF got an empty Dataset (0 documents)")
            width = max(len(p[1]) for p in parts)
            df = np.zeros(width)
            for _, counts in parts:
                df[:len(counts)] += counts
            return self._set_idf(df, m)
        X = _tf_matrix(self._documents_of(X))
        df = np.asarray((X > 0).sum(axis=0)).ravel().astype(np.float64)
        return self._set_idf(df, X.shape[0])

    def _set_idf(self, df, m):
        idf = np.log((m + 1.0) / (df + 1.0))
        idf[df < self.min_doc_freq] = 0.0
        self.idf_ = idf
        self.doc_freq_ = df
        self.num_docs_ = m
        self.n_features_in_ = len(df)
        return self

    def transform(self, X):
        check_fitted(self, "idf_")
        if _is_dataset(X):
            return X.map_batches(_idf_table, batch_format="pyarrow", fn_args=(self,))
        X = _tf_matrix(self._documents_of(X))
        if X.shape[1] != self.n_features_in_:
            raise InvalidInputError(f"X has {X.shape[1]} features, but IDF is expecting {self.n_features_in_} "
                                    f"features as input (argument X of transform()).")
        if sp.issparse(X):
            return (X @ sp.diags(self.idf_)).tocsr()
        return X * self.idf_


def _tf_matrix(X):
    if sp.issparse(X):
        X = X.tocsr().astype(np.float64)
        if X.shape[0] == 0:
            raise InvalidInputError("IDF got an empty term-frequency matrix (0 documents)")
        if not np.isfinite(X.data).all():
            raise InvalidInputError("the term-frequency matrix holds NaN or infinity")
        return X
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] == 0:
        raise InvalidInputError(f"IDF takes a 2-D term-frequency matrix with at least one row, got shape {X.shape}")
    if not np.isfinite(X).all():
        raise InvalidInputError("the term-frequency matrix holds NaN or infinity")
    return X


# ----------------------------------------------------------------------------------
# Dataset helpers (the block functions run in tasks)

def _check_column(ds, column, who):
    """Raise naming ``column`` when the Dataset (or an Arrow block) lacks it."""
    names = ds.column_names if hasattr(ds, "column_names") else ds.columns()
    if column not in names:
        raise InvalidInputError(f"column {column!r} (input_col of {who}) is missing from the Dataset; "
                                f"available columns: {names}; set input_col='<column>'")


def _add_column(table, name, array):
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, array)
    return table.append_column(name, array)


def _tokenize_table(table, tokenizer):
    """Runs in a task: split each document with Arrow's regex kernel, keep tokens long enough."""
    import pyarrow as pa
    import pyarrow.compute as pc
    col = _text_column(table, tokenizer, "Tokenizer")
    text = pc.utf8_lower(col) if tokenizer.to_lowercase else col
    tokens = pc.split_pattern_regex(text, tokenizer.pattern)
    tokens = tokens.combine_chunks() if isinstance(tokens, pa.ChunkedArray) else tokens
    if isinstance(tokens, pa.ChunkedArray):   # no chunks: an empty block
        tokens = pa.array([], type=pa.list_(pa.string()))
    words = tokens.flatten()
    keep = pc.greater_equal(pc.utf8_length(words), tokenizer.min_token_length).to_numpy(zero_copy_only=False)
    lengths = pc.list_value_length(tokens).to_numpy(zero_copy_only=False)
    row = np.repeat(np.arange(len(tokens)), lengths)
    kept = np.bincount(row[keep], minlength=len(tokens))
    offsets = np.concatenate([[0], np.cumsum(kept)]).astype(np.int32)
    out = pa.ListArray.from_arrays(pa.array(offsets), words.filter(pa.array(keep)))
    return _add_column(table, tokenizer.output_col, out)


def _hash_table(table, hashing_tf):
    """Runs in a task: the hashed term frequencies of each row's tokens as a sparse vector column.

    Tokens are dictionary-encoded first, so only each distinct token is hashed (by the same
    FeatureHasher as the array path); the counts are built with NumPy.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    _check_column(table, hashing_tf._column(), "HashingTF")
    col = table.column(hashing_tf._column())
    if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)):
        raise InvalidInputError(f"HashingTF takes token lists, but column {hashing_tf._column()!r} "
                                f"is {col.type}; run Tokenizer on the text first")
    n, width = table.num_rows, int(hashing_tf.num_features)
    col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False)
    words = col.flatten()
    if len(words) == 0:
        return _add_column(table, hashing_tf.output_col, csr_to_sparse_vectors(sp.csr_matrix((n, width))))
    encoded = pc.dictionary_encode(words)
    distinct = encoded.dictionary.to_pylist()
    hasher = FeatureHasher(n_features=width, input_type="string", alternate_sign=False)
    bucket_of = hasher.transform([[w] for w in distinct]).tocsr().indices   # one bucket per token
    buckets = bucket_of[encoded.indices.to_numpy(zero_copy_only=False)]
    rows = np.repeat(np.arange(n), lengths)
    X = sp.csr_matrix((np.ones(len(buckets)), (rows, buckets)), shape=(n, width))   # sums repeats
    X.sort_indices()
    if hashing_tf.binary:
        X.data[:] = 1.0
    return _add_column(table, hashing_tf.output_col, csr_to_sparse_vectors(X))


def _block_doc_freq(table, column):
    """Runs in a task: (documents, document frequency of each term) of one block."""
    col = table.column(column)
    if is_sparse_vector_type(col.type):
        X = sparse_vectors_to_csr(col)
        return X.shape[0], np.bincount(X.indices[X.data > 0], minlength=X.shape[1]).astype(np.float64)
    X = column_to_matrix(col, column)
    return X.shape[0], (X > 0).sum(axis=0).astype(np.float64)


def _idf_table(table, idf):
    """Runs in a task: the block with the tf-idf weighted column added (sparse stays sparse)."""
    _check_column(table, idf._column(), "IDF")
    col = table.column(idf._column())
    if is_sparse_vector_type(col.type):
        X = sparse_vectors_to_csr(col)
        if X.shape[0] and X.shape[1] != idf.n_features_in_:
            raise InvalidInputError(f"column {idf._column()!r} has {X.shape[1]} features, but IDF is "
                                    f"expecting {idf.n_features_in_}")
        X = sp.csr_matrix((X.data * idf.idf_[X.indices], X.indices, X.indptr),
                          shape=(X.shape[0], idf.n_features_in_))
        return _add_column(table, idf.output_col, csr_to_sparse_vectors(X))
    X = column_to_matrix(col, idf._column())
    return _add_column(table, idf.output_col, dense_to_vectors(X * idf.idf_))
