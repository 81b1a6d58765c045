"""Shards of binned rows that live across tree-growing passes.

A ``HistShard`` holds some blocks of the design matrix, binned once to uint8,
plus the per-row state of the trees being grown (which node each row is in,
its bootstrap weight or gradient). On the cluster each shard is a shoal actor,
so the binned data and the row state stay where they are between passes and
the driver sends only splits; in-process the same class is used directly.
Random draws are seeded per (tree, chunk of global rows), so a fit does not
depend on how rows are cut into blocks or spread over shards.
"""
from __future__ import annotations

import math

import numpy as np

from shoal.exceptions import ActorDiedError, InvalidInputError, WorkerCrashedError
from shoal.ml._executor import _ShardPool, kill_actors, pool_size
from shoal.ml._hist import bin_matrix, row_randoms
from shoal.ml._tree_kernels import add_tree, binary_gradients, level_pass

MAX_SHARD_LOSSES = 3      # shard actors a fit may lose (and replace) before it gives up


class ShardLost(Exception):
    """Shard actors died during a call; they have been replaced by fresh ones (binned, without
    tree state). ``indices``: the replaced shards, whose state the fit must rebuild."""

    def __init__(self, indices: list[int]):
        super().__init__(f"tree shards {indices} died and were replaced")
        self.indices = indices


class _RowState:
    """The rows of one tree still in open nodes: the first ``m`` entries of each array are
    live (the level kernel compacts them in place as rows reach leaves). Per-row statistics
    are float32 by default, as HistGradientBoosting's gradients (sums are float64): half
    the bytes each level reads. A regression forest's are float64: its statistics hold the
    raw targets (w * y), where float32 would lose a large target's digits."""

    __slots__ = ("rows", "slot", "W", "codes", "m")

    def __init__(self, rows, W, codes=None, dtype=np.float32):
        self.rows = np.ascontiguousarray(rows, dtype=np.int32)
        self.slot = np.zeros(rows.shape[0], np.int32)
        self.W = np.ascontiguousarray(W, dtype=dtype)     # (rows, statistics)
        self.codes = _NO_I32 if codes is None else np.ascontiguousarray(codes, dtype=np.int32)
        self.m = int(rows.shape[0])

    def level(self, Xb, splits, cmap, feats, n_slots: int, n_bins: int, n_classes: int):
        """Apply the previous level's splits and return this level's histograms,
        (n_slots, k, n_bins, n_statistics * n_classes), in the order (statistic, class).
        cmap: slot -> histogram index, -1 where derived (None: every slot, in order)."""
        if splits is None:
            feature, bins, child = _NO_I32, _NO_U8, _NO_CHILD
        else:
            feature, bins, left, right = splits
            feature = feature.astype(np.int32)
            bins = bins.astype(np.uint8)
            child = np.column_stack([left, right]).astype(np.int32)
        k = Xb.shape[1] if feats is None else feats.shape[1]
        hist = np.zeros((n_slots, k, n_bins, self.W.shape[1] * n_classes))
        cmap = np.arange(n_slots, dtype=np.int32) if cmap is None else cmap.astype(np.int32)
        self.m = level_pass(Xb, self.rows, self.slot, self.W, self.codes, self.m, feature, bins,
                            child, cmap, _NO_FEATS if feats is None else feats.astype(np.int32),
                            hist, n_classes)
        return hist


_NO_I32 = np.zeros(0, np.int32)
_NO_U8 = np.zeros(0, np.uint8)
_NO_CHILD = np.zeros((0, 2), np.int32)
_NO_FEATS = np.zeros((0, 0), np.int32)


class HistShard:
    """Binned blocks plus per-row tree state; every method is one step of a fit."""

    def __init__(self, blocks, row_offset: int, edges: np.ndarray, n_classes: int = 0):
        blocks = _resolve(blocks)
        self.row_offset = int(row_offset)     # global index of this shard's first row
        self.block_sizes = [int(b[0].shape[0]) for b in blocks]
        self.n_bins = edges.shape[1] + 1
        self.n_features = edges.shape[0]
        n = sum(self.block_sizes)
        if n >= 2**31:
            raise InvalidInputError(f"a tree shard holds {n} rows, over the 2**31 - 1 it can "
                                    "index; run the fit on more workers (one shard per CPU)")
        # row-major bins: a row's codes are contiguous for the level kernel
        self.Xb = np.empty((n, edges.shape[0]), dtype=np.uint8)
        offsets = np.concatenate(([0], np.cumsum(self.block_sizes)))
        for (X, _), a, b in zip(blocks, offsets[:-1], offsets[1:]):
            bin_matrix(np.asarray(X), edges, out=self.Xb[a:b])
        y = np.concatenate([np.asarray(b[1]) for b in blocks])
        self.n_classes = n_classes
        self.y = y.astype(np.int32) if n_classes else y.astype(np.float64)
        self.states: list = []
        self.raw = None
        self.rounds_done = 0     # boosting rounds added to raw (end_round is idempotent per round)

    def n_rows(self) -> int:
        return int(self.Xb.shape[0])

    # -- random forests -------------------------------------------------------------
    def start_forest(self, seed: int, tree_ids, bootstrap: bool, regression: bool,
                     offset: float = 0.0):
        """Per-tree row weights: Poisson(1) per row as Spark's bagging, or 1 without bootstrap.
        A regression forest's second statistic is w * (y - offset) (see ``_tree.Variance``)."""
        self.states = []
        for t in tree_ids:
            if bootstrap:
                w = row_randoms(_poisson, [seed, 1, int(t)], self.row_offset, self.n_rows()
                                ).astype(np.float64)
                rows = np.flatnonzero(w).astype(np.int32)
                w = w[rows]
            else:
                rows = np.arange(self.n_rows(), dtype=np.int32)
                w = np.ones(rows.shape[0])
            if regression:
                self.states.append(_RowState(rows, np.column_stack([w, w * (self.y[rows] - offset)]),
                                             dtype=np.float64))
            else:
                self.states.append(_RowState(rows, w[:, None], self.y[rows]))

    # -- gradient boosting ----------------------------------------------------------
    def label_counts(self) -> np.ndarray:
        return np.bincount(self.y, minlength=self.n_classes)

    def label_sum(self) -> np.ndarray:
        return np.array([float(self.y.sum()), float(self.y.shape[0])])

    def start_boosting(self, init: np.ndarray):
        self.raw = np.tile(np.asarray(init, np.float64), (self.n_rows(), 1))
        self.rounds_done = 0

    def start_round(self, loss: str, seed: int, round_id: int, subsample: float, with_count: bool):
        """Gradients and hessians of the loss at the current raw predictions, one tree per output
        (squared error: the hessian is the count)."""
        if subsample < 1.0:
            mask = row_randoms(_uniform, [seed, 2, int(round_id)], self.row_offset,
                               self.n_rows()) < subsample
            rows = np.flatnonzero(mask).astype(np.int32)
        else:
            rows = np.arange(self.n_rows(), dtype=np.int32)
        extra = 1 if with_count and loss != "squared_error" else 0
        if loss == "binary":
            W = np.empty((rows.shape[0], 2 + extra), np.float32)
            binary_gradients(self.raw, self.y, rows, W)
            Ws = [W]
        elif loss == "squared_error":
            W = np.ones((rows.shape[0], 2), np.float32)
            np.subtract(self.raw[rows, 0], self.y[rows], out=W[:, 0])
            Ws = [W]
        else:  # multinomial: one tree per class
            raw = self.raw[rows]
            z = raw - raw.max(axis=1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(axis=1, keepdims=True)
            onehot = self.y[rows, None] == np.arange(raw.shape[1])
            Ws = []
            for k in range(raw.shape[1]):
                W = np.empty((rows.shape[0], 2 + extra), np.float32)
                W[:, 0] = p[:, k] - onehot[:, k]
                W[:, 1] = p[:, k] * (1.0 - p[:, k])
                Ws.append(W)
        if extra:
            for W in Ws:
                W[:, 2] = 1.0
        self.states = [_RowState(rows, W) for W in Ws]

    def end_round(self, trees, learning_rate: float, round_id: int):
        """Add round ``round_id``'s trees to the raw predictions, once: a round replayed after
        another shard died is skipped where it was already added."""
        if round_id < self.rounds_done:
            return
        if round_id != self.rounds_done:
            raise RuntimeError(f"boosting round {round_id} reached a shard that has "
                               f"{self.rounds_done} rounds")
        for k, tree in enumerate(trees):
            is_split = tree.feature >= 0     # a leaf is its own child on both sides
            ids = np.arange(tree.n_nodes)
            child = np.column_stack([np.where(is_split, tree.left, ids),
                                     np.where(is_split, tree.right, ids)]).astype(np.int32)
            add_tree(self.Xb, np.maximum(tree.feature, 0).astype(np.int32),
                     np.where(is_split, tree.bin, 255).astype(np.int32), child.reshape(-1),
                     int(tree.max_depth), np.ascontiguousarray(tree.value[:, 0], dtype=np.float64),
                     float(learning_rate), self.raw, k)
        self.rounds_done += 1

    def next_round(self, previous, round_args, requests):
        """One call per boosting round: add the previous round's trees (``previous``: the
        arguments of ``end_round``, or None), start this round (``start_round``'s
        arguments) and return the first level's histograms."""
        if previous is not None:
            self.end_round(*previous)
        self.start_round(*round_args)
        return self.level(requests)

    # -- one level of every tree ------------------------------------------------------
    def level(self, requests):
        out = []
        for st, req in zip(self.states, requests):
            if req is None:
                out.append(None)
                continue
            splits, feats, cmap, n_slots = req
            n_classes = self.n_classes if st.codes.shape[0] else 1
            out.append(st.level(self.Xb, splits, cmap, feats, n_slots, self.n_bins, n_classes))
        return out


# Poisson(1) by its inverse distribution function on float32 uniforms: 1.2-1.7x faster than
# Generator.poisson (measured per 400k draws), and the same distribution (the table runs
# past 1 - 2**-24)
_POISSON1_CDF = np.cumsum([np.exp(-1.0) / math.factorial(k) for k in range(14)]).astype(np.float32)


def _poisson(rng, n):
    return np.searchsorted(_POISSON1_CDF, rng.random(n, dtype=np.float32), side="right")


def _uniform(rng, n):
    return rng.random(n)


def _resolve(blocks):
    if all(isinstance(b, tuple) for b in blocks):
        return blocks
    import shoal
    return shoal.get(list(blocks))


def _shard_blocks(n_blocks: int, n_shards: int) -> list:
    """Contiguous groups of block indices, one per shard."""
    return [list(g) for g in np.array_split(np.arange(n_blocks), n_shards) if len(g)]


class ShardSet:
    """The shards of one fit: actors on the cluster, plain objects in-process.

    On the cluster a shard lives in one of the session's pooled shard actors when the pool
    is up and free (no process to start: see ``_executor._ShardPool``), else in an actor
    of its own. A shard actor that dies is replaced by a new one of its own that bins the
    same blocks again (they are still in the object store); ``call`` then raises
    ``ShardLost`` so the fit rebuilds the new shard's tree state and repeats its current
    step (see ``_tree_fit``).
    """

    def __init__(self, dm, edges: np.ndarray, n_classes: int = 0, n_shards: int | None = None):
        groups = _shard_blocks(len(dm.blocks), n_shards or _default_shards(dm))
        offsets = np.concatenate(([0], np.cumsum(dm.block_rows))).astype(np.int64)
        self._remote = bool(getattr(dm, "distributed", False))
        self._args = [([dm.blocks[i] for i in g], int(offsets[g[0]])) for g in groups]
        self.losses = 0
        if self._remote:
            import shoal
            self._shoal = shoal
            self._actor_cls = shoal.remote(HistShard)
            self._edges = shoal.put(edges)
            self._n_classes = n_classes
            # a shard reserves a CPU when one is free; with none free (a fit inside a busy
            # actor or task) it reserves nothing rather than wait forever for one
            self._cpus = 1 if _free_cpus(shoal) >= len(groups) else 0
            self._pooled = self._host_on_pool(len(dm.blocks))
            self._holds_pool = self._pooled is not None
            if not self._holds_pool:
                self._pooled = [False] * len(groups)
                self.shards = [self._spawn(i) for i in range(len(groups))]
        else:
            self.shards = [HistShard(blocks, offset, edges, n_classes) for blocks, offset in self._args]

    def _host_on_pool(self, n_blocks: int):
        """Shards built inside the pooled actors, or None (the pool is busy or not up)."""
        pool = _ShardPool.acquire(self._shoal, pool_size(self._shoal), n_blocks)
        if pool is None:
            return None
        if len(pool) < len(self._args):
            _ShardPool.give_back(False, self._shoal)
            return None
        self.shards = pool[:len(self._args)]
        try:
            self._shoal.get([a.host.remote(HistShard, blocks, offset, self._edges, self._n_classes)
                             for a, (blocks, offset) in zip(self.shards, self._args)])
        except (ActorDiedError, WorkerCrashedError):
            _ShardPool.give_back(True, self._shoal)
            return None
        except BaseException:       # binning failed there (bad input, memory): free the pool
            _ShardPool.give_back(True, self._shoal)
            raise
        self._pool_broken = False
        return [True] * len(self.shards)

    def _spawn(self, i: int):
        blocks, offset = self._args[i]
        return self._actor_cls.options(num_cpus=self._cpus).remote(
            blocks, offset, self._edges, self._n_classes)

    def _invoke(self, i: int, method: str, *args):
        s = self.shards[i]
        return (s.call_hosted.remote(method, *args) if self._pooled[i]
                else getattr(s, method).remote(*args))

    def call(self, method: str, *args, only: list[int] | None = None) -> list:
        """Run ``method(*args)`` on every shard (or those in ``only``), in parallel on the
        cluster; results per shard. Raises ShardLost when a shard actor died."""
        which = range(len(self.shards)) if only is None else only
        if not self._remote:
            return [getattr(self.shards[i], method)(*args) for i in which]
        try:
            return self._shoal.get([self._invoke(i, method, *args) for i in which])
        except (ActorDiedError, WorkerCrashedError) as e:
            raise ShardLost(self._replace_dead(e)) from e

    def _replace_dead(self, error: Exception) -> list[int]:
        dead = []
        for i in range(len(self.shards)):
            try:
                self._shoal.get(self._invoke(i, "n_rows"))
            except (ActorDiedError, WorkerCrashedError):
                dead.append(i)
        self.losses += max(1, len(dead))
        if self.losses > MAX_SHARD_LOSSES:
            raise WorkerCrashedError(
                f"the tree fit lost its shard actors {self.losses} times (at most "
                f"{MAX_SHARD_LOSSES} are replaced per fit); last: {error}. Check the workers' "
                "memory (each shard holds its rows binned, n_features bytes per row) and logs."
            ) from error
        for i in dead:
            if self._pooled[i]:      # the pool is given back broken (and restarted later)
                self._pool_broken, self._pooled[i] = True, False
            else:
                kill_actors(self._shoal, [self.shards[i]])
            self.shards[i] = self._spawn(i)
        return dead

    def level(self, requests, method: str = "level", *before) -> list:
        """One pass: per-tree histograms summed over shards (``method(*before, requests)``
        on each shard)."""
        parts = self.call(method, *before, requests)
        out = []
        for t in range(len(requests)):
            hs = [p[t] for p in parts]
            out.append(None if hs[0] is None else _sum(hs))
        return out

    def close(self):
        if self._remote and self.shards:
            kill_actors(self._shoal, [s for s, p in zip(self.shards, self._pooled) if not p])
            if self._holds_pool:
                broken = self._pool_broken
                try:      # the pooled actors drop their shard (binned rows, tree state)
                    self._shoal.get([s.release.remote()
                                     for s, p in zip(self.shards, self._pooled) if p])
                except (ActorDiedError, WorkerCrashedError):
                    broken = True
                _ShardPool.give_back(broken, self._shoal)
                self._holds_pool = False
            else:         # the pool was not up: start it for the fits after this one
                _ShardPool.start_later(self._shoal, pool_size(self._shoal))
        self.shards = []


def _sum(arrays):
    acc = np.array(arrays[0], copy=True)
    for a in arrays[1:]:
        acc += a
    return acc


def _free_cpus(shoal) -> int:
    try:
        return int(shoal.available_resources().get("CPU", 0))
    except Exception:  # a backend without resource accounting
        return 1


def _default_shards(dm) -> int:
    if not getattr(dm, "distributed", False):
        return 1   # in-process: one shard, run in the calling thread
    import shoal
    return max(1, min(_free_cpus(shoal), len(dm.blocks)))
