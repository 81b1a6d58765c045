"""``Trial``: one config being evaluated, as the driver, searchers and schedulers see it."""
from __future__ import annotations

from dataclasses import dataclass, field

PENDING, RUNNING, PAUSED, TERMINATED, ERROR = "PENDING", "RUNNING", "PAUSED", "TERMINATED", "ERROR"


@dataclass
class Trial:
    """A config and what became of it.

    Attributes:
        trial_id: its id (also in its directory's name).
        config: the config it runs with (PBT may change it).
        status: PENDING, RUNNING, PAUSED, TERMINATED or ERROR.
        trial_dir: its directory (params.json, result.json, progress.csv, checkpoints).
        last_result: the latest reported metrics.
        checkpoint: path of the latest checkpoint, or None.
        num_failures: how often it failed (retries included).
        error: a short message when it failed; error_traceback the traceback.
        stopped_early: a scheduler ended it before it finished.
    """

    trial_id: str
    config: dict
    status: str = PENDING
    trial_dir: str = ""
    last_result: dict = field(default_factory=dict)
    checkpoint: str | None = None
    num_failures: int = 0
    error: str | None = None
    error_traceback: str | None = None
    stopped_early: bool = False
    exploit: tuple | None = None       # (new config, donor checkpoint) set by PBT
    checkpoints: list = field(default_factory=list)   # (path, metrics) kept
    history: list = field(default_factory=list)       # every reported result

    @property
    def iteration(self) -> int:
        """The latest ``training_iteration`` reported (0 before the first result)."""
        return int(self.last_result.get("training_iteration", 0))

    @property
    def is_finished(self) -> bool:
        return self.status in (TERMINATED, ERROR)

    def __hash__(self):
        return hash(self.trial_id)

    def __eq__(self, other):
        return isinstance(other, Trial) and other.trial_id == self.trial_id

    def __repr__(self):
        return f"Trial({self.trial_id}, {self.status})"
