"""Text features: Tokenizer, HashingTF (the hashing trick) and IDF (Spark's smoothed formula)."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.feature_extraction import FeatureHasher

from shoal.exceptions import InvalidInputError
from shoal.ml._base import ShoalEstimatorMixin, check_fitted


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


class Tokenizer(ShoalEstimatorMixin, TransformerMixin, BaseEstimator):
    """Lower-case each document and split it on ``pattern`` (a regex; default whitespace)."""

    def __init__(self, *, pattern=r"\s+", to_lowercase=True, min_token_length=1):
        self.pattern = pattern
        self.to_lowercase = to_lowercase
        self.min_token_length = min_token_length

    def fit(self, X=None, y=None):
        return self

    def transform(self, X):
        s = _documents(X, "Tokenizer").astype(str)
        if self.to_lowercase:
            s = s.str.lower()
        tokens = s.str.split(self.pattern, regex=True)
        m = self.min_token_length
        return np.array([[t for t in row if len(t) >= m] for row in tokens], dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        return tags


class HashingTF(ShoalEstimatorMixin, TransformerMixin, BaseEstimator):
    """Term frequencies of token lists hashed into ``num_features`` columns (sparse CSR output)."""

    def __init__(self, num_features=1 << 18, *, binary=False):
        self.num_features = num_features
        self.binary = binary

    def fit(self, X=None, y=None):
        return self

    def transform(self, X):
        if not (isinstance(self.num_features, (int, np.integer)) and self.num_features >= 1):
            raise InvalidInputError(f"num_features must be a positive integer, got {self.num_features!r}")
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


class IDF(ShoalEstimatorMixin, TransformerMixin, BaseEstimator):
    """Inverse document frequency weights: idf = log((m + 1) / (df + 1)) (Spark's formula);
    terms in fewer than ``min_doc_freq`` documents get weight 0."""

    def __init__(self, *, min_doc_freq=0):
        self.min_doc_freq = min_doc_freq

    def fit(self, X, y=None):
        X = _tf_matrix(X)
        m = X.shape[0]
        df = np.asarray((X > 0).sum(axis=0)).ravel().astype(np.float64)
        idf = np.log((m + 1.0) / (df + 1.0))
        idf[df < self.min_doc_freq] = 0.0
        self.idf_ = idf
        self.doc_freq_ = df
        self.num_docs_ = m
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X):
        check_fitted(self, "idf_")
        X = _tf_matrix(X)
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
