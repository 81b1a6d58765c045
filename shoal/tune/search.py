"""Searchers: where the next trial's config comes from.

``BasicVariantGenerator`` is random and grid search (the default);
``OptunaSearch`` asks Optuna's samplers; ``ConcurrencyLimiter`` bounds how
many suggestions are out at once. A searcher's state (``get_state``) is saved
with the experiment, so a restored experiment continues the same sequence.
"""
from __future__ import annotations

import random

from shoal.exceptions import SearchSpaceError
from shoal.tune import space as sp

FINISHED = "FINISHED"


class Searcher:
    """Suggests configs and learns from results.

    ``suggest(trial_id)`` returns a config dict, None (nothing now: ask
    again when a trial ends) or ``Searcher.FINISHED``.
    """

    FINISHED = FINISHED

    def __init__(self, metric: str | None = None, mode: str | None = None):
        self.metric, self.mode = metric, mode

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict,
                              num_samples: int = 1, seed: int | None = None) -> bool:
        """Called by the Tuner with its metric, mode and param_space; fills what the
        searcher was not given. Returns False if the searcher has a space of its own."""
        self.metric = self.metric or metric
        self.mode = self.mode or mode
        return True

    def suggest(self, trial_id: str):
        """The config of a new trial, None (not now) or Searcher.FINISHED."""
        raise NotImplementedError

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """An intermediate result of a trial."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        """A trial ended (``result`` is its last result; ``error`` if it failed)."""

    def get_state(self) -> dict:
        """Picklable state, saved with the experiment."""
        return {}

    def set_state(self, state: dict) -> None:
        """Restore what get_state returned."""

    @property
    def total_samples(self) -> int | None:
        """How many trials this searcher will suggest, when it knows."""
        return None


class BasicVariantGenerator(Searcher):
    """Random and grid search: every ``grid_search`` combination ``num_samples``
    times, other domains drawn at random; ``points_to_evaluate`` (partial
    configs) come first and count toward the samples.

    Args:
        points_to_evaluate: configs (or parts of configs) to try first.
        random_state: seed (the Tuner passes ``TuneConfig.seed``).
        max_concurrent: suggestions out at once (0: no limit).
    """

    def __init__(self, points_to_evaluate: list | None = None, random_state: int | None = None,
                 max_concurrent: int = 0):
        super().__init__()
        self.points = [dict(p) for p in (points_to_evaluate or [])]
        self.seed = random_state
        self.max_concurrent = max_concurrent
        self.space: dict = {}
        self.num_samples = 1
        self.index = 0
        self.rng = random.Random(random_state)
        self.live: set = set()
        self.variants: list = []

    def set_search_properties(self, metric, mode, config, num_samples=1, seed=None):
        super().set_search_properties(metric, mode, config)
        self.space = config or {}
        sp.validate(self.space)
        self.variants = sp.grid_variants(self.space)
        self.num_samples = num_samples
        if self.seed is None and seed is not None:
            self.seed = seed
            self.rng = random.Random(seed)
        for p in self.points:
            _check_point(p, self.space)
        return True

    @property
    def total_samples(self):
        if self.num_samples == -1:
            return None
        return max(self.num_samples * len(self.variants), len(self.points))

    def suggest(self, trial_id):
        total = self.total_samples
        if total is not None and self.index >= total:
            return FINISHED
        if self.max_concurrent and len(self.live) >= self.max_concurrent:
            return None
        i = self.index
        self.index += 1
        cfg = sp._copy_structure(self.variants[i % len(self.variants)])
        if i < len(self.points):
            _merge_point(cfg, self.points[i])
        self.live.add(trial_id)
        return sp.resolve(cfg, self.rng)

    def on_trial_complete(self, trial_id, result=None, error=False):
        self.live.discard(trial_id)

    def get_state(self):
        return {"index": self.index, "rng": self.rng.getstate(), "live": set(self.live)}

    def set_state(self, state):
        self.index = state["index"]
        self.rng.setstate(state["rng"])
        self.live = set(state["live"])


def _check_point(point: dict, space: dict) -> None:
    for path, value in sp.leaves(point):
        try:
            dom = sp.get_path(space, path)
        except (KeyError, IndexError, TypeError):
            continue   # keys outside the space are passed through
        if isinstance(dom, sp.Domain) and not isinstance(dom, sp.Function) \
                and not dom.is_valid(value):
            raise SearchSpaceError(f"points_to_evaluate: {'.'.join(map(str, path))}={value!r} "
                                   f"is outside its domain {dom!r}")


def _merge_point(cfg: dict, point: dict) -> None:
    for path, value in sp.leaves(point):
        sp.set_path(cfg, path, value)


class ConcurrencyLimiter(Searcher):
    """At most ``max_concurrent`` of ``searcher``'s suggestions running at once
    (model-based searchers learn more from results when fewer run blind)."""

    def __init__(self, searcher: Searcher, max_concurrent: int, batch: bool = False):
        if not isinstance(max_concurrent, int) or max_concurrent < 1:
            raise ValueError(f"ConcurrencyLimiter: max_concurrent must be an int >= 1, got "
                             f"{max_concurrent!r}")
        super().__init__(searcher.metric, searcher.mode)
        self.searcher = searcher
        self.max_concurrent = max_concurrent
        self.batch = batch
        self.live: set = set()

    def set_search_properties(self, metric, mode, config, num_samples=1, seed=None):
        ok = self.searcher.set_search_properties(metric, mode, config, num_samples, seed)
        self.metric, self.mode = self.searcher.metric, self.searcher.mode
        return ok

    @property
    def total_samples(self):
        return self.searcher.total_samples

    def suggest(self, trial_id):
        if len(self.live) >= self.max_concurrent:
            return None
        cfg = self.searcher.suggest(trial_id)
        if isinstance(cfg, dict):
            self.live.add(trial_id)
        return cfg

    def on_trial_result(self, trial_id, result):
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id, result=None, error=False):
        self.live.discard(trial_id)
        self.searcher.on_trial_complete(trial_id, result, error)

    def get_state(self):
        return {"live": set(self.live), "inner": self.searcher.get_state()}

    def set_state(self, state):
        self.live = set(state["live"])
        self.searcher.set_state(state["inner"])
