"""DataContext: the settings of shoal.data execution, one object per driver."""
from __future__ import annotations

import os
from dataclasses import dataclass


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() not in ("0", "false", "no", "off", "")


@dataclass
class DataContext:
    """How datasets execute. Change it with ``DataContext.get_current()``.

    max_tasks_in_flight: tasks a stage keeps submitted at once (None: 2 per
        CPU of the cluster). This window bounds memory: a dataset larger than
        the object store streams through it, spilling rather than failing.
    default_num_blocks: blocks for in-memory sources and ``range`` when
        ``override_num_blocks`` is not given (None: 2 per CPU).
    progress_bars: show a one-line progress display on stderr for long
        executions; only when stderr is a terminal. Env SHOAL_DATA_PROGRESS=0
        turns it off, =1 forces it on.
    progress_after_s: an execution shorter than this prints nothing.
    actor_tasks_in_flight: calls queued per actor of a callable-class pool.
    starved_warning_s: a stage that started with no CPU free in the cluster and
        has had none since warns after this many seconds without a result
        (actors such as a training gang may hold every CPU).
    starved_timeout_s: ... and fails with ``DataStarvedError`` after this many
        (None: wait for as long as it takes).
    """

    max_tasks_in_flight: int | None = None
    default_num_blocks: int | None = None
    progress_bars: bool = True
    progress_after_s: float = 1.0
    actor_tasks_in_flight: int = 2
    starved_warning_s: float = 10.0
    starved_timeout_s: float | None = 300.0

    def __post_init__(self):
        for name in ("max_tasks_in_flight", "default_num_blocks"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"DataContext.{name}={value!r} must be a positive int or None")

    _current = None

    @classmethod
    def get_current(cls) -> "DataContext":
        """This driver's DataContext (created with the defaults on first use); change it in place."""
        if cls._current is None:
            cls._current = cls()
        return cls._current

    def progress_enabled(self, stream) -> bool:
        """Whether to draw the progress line on ``stream`` (SHOAL_DATA_PROGRESS overrides)."""
        forced = os.environ.get("SHOAL_DATA_PROGRESS")
        if forced is not None:
            return _env_flag("SHOAL_DATA_PROGRESS", True)
        return self.progress_bars and hasattr(stream, "isatty") and stream.isatty()
