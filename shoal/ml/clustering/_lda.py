"""LDA: latent Dirichlet allocation by online variational Bayes (Spark's default optimizer,
scikit-learn's ``LatentDirichletAllocation``)."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.special import gammaln
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin

from shoal.exceptions import InvalidInputError
from shoal.ml._base import ShoalEstimatorMixin, check_fitted, fit_input
from shoal.ml._executor import held_by_shards, map_dataset_blocks, resolve_executor
from shoal.ml._input import (DesignMatrix, _is_dataset, check_predict_input, column_to_matrix,
                             dense_to_vectors, is_sparse_vector_type, sparse_vectors_to_csr)
from shoal.ml.clustering import _kernels as K

LEARNING_METHODS = ("online", "batch")
BLOCK_NONZEROS = 1 << 20


class LDA(ClassNamePrefixFeaturesOutMixin, ShoalEstimatorMixin, TransformerMixin, BaseEstimator):
    """Latent Dirichlet allocation, a topic model of word counts, fitted by variational Bayes
    (Spark's LDA with its default "online" optimizer; scikit-learn's LatentDirichletAllocation
    API and results).

    Each mini-batch step broadcasts the topic-word parameters lambda (n_components x
    n_features) to the blocks; every block runs the per-document E step on its share of the
    mini-batch (a contiguous slice, so one epoch visits every row once) as a task, and
    returns its sufficient statistics; the driver sums them and moves lambda towards
    ``topic_word_prior + n_rows / batch_rows * stats`` with weight ``(learning_offset +
    step) ** -learning_decay``. ``learning_method="batch"`` does one full E step per epoch
    and sets lambda to the prior plus the statistics. The documents never leave their blocks.

    Parameters (scikit-learn's names; Spark's ``k``, ``maxIter``, ``docConcentration``,
    ``topicConcentration``, ``learningOffset``, ``learningDecay``, ``seed`` are
    n_components, max_iter, doc_topic_prior, topic_word_prior, learning_offset,
    learning_decay, random_state):
        n_components: topics. doc_topic_prior / topic_word_prior: the Dirichlet priors alpha
        and eta (default 1 / n_components). learning_method: "online" or "batch".
        learning_decay (kappa, in (0.5, 1]) and learning_offset (tau0): the online step
        weights. max_iter: epochs (passes over the data). batch_size: documents per online
        mini-batch (across all blocks). evaluate_every: compute the perplexity every that
        many epochs (<= 0: never) and stop when it changes by less than perp_tol.
        mean_change_tol / max_doc_update_iter: the per-document E step's stopping rule.
        random_state: seeds lambda and the per-document starts.

    Input: a non-negative count matrix (documents x terms): a NumPy array, a SciPy sparse
    matrix, a DataFrame, or a Dataset column of (sparse) vectors such as CountVectorizer's
    or HashingTF's output (``features=["tf"]``).

    Fitted: components_ (lambda, (n_components, n_features)), exp_dirichlet_component_,
    doc_topic_prior_, topic_word_prior_, n_iter_, n_batch_iter_, bound_ (the last perplexity
    when evaluated), n_features_in_ (feature_names_in_ on named input).
    """

    _fits_design_matrix = True

    def __init__(self, n_components=10, *, doc_topic_prior=None, topic_word_prior=None,
                 learning_method="online", learning_decay=0.7, learning_offset=10.0, max_iter=10,
                 batch_size=128, evaluate_every=-1, perp_tol=1e-1, mean_change_tol=1e-3,
                 max_doc_update_iter=100, random_state=None):
        self.n_components = n_components
        self.doc_topic_prior = doc_topic_prior
        self.topic_word_prior = topic_word_prior
        self.learning_method = learning_method
        self.learning_decay = learning_decay
        self.learning_offset = learning_offset
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.evaluate_every = evaluate_every
        self.perp_tol = perp_tol
        self.mean_change_tol = mean_change_tol
        self.max_doc_update_iter = max_doc_update_iter
        self.random_state = random_state

    def _check_params(self):
        for name in ("n_components", "max_iter", "batch_size", "max_doc_update_iter"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise InvalidInputError(f"LDA {name}={v!r} must be a positive int")
        if self.learning_method not in LEARNING_METHODS:
            raise InvalidInputError(f"LDA learning_method={self.learning_method!r} must be one of "
                                    f"{LEARNING_METHODS}")
        if not (0.5 < self.learning_decay <= 1.0):
            raise InvalidInputError(f"LDA learning_decay={self.learning_decay!r} must be in (0.5, 1] "
                                    f"(the online updates converge only there)")
        if not self.learning_offset > 0:
            raise InvalidInputError(f"LDA learning_offset={self.learning_offset!r} must be > 0")
        for name in ("doc_topic_prior", "topic_word_prior"):
            v = getattr(self, name)
            if v is not None and not (np.isfinite(v) and v > 0):
                raise InvalidInputError(f"LDA {name}={v!r} must be > 0 (or None: 1 / n_components)")
        if not (self.mean_change_tol >= 0 and self.perp_tol >= 0):
            raise InvalidInputError("LDA mean_change_tol and perp_tol must be >= 0")

    # ------------------------------------------------------------------ input

    def _counts(self, X, y, features, label):
        """The count matrix as a DesignMatrix (sparse input keeps CSR blocks), checked >= 0."""
        if _is_dataset(X) and hasattr(X, "materialize"):
            X = X.materialize()
        if _is_dataset(X) and features is not None and len(features) == 1:
            column = features[0]
            schema = X.schema()
            if schema is not None and column in schema.names and \
                    is_sparse_vector_type(schema.field(column).type):
                parts = [p for p in map_dataset_blocks(X, _block_csr, column) if p.shape[0]]
                if not parts:
                    raise InvalidInputError(f"the Dataset given to LDA is empty (0 rows in {column!r})")
                width = max(p.shape[1] for p in parts)
                parts = [sp.csr_matrix((p.data, p.indices, p.indptr), shape=(p.shape[0], width))
                         for p in parts]
                dm = _sparse_design(parts, resolve_executor(None, 0, True))
                self.n_features_in_, self.feature_names_in_ = width, np.asarray([column], dtype=object)
                return self._nonnegative(dm)
        if sp.issparse(X):
            X = sp.csr_matrix(X, dtype=np.float64)
            if X.shape[0] < 1 or X.shape[1] < 1:
                raise InvalidInputError(f"LDA got an empty count matrix of shape {X.shape}")
            if not np.isfinite(X.data).all():
                raise InvalidInputError("the count matrix given to LDA holds NaN or infinity")
            ex = resolve_executor(None, X.nnz, False)
            rows = max(1, int(BLOCK_NONZEROS * X.shape[0] / max(X.nnz, 1)))
            dm = _sparse_design([X[i:i + rows] for i in range(0, X.shape[0], rows)], ex)
            self.n_features_in_ = X.shape[1]
            if hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
            return self._nonnegative(dm)
        return self._nonnegative(fit_input(self, X, y, None, features=features, label=label))

    @staticmethod
    def _nonnegative(dm):
        if min(dm.map(K.lda_min_count)) < 0:
            raise InvalidInputError("Negative values in data passed to LDA (X holds word counts; "
                                    "they must be >= 0)")
        return dm

    def _matrix(self, X, method):
        """Predict-time input as CSR or a dense float array, checked against the fit."""
        check_fitted(self, "components_")
        if sp.issparse(X):
            X = sp.csr_matrix(X, dtype=np.float64)
            if X.shape[1] != self.n_features_in_:
                raise InvalidInputError(f"X has {X.shape[1]} features, but LDA is expecting "
                                        f"{self.n_features_in_} features as input (argument X of "
                                        f"{method}()).")
            data = X.data
        else:
            X = check_predict_input(self, X, method)
            data = X
        if (data < 0).any():
            raise InvalidInputError(f"Negative values in data passed to LDA.{method} (word counts "
                                    f"must be >= 0)")
        return X

    # ------------------------------------------------------------------ fit

    def fit(self, X, y=None, *, features=None, label=None):
        """Learn the topics from a document-term count matrix; returns self."""
        self._check_params()
        dm = self._counts(X, y, features, label)
        k, V, n = self.n_components, dm.n_features, dm.n_rows
        rs = self.random_state
        rng = rs if isinstance(rs, np.random.RandomState) else np.random.RandomState(rs)
        self.doc_topic_prior_ = 1.0 / k if self.doc_topic_prior is None else float(self.doc_topic_prior)
        self.topic_word_prior_ = 1.0 / k if self.topic_word_prior is None else float(self.topic_word_prior)
        self._set_components(rng.gamma(100.0, 0.01, (k, V)))
        self.n_batch_iter_, self.bound_ = 1, None
        online = self.learning_method == "online"
        n_steps = max(1, -(-n // self.batch_size)) if online else 1
        last_bound = None
        with held_by_shards(dm) as held:
            for epoch in range(1, self.max_iter + 1):
                for step in range(n_steps):
                    seed = int(rng.randint(0, 2**31 - 1))
                    parts = held.map_indexed(K.lda_e_step, self.exp_dirichlet_component_,
                                             self.doc_topic_prior_, self.max_doc_update_iter,
                                             self.mean_change_tol, seed, step, n_steps)
                    stats = sum(p[0] for p in parts) * self.exp_dirichlet_component_
                    seen = sum(p[1] for p in parts)
                    if online:
                        if seen == 0:
                            continue
                        weight = (self.learning_offset + self.n_batch_iter_) ** -self.learning_decay
                        target = self.topic_word_prior_ + (n / seen) * stats
                        self._set_components((1.0 - weight) * self.components_ + weight * target)
                    else:
                        self._set_components(self.topic_word_prior_ + stats)
                    self.n_batch_iter_ += 1
                self.n_iter_ = epoch
                if self.evaluate_every > 0 and epoch % self.evaluate_every == 0:
                    bound = self._perplexity(held)
                    self.bound_ = bound
                    if last_bound is not None and abs(last_bound - bound) < self.perp_tol:
                        break
                    last_bound = bound
        return self

    def _set_components(self, lam):
        self.components_ = lam
        self.exp_dirichlet_component_ = np.exp(K.dirichlet_expectation(lam))

    # ------------------------------------------------------------------ transform and scores

    def transform(self, X):
        """Each document's topic distribution, (n, n_components), rows summing to 1 (on a Dataset:
        the Dataset with a ``topicDistribution`` vector column appended, Spark's outputCol)."""
        if _is_dataset(X):
            check_fitted(self, "components_")
            return X.map_batches(_transform_block, batch_format="pyarrow", fn_args=(self,))
        gamma = self._gamma(self._matrix(X, "transform"))
        return gamma / gamma.sum(axis=1, keepdims=True)

    def _gamma(self, X):
        return K.lda_transform(X, self.exp_dirichlet_component_, self.doc_topic_prior_,
                               self.max_doc_update_iter, self.mean_change_tol)

    def _topic_word_bound(self):
        lam, eta = self.components_, self.topic_word_prior_
        log_beta = K.dirichlet_expectation(lam)
        return float(((eta - lam) * log_beta).sum() + (gammaln(lam) - gammaln(eta)).sum()
                     + (gammaln(eta * lam.shape[1]) - gammaln(lam.sum(axis=1))).sum())

    def _bound(self, dm):
        """(variational bound of the documents, their word count), the documents' part per block."""
        doc, words = dm.map_reduce(K.lda_doc_bound, self.exp_dirichlet_component_,
                                   K.dirichlet_expectation(self.components_), self.doc_topic_prior_,
                                   self.max_doc_update_iter, self.mean_change_tol)
        return doc + self._topic_word_bound(), words

    def _perplexity(self, dm):
        bound, words = self._bound(dm)
        return float(np.exp(-bound / max(words, 1e-300)))

    def _scored(self, X, method):
        if _is_dataset(X) or isinstance(X, DesignMatrix):
            saved = (self.n_features_in_, getattr(self, "feature_names_in_", None))
            features = None if saved[1] is None else list(saved[1])
            dm = X if isinstance(X, DesignMatrix) else self._counts(X, None, features, None)
            self.n_features_in_ = saved[0]
            if dm.n_features != self.n_features_in_:
                raise InvalidInputError(f"the Dataset has {dm.n_features} features, but LDA is "
                                        f"expecting {self.n_features_in_}")
            return self._bound(dm)
        X = self._matrix(X, method)
        return self._bound(DesignMatrix([(X, None)], [X.shape[0]], X.shape[1], None,
                                        resolve_executor("local", 0, False)))

    def score(self, X, y=None):
        """The approximate log-likelihood (variational bound) of X, as scikit-learn's score."""
        return self._scored(X, "score")[0]

    def perplexity(self, X):
        """exp(-bound / word count) of X: lower is better."""
        bound, words = self._scored(X, "perplexity")
        return float(np.exp(-bound / max(words, 1e-300)))

    def log_likelihood(self, X):
        """Spark's logLikelihood: the variational lower bound of X's likelihood (= score)."""
        return self.score(X)

    def log_perplexity(self, X):
        """Spark's logPerplexity: -bound / word count (the log of perplexity)."""
        bound, words = self._scored(X, "log_perplexity")
        return float(-bound / max(words, 1e-300))

    def describe_topics(self, max_terms_per_topic=10):
        """Spark's describeTopics: per topic, (term indices, term weights) of its heaviest
        terms, weights from the normalised topic-word distribution, heaviest first."""
        check_fitted(self, "components_")
        beta = self.components_ / self.components_.sum(axis=1, keepdims=True)
        top = np.argsort(-beta, axis=1, kind="stable")[:, :max_terms_per_topic]
        return [(idx, beta[t, idx]) for t, idx in enumerate(top)]

    def topics_matrix(self):
        """Spark's topicsMatrix: the topic-word distributions, (n_features, n_components)."""
        check_fitted(self, "components_")
        return (self.components_ / self.components_.sum(axis=1, keepdims=True)).T

    @property
    def _n_features_out(self):
        return self.components_.shape[0]

    def _dataset_columns_io(self):
        return list(self.feature_names_in_), ["topicDistribution"]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.input_tags.positive_only = True
        tags.transformer_tags.preserves_dtype = ["float64"]
        return tags


def _sparse_design(parts, executor):
    return DesignMatrix([executor.put((p, None)) for p in parts], [p.shape[0] for p in parts],
                        parts[0].shape[1], None, executor)


def _block_csr(table, column):
    """Runs in a task: a block's sparse vector column as CSR."""
    if column not in table.column_names:
        raise InvalidInputError(f"column {column!r} is missing from the Dataset given to LDA; "
                                f"available columns: {table.column_names}")
    return sparse_vectors_to_csr(table.column(column))


def _transform_block(table, lda):
    """Runs in a task: the block with its topicDistribution column appended."""
    names = getattr(lda, "feature_names_in_", None)
    if names is None:
        raise InvalidInputError("LDA was fitted on an unnamed array; fit it on the Dataset (features=[...]) "
                                "to transform a Dataset")
    missing = [c for c in names if c not in table.column_names]
    if missing:
        raise InvalidInputError(f"column(s) {missing} are missing from the Dataset given to LDA.transform; "
                                f"available columns: {table.column_names}")
    if len(names) == 1 and is_sparse_vector_type(table.schema.field(names[0]).type):
        X = sparse_vectors_to_csr(table.column(names[0]))
        X = sp.csr_matrix((X.data, X.indices, X.indptr), shape=(X.shape[0], lda.n_features_in_))
    else:
        X = np.hstack([column_to_matrix(table.column(c), c) for c in names])
    gamma = lda._gamma(X) if X.shape[0] else np.ones((0, lda.n_components))
    out = dense_to_vectors(gamma / gamma.sum(axis=1, keepdims=True))
    if "topicDistribution" in table.column_names:
        return table.set_column(table.column_names.index("topicDistribution"), "topicDistribution", out)
    return table.append_column("topicDistribution", out)


LatentDirichletAllocation = LDA   # scikit-learn's name for the same estimator
