"""Configuration of an experiment: TuneConfig (what to search), RunConfig (where
results go, when to stop), FailureConfig and CheckpointConfig. Dataclasses with
defaults, validated when made."""
from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass
class TuneConfig:
    """What to search and how.

    Args:
        metric, mode: the reported metric to optimize and "min" or "max"
            (searchers, schedulers and ``ResultGrid.get_best_result`` use them).
        num_samples: samples of the space (each ``grid_search`` combination
            is tried ``num_samples`` times); -1 with a ``time_budget_s``: until time runs out.
        max_concurrent_trials: trials running at once (default: as many as the
            cluster's resources hold).
        time_budget_s: after this many seconds running trials are stopped and
            no new ones start.
        search_alg: a Searcher (default: random and grid search).
        scheduler: a TrialScheduler (default: FIFO, every trial runs to its end).
        reuse_actors: run the next trial in the process of a finished one
            (no process start per trial).
        seed: seed of the default random search (configs are reproducible).
    """

    metric: str | None = None
    mode: str | None = None
    num_samples: int = 1
    max_concurrent_trials: int | None = None
    time_budget_s: float | None = None
    search_alg: object = None
    scheduler: object = None
    reuse_actors: bool = True
    seed: int | None = None

    def __post_init__(self):
        if self.mode not in (None, "min", "max"):
            raise ValueError(f"TuneConfig.mode must be 'min' or 'max', got {self.mode!r}")
        if (self.mode is None) != (self.metric is None):
            raise ValueError("TuneConfig needs metric and mode together (e.g. "
                             "metric='loss', mode='min'), or neither")
        if not isinstance(self.num_samples, int) or not (self.num_samples >= 1 or
                                                          self.num_samples == -1):
            raise ValueError(f"TuneConfig.num_samples must be an int >= 1 (or -1 with "
                             f"time_budget_s), got {self.num_samples!r}")
        if self.num_samples == -1 and self.time_budget_s is None:
            raise ValueError("TuneConfig.num_samples=-1 (sample until the time is up) needs "
                             "time_budget_s")
        if self.max_concurrent_trials is not None and (
                not isinstance(self.max_concurrent_trials, int) or self.max_concurrent_trials < 1):
            raise ValueError(f"TuneConfig.max_concurrent_trials must be an int >= 1, got "
                             f"{self.max_concurrent_trials!r}")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise ValueError(f"TuneConfig.time_budget_s must be > 0, got {self.time_budget_s!r}")


@dataclass
class CheckpointConfig:
    """Which checkpoints a trial keeps, and when class trainables save them.

    Args:
        num_to_keep: keep this many per trial (None: all); with
            ``checkpoint_score_attribute`` the best ones, else the latest.
            The latest is always kept, to resume from.
        checkpoint_score_attribute, checkpoint_score_order: the metric ("max"
            or "min") that ranks checkpoints.
        checkpoint_frequency: a class trainable saves every this many steps (0: never).
        checkpoint_at_end: a class trainable saves when it ends.
    """

    num_to_keep: int | None = None
    checkpoint_score_attribute: str | None = None
    checkpoint_score_order: str = "max"
    checkpoint_frequency: int = 0
    checkpoint_at_end: bool = False

    def __post_init__(self):
        if self.num_to_keep is not None and (not isinstance(self.num_to_keep, int)
                                             or self.num_to_keep < 1):
            raise ValueError(f"CheckpointConfig.num_to_keep must be None or an int >= 1, "
                             f"got {self.num_to_keep!r}")
        if self.checkpoint_score_order not in ("max", "min"):
            raise ValueError(f"CheckpointConfig.checkpoint_score_order must be 'max' or 'min', "
                             f"got {self.checkpoint_score_order!r}")
        if not isinstance(self.checkpoint_frequency, int) or self.checkpoint_frequency < 0:
            raise ValueError(f"CheckpointConfig.checkpoint_frequency must be an int >= 0, got "
                             f"{self.checkpoint_frequency!r}")


@dataclass
class FailureConfig:
    """How often a failed trial (it raised, or its process died) is retried from its
    latest checkpoint; -1: without limit. ``fail_fast`` ends the experiment at the first error."""

    max_failures: int = 0
    fail_fast: bool = False

    def __post_init__(self):
        if not isinstance(self.max_failures, int) or self.max_failures < -1:
            raise ValueError(f"FailureConfig.max_failures must be an int >= 0 (or -1 for no "
                             f"limit), got {self.max_failures!r}")


@dataclass
class RunConfig:
    """Where an experiment keeps its state and results, and when trials stop.

    Args:
        name: the experiment directory's name under ``storage_path``
            (default: ``<trainable>_<timestamp>``).
        storage_path: parent directory (default: ~/shoal_results).
        stop: a dict {metric: threshold} (a trial stops once a reported value
            reaches it, e.g. {"training_iteration": 10}) or a function
            ``(trial_id, result) -> bool``.
        failure_config: retries of failed trials.
        checkpoint_config: which checkpoints to keep.
        verbose: 0 quiet, 1 a trial table at the end and on progress (the default), 2 a line per result.
        trial_files: whether each trial writes ``params.json``, ``result.json``
            and ``progress.csv`` in its directory. None (the default): trials
            that run on trial actors (they report over time) do; trials of a
            function that returns its metrics at once, run in batches as tasks,
            do not (four file-system operations would be most of such a trial's
            cost). True: every trial; False: none. The experiment database
            holds every result either way (``ResultGrid`` and
            ``Tuner.restore`` read it).
    """

    name: str | None = None
    storage_path: str | None = None
    stop: object = None
    failure_config: FailureConfig = field(default_factory=FailureConfig)
    checkpoint_config: CheckpointConfig = field(default_factory=CheckpointConfig)
    verbose: int = 1
    trial_files: bool | None = None

    def __post_init__(self):
        if self.name is not None and (not self.name or os.sep in self.name):
            raise ValueError(f"RunConfig.name must be a plain directory name, got {self.name!r}")
        if self.stop is not None and not (isinstance(self.stop, dict) or callable(self.stop)):
            raise TypeError(f"RunConfig.stop must be a dict of thresholds or a function "
                            f"(trial_id, result) -> bool, got {type(self.stop).__name__}")
        if not isinstance(self.failure_config, FailureConfig):
            raise TypeError("RunConfig.failure_config must be a shoal.tune.FailureConfig")
        if not isinstance(self.checkpoint_config, CheckpointConfig):
            raise TypeError("RunConfig.checkpoint_config must be a shoal.tune.CheckpointConfig")
        if self.trial_files not in (None, True, False):
            raise TypeError(f"RunConfig.trial_files must be None (the default), True or False, "
                            f"got {self.trial_files!r}")
