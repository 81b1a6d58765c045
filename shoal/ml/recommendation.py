"""Recommendation: alternating least squares (Spark MLlib's ALS) with scikit-learn's API."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
from sklearn.base import BaseEstimator

from shoal.exceptions import InvalidInputError, TaskError
from shoal.ml import _als_blocks as blocks
from shoal.ml._base import ShoalEstimatorMixin, check_fitted
from shoal.ml._columns import as_frame, is_table, resolve_fit_columns
from shoal.ml._executor import _is_dataset

COLD_START_STRATEGIES = ("nan", "drop")


class ALS(ShoalEstimatorMixin, BaseEstimator):
    """Matrix factorisation of a ratings table by alternating least squares (Spark's ALS).

    Fits user and item factors of length ``rank`` so that their dot product
    approximates each rating. Users and items are hashed into
    ``num_user_blocks`` / ``num_item_blocks`` blocks; each half-iteration is
    one task per block solving the normal equations of its rows, sent only the
    rows of the other factor it needs, so the rating matrix never sits in one
    process (Spark's blocked design). Regularisation is ``reg_param`` times each
    row's rating count (ALS-WR, as Spark).

    Parameters (Spark's names in snake case):
        rank: length of the factors. max_iter: full iterations (items, then users).
        reg_param: regularisation. implicit_prefs: treat ratings as implicit
        feedback (Hu, Koren and Volinsky: preference ``r > 0``, confidence
        ``1 + alpha |r|``, every unobserved pair a zero with confidence 1).
        alpha: the confidence scale for implicit feedback. nonnegative: constrain
        factors to be >= 0 (a non-negative least-squares solve per row).
        cold_start_strategy: "nan" (a user or item not seen in fit predicts NaN)
        or "drop" (``predict`` on a Dataset drops those rows, so an evaluator
        sees only scorable pairs). user_col, item_col, rating_col: the columns
        (Spark's userCol/itemCol/ratingCol); ``fit(ds, features=[user, item],
        label=rating)`` names them too. num_user_blocks, num_item_blocks: blocks
        (None: the cluster's CPUs). random_state: seeds the initial factors.

    ``fit(X)``: X a shoal.data Dataset, pandas/Polars DataFrame or Arrow Table
    with integer user and item ids (text ids: index them with StringIndexer) and
    numeric ratings, or an array of (user, item) pairs with the ratings as y.
    A null id, a rating column of strings or NaN ratings raise InvalidInputError
    naming the column.

    Fitted: user_ids_ / item_ids_ (sorted ids seen in fit), user_factors_ /
    item_factors_ (one row per id, in that order), rank_, n_features_in_,
    feature_names_in_ (the user and item columns).
    """

    def __init__(self, rank=10, *, max_iter=10, reg_param=0.1, implicit_prefs=False, alpha=1.0,
                 nonnegative=False, cold_start_strategy="nan", user_col="user", item_col="item",
                 rating_col="rating", prediction_col="prediction", num_user_blocks=None,
                 num_item_blocks=None, random_state=None):
        self.rank = rank
        self.max_iter = max_iter
        self.reg_param = reg_param
        self.implicit_prefs = implicit_prefs
        self.alpha = alpha
        self.nonnegative = nonnegative
        self.cold_start_strategy = cold_start_strategy
        self.user_col = user_col
        self.item_col = item_col
        self.rating_col = rating_col
        self.prediction_col = prediction_col
        self.num_user_blocks = num_user_blocks
        self.num_item_blocks = num_item_blocks
        self.random_state = random_state

    # -------------------------------------------------------------- fit ---

    def _check_params(self):
        def positive_int(name):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise InvalidInputError(f"ALS {name}={v!r} must be a positive int")
        positive_int("rank")
        for name in ("num_user_blocks", "num_item_blocks"):
            if getattr(self, name) is not None:
                positive_int(name)
        if not isinstance(self.max_iter, (int, np.integer)) or self.max_iter < 0:
            raise InvalidInputError(f"ALS max_iter={self.max_iter!r} must be a non-negative int")
        if not np.isfinite(self.reg_param) or self.reg_param < 0:
            raise InvalidInputError(f"ALS reg_param={self.reg_param!r} must be >= 0")
        if not np.isfinite(self.alpha) or self.alpha < 0:
            raise InvalidInputError(f"ALS alpha={self.alpha!r} must be >= 0")
        if self.cold_start_strategy not in COLD_START_STRATEGIES:
            raise InvalidInputError(f"ALS cold_start_strategy={self.cold_start_strategy!r} must "
                                    f"be one of {COLD_START_STRATEGIES}")

    def _columns(self, features, label) -> tuple[str, str, str]:
        if features is not None and len(features) != 2:
            raise InvalidInputError(f"ALS.fit(): features= names the user and the item column "
                                    f"(two names), got {features!r}")
        user, item = features if features is not None else (self.user_col, self.item_col)
        return user, item, label if label is not None else self.rating_col

    def fit(self, X, y=None, *, features=None, label=None):
        """Learn the user and item factors from the ratings in X; returns self."""
        import shoal
        import shoal.data as sd

        self._check_params()
        y, features, label = resolve_fit_columns(X, y, features=features, label=label,
                                                 estimator=self)
        cols = self._columns(features, label)
        ds = self._as_dataset(X, y, cols, sd)
        schema = ds.schema()
        missing = [c for c in cols if c not in schema.names]
        if missing:
            raise InvalidInputError(
                f"column {missing[0]!r} is missing from X (ALS reads user, item and rating "
                f"columns {list(cols)}); available columns: {schema.names}. Name them with "
                f"features=[user, item], label=rating or user_col=/item_col=/rating_col=.")
        blocks.check_rating_types(schema, *cols)
        cpus = max(1, int(shoal.cluster_resources().get("CPU", 1)))
        nu, ni = self.num_user_blocks or cpus, self.num_item_blocks or cpus
        try:
            U, V = self._train(shoal, ds.get_internal_block_refs(), cols, nu, ni)
        except TaskError as e:  # bad input found in a block: the cause names the column
            if isinstance(e.cause, InvalidInputError):
                raise e.cause from None
            raise
        (self.user_ids_, self.user_factors_), (self.item_ids_, self.item_factors_) = U, V
        if len(self.user_ids_) == 0:
            raise InvalidInputError("ALS.fit() got no ratings (X has no rows)")
        self.rank_ = int(self.rank)
        self.feature_names_in_ = np.array(cols[:2], dtype=object)
        self.n_features_in_ = 2
        self._rating_col = cols[2]
        return self

    def _as_dataset(self, X, y, cols, sd):
        if _is_dataset(X):
            return X.materialize()
        if is_table(X):
            frame = as_frame(X)
            table = pa.Table.from_pandas(frame[[c for c in cols if c in frame.columns]],
                                         preserve_index=False)
            return sd.from_arrow(table)
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != 2:
            raise InvalidInputError(f"ALS.fit(X, y): X must be (n, 2) pairs of (user, item) ids, "
                                    f"got shape {X.shape}; or give a table with named columns")
        if y is None:
            raise InvalidInputError("ALS.fit(X, y): y, the ratings, is missing")
        y = np.asarray(y)
        if len(y) != len(X):
            raise InvalidInputError(f"ALS.fit(X, y): {len(X)} pairs but {len(y)} ratings")
        return sd.from_arrow(pa.table({cols[0]: X[:, 0], cols[1]: X[:, 1], cols[2]: y}))

    def _train(self, shoal, refs, cols, nu, ni):
        part = shoal.remote(blocks.partition_ratings)
        build = shoal.remote(blocks.build_block)
        solve = shoal.remote(blocks.solve_block)
        parts = [part.options(num_returns=nu + ni).remote(cols, nu, ni, ref) for ref in refs]
        parts = [p if isinstance(p, list) else [p] for p in parts]
        seed = int(np.random.SeedSequence(self.random_state).generate_state(1, np.uint64)[0])
        nonneg = bool(self.nonnegative)

        def build_side(n, n_other, offset, salt):
            out = [build.options(num_returns=3 + n_other).remote(
                b, n_other, int(self.rank), seed + salt, nonneg, *[p[offset + b] for p in parts])
                for b in range(n)]
            return ([o[0] for o in out], [o[1] for o in out], [o[2:2 + n_other] for o in out],
                    [o[-1] for o in out])
        users = build_side(nu, ni, 0, 0)
        items = build_side(ni, nu, nu, 1)
        del parts
        params = (float(self.reg_param), bool(self.implicit_prefs), float(self.alpha), nonneg,
                  int(self.rank))

        def half(side, other):
            """New factors of ``side`` from what ``other`` sent it (Spark: computeFactors)."""
            layouts = side[0]
            gram = sum(shoal.get(other[3])) if self.implicit_prefs else None
            n = len(layouts)
            n_other = len(other[0])
            out = [solve.options(num_returns=2 + n_other).remote(
                layouts[b], params, gram, *[other[2][j][b] for j in range(n_other)])
                for b in range(n)]
            return (layouts, [o[0] for o in out], [o[1:1 + n_other] for o in out],
                    [o[-1] for o in out])
        # Spark's order: items from the (random) users, then users from the items
        for _ in range(int(self.max_iter)):
            items = half(items, users)
            users = half(users, items)
        ids = shoal.remote(blocks.block_ids)
        result = []
        for side in (users, items):
            id_parts = shoal.get([ids.remote(layout) for layout in side[0]])
            factors = shoal.get(side[1])
            all_ids = np.concatenate(id_parts) if id_parts else np.zeros(0, np.int64)
            all_f = np.vstack(factors) if factors else np.zeros((0, int(self.rank)))
            order = np.argsort(all_ids, kind="stable")
            result.append((all_ids[order], np.ascontiguousarray(all_f[order])))
        return result

    # ---------------------------------------------------------- predict ---

    def predict(self, X):
        """Predicted ratings of (user, item) pairs: NaN for an id not seen in fit.

        X a Dataset: the Dataset with ``prediction_col`` appended (rows of unseen
        ids dropped when ``cold_start_strategy="drop"``). X a DataFrame or
        Table: an array over its user and item columns. X an (n, 2) array of
        (user, item) ids: an array.
        """
        check_fitted(self, "user_factors_")
        user, item = (str(c) for c in self.feature_names_in_)
        if _is_dataset(X):
            return X.map_batches(
                blocks.predict_table, batch_format="pyarrow",
                fn_args=((user, item), self.user_ids_, self.user_factors_, self.item_ids_,
                         self.item_factors_, self.cold_start_strategy == "drop",
                         self.prediction_col))
        if is_table(X):
            table = pa.Table.from_pandas(as_frame(X)[[user, item]], preserve_index=False)
            u = blocks.id_array(table.column(user), user, "user")
            i = blocks.id_array(table.column(item), item, "item")
        else:
            X = np.asarray(X)
            if X.ndim != 2 or X.shape[1] != 2:
                raise InvalidInputError(f"ALS.predict(X): X must be (n, 2) pairs of (user, item) "
                                        f"ids, got shape {X.shape}")
            u = blocks.id_array(pa.array(X[:, 0]), "X[:, 0]", "user")
            i = blocks.id_array(pa.array(X[:, 1]), "X[:, 1]", "item")
        return blocks.predict_pairs(u, i, self.user_ids_, self.user_factors_, self.item_ids_,
                                    self.item_factors_)

    # -------------------------------------------------- recommendations ---

    def recommend_for_all_users(self, k: int):
        """The top ``k`` items of every user: a Dataset of the user column and
        ``recommendations``, a list of ``{item, rating}`` structs, best first (Spark's
        ``recommendForAllUsers``). One task per block of users."""
        check_fitted(self, "user_factors_")
        return self._recommend(self.user_ids_, self.user_factors_, self.item_ids_,
                               self.item_factors_, k, self.num_user_blocks, user_side=True)

    def recommend_for_all_items(self, k: int):
        """The top ``k`` users of every item (Spark's ``recommendForAllItems``)."""
        check_fitted(self, "user_factors_")
        return self._recommend(self.item_ids_, self.item_factors_, self.user_ids_,
                               self.user_factors_, k, self.num_item_blocks, user_side=False)

    def recommend_for_user_subset(self, users, k: int):
        """The top ``k`` items of each of ``users`` (ids, or a Dataset/table with the user
        column); users not seen in fit are left out (Spark's ``recommendForUserSubset``)."""
        check_fitted(self, "user_factors_")
        pos = self._subset(users, self.user_ids_, str(self.feature_names_in_[0]))
        return self._recommend(self.user_ids_[pos], self.user_factors_[pos], self.item_ids_,
                               self.item_factors_, k, self.num_user_blocks, user_side=True)

    def recommend_for_item_subset(self, items, k: int):
        """The top ``k`` users of each of ``items`` (Spark's ``recommendForItemSubset``)."""
        check_fitted(self, "user_factors_")
        pos = self._subset(items, self.item_ids_, str(self.feature_names_in_[1]))
        return self._recommend(self.item_ids_[pos], self.item_factors_[pos], self.user_ids_,
                               self.user_factors_, k, self.num_item_blocks, user_side=False)

    def _subset(self, wanted, ids, column):
        if _is_dataset(wanted):
            wanted = wanted.select_columns([column]).to_numpy(column)
        elif is_table(wanted):
            wanted = as_frame(wanted)[column].to_numpy()
        wanted = blocks.id_array(pa.array(np.unique(np.asarray(wanted).ravel())), column, "subset")
        pos, found = blocks.lookup(ids, wanted)
        return pos[found]

    def _recommend(self, ids, X, other_ids, Y, k, n_blocks, user_side):
        import shoal
        import shoal.data as sd

        if not isinstance(k, (int, np.integer)) or k < 1:
            raise InvalidInputError(f"recommend: k={k!r} must be a positive int")
        names = [str(c) for c in self.feature_names_in_]
        id_name, other_name = names if user_side else names[::-1]
        n = n_blocks or max(1, int(shoal.cluster_resources().get("CPU", 1)))
        task = shoal.remote(blocks.recommend_block)
        other_ids_ref, Y_ref = shoal.put(other_ids), shoal.put(Y)
        bounds = np.linspace(0, len(ids), min(n, max(len(ids), 1)) + 1).astype(np.int64)
        refs = [task.remote(ids[a:b], X[a:b], other_ids_ref, Y_ref, int(k), id_name, other_name)
                for a, b in zip(bounds[:-1], bounds[1:])]
        return sd.from_block_refs(refs)


__all__ = ["ALS"]
