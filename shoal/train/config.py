"""Configuration of a training run (dataclasses with defaults and validation)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass
class CheckpointConfig:
    """Which checkpoints a run keeps.

    Args:
        num_to_keep: keep this many (None: all). With ``score_attribute`` the
            best ones by that reported metric, else the most recent; the
            latest checkpoint is always kept too, for resuming.
        score_attribute: name of a reported metric that ranks checkpoints.
        score_order: "max" or "min".
    """

    num_to_keep: int | None = None
    score_attribute: str | None = None
    score_order: str = "max"

    def __post_init__(self):
        if self.num_to_keep is not None and (not isinstance(self.num_to_keep, int)
                                             or self.num_to_keep < 1):
            raise ValueError(f"CheckpointConfig.num_to_keep must be None or an int >= 1, "
                             f"got {self.num_to_keep!r}")
        if self.score_order not in ("max", "min"):
            raise ValueError(f"CheckpointConfig.score_order must be 'max' or 'min', "
                             f"got {self.score_order!r}")


@dataclass
class FailureConfig:
    """How many times a failed gang restarts from its latest checkpoint."""

    max_failures: int = 0

    def __post_init__(self):
        if not isinstance(self.max_failures, int) or self.max_failures < -1:
            raise ValueError(f"FailureConfig.max_failures must be an int >= 0 (or -1 for no "
                             f"limit), got {self.max_failures!r}")


@dataclass
class ElasticConfig:
    """How an elastic run (``Trainer(num_workers=(min, max))``) waits, grows and gives up.

    Args:
        min_workers_timeout: seconds the run may have fewer than ``min``
            workers placed (at the start, or after losing some) before it
            fails with an error naming what is missing.
        settle_s: once ``min`` workers are placed at the start, how long to
            wait for more (up to ``max``) before the first step; a worker
            placed later joins at a step boundary.
        max_repeated_failures: a worker failing with the same exception this
            many times stops the run with that exception's traceback.
        max_resets: membership changes allowed before the run fails (None:
            no limit), Horovod's ``--reset-limit``.
    """

    min_workers_timeout: float = 60.0
    settle_s: float = 1.0
    max_repeated_failures: int = 3
    max_resets: int | None = None

    def __post_init__(self):
        if not self.min_workers_timeout > 0:
            raise ValueError(f"ElasticConfig.min_workers_timeout must be > 0, got "
                             f"{self.min_workers_timeout!r}")
        if not self.settle_s >= 0:
            raise ValueError(f"ElasticConfig.settle_s must be >= 0, got {self.settle_s!r}")
        if not isinstance(self.max_repeated_failures, int) or self.max_repeated_failures < 1:
            raise ValueError(f"ElasticConfig.max_repeated_failures must be an int >= 1, got "
                             f"{self.max_repeated_failures!r}")
        if self.max_resets is not None and (not isinstance(self.max_resets, int)
                                            or self.max_resets < 0):
            raise ValueError(f"ElasticConfig.max_resets must be None or an int >= 0, got "
                             f"{self.max_resets!r}")


@dataclass
class RunConfig:
    """Where a run keeps its results and how it reports.

    Args:
        name: the run's directory name under ``storage_path`` (default:
            ``shoal_train_<timestamp>``).
        storage_path: parent directory (default: ~/shoal_results).
        checkpoint_config: which checkpoints to keep.
        verbose: 1 prints a progress line per report of rank 0, 0 is quiet.
    """

    name: str | None = None
    storage_path: str | None = None
    checkpoint_config: CheckpointConfig = field(default_factory=CheckpointConfig)
    verbose: int = 1

    def __post_init__(self):
        if self.name is not None and (not self.name or os.sep in self.name):
            raise ValueError(f"RunConfig.name must be a plain directory name, got {self.name!r}")
        if not isinstance(self.checkpoint_config, CheckpointConfig):
            raise TypeError("RunConfig.checkpoint_config must be a CheckpointConfig")
