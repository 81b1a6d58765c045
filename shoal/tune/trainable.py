"""What a trial runs: a function that calls ``report``, or a ``Trainable`` class.

    def objective(config):
        for step in range(10):
            loss = (config["x"] - 3) ** 2 / (step + 1)
            shoal.tune.report({"loss": loss})

    class Objective(shoal.tune.Trainable):
        def setup(self, config): self.x = config["x"]
        def step(self): return {"loss": (self.x - 3) ** 2}

``with_resources`` and ``with_parameters`` wrap either kind.
"""
from __future__ import annotations

import inspect
import os
import threading
from dataclasses import dataclass, field

from shoal.exceptions import TuneError


class Trainable:
    """A trial as a class: ``setup(config)`` once, then ``step()`` per iteration.

    ``step`` returns a dict of metrics (add ``"done": True`` to end the trial).
    ``save_checkpoint(checkpoint_dir)`` writes the state into that directory
    (or returns a dict, saved for you) and ``load_checkpoint(checkpoint)``
    reads it back (the dict, or the directory's path). ``reset_config`` is
    accepted for Ray Tune compatibility; actors are reused either way.
    Attributes: ``config``, ``iteration``, ``trial_id``, ``trial_dir``.
    """

    def __init__(self, config: dict | None = None, *, trial_id: str = "", trial_dir: str = "",
                 **parameters):
        self.config = dict(config or {})
        self.iteration = 0
        self.trial_id = trial_id
        self.trial_dir = trial_dir
        self.logdir = trial_dir
        self.setup(self.config, **parameters)

    def setup(self, config: dict, **parameters) -> None:
        """Prepare the trial (called once with its config and any ``with_parameters`` values)."""

    def step(self) -> dict:
        """One iteration; returns its metrics."""
        raise NotImplementedError(f"{type(self).__name__} must define step()")

    def save_checkpoint(self, checkpoint_dir: str):
        """Save state into ``checkpoint_dir``; or return a dict to be saved. None: nothing to save."""
        return None

    def load_checkpoint(self, checkpoint) -> None:
        """Restore what ``save_checkpoint`` saved (the dict it returned, or the directory)."""

    def reset_config(self, new_config: dict) -> bool:
        """Ray Tune's hook to reuse an instance for a new config (shoal makes a new instance)."""
        return False

    def cleanup(self) -> None:
        """Release what ``setup`` took (called when the trial ends)."""


@dataclass
class TrainableSpec:
    """A trainable with the resources each trial needs and its shared parameters
    (made by ``with_resources`` / ``with_parameters``; a Tuner takes either form)."""

    trainable: object
    resources: dict = field(default_factory=lambda: {"CPU": 1})
    parameters: dict = field(default_factory=dict)  # name -> ObjectRef
    actor_resources: dict | None = None   # what the trial's actor takes (default: resources)

    @property
    def name(self) -> str:
        t = self.trainable
        return getattr(t, "__name__", type(t).__name__)

    @property
    def is_class(self) -> bool:
        return inspect.isclass(self.trainable) and issubclass(self.trainable, Trainable)


def as_spec(trainable) -> TrainableSpec:
    """The TrainableSpec of ``trainable`` (a function, a Trainable class or a spec)."""
    if isinstance(trainable, TrainableSpec):
        return trainable
    from shoal.tune._trainer import is_trainer, trainer_spec
    if is_trainer(trainable):
        return trainer_spec(trainable)
    if inspect.isclass(trainable):
        if not issubclass(trainable, Trainable):
            raise TypeError(f"a trainable class must subclass shoal.tune.Trainable, "
                            f"{trainable.__name__} does not")
        return TrainableSpec(trainable)
    if not callable(trainable):
        raise TypeError(f"the trainable must be a function of config or a shoal.tune.Trainable "
                        f"class, got {type(trainable).__name__}")
    return TrainableSpec(trainable)


def with_resources(trainable, resources: dict) -> TrainableSpec:
    """``trainable`` whose trials each take ``resources``, e.g. {"CPU": 0.5} or
    {"CPU": 1, "GPU": 1} (fractions allow several trials per CPU)."""
    spec = as_spec(trainable)
    if not isinstance(resources, dict) or not resources:
        raise TypeError(f"with_resources takes a dict such as {{'CPU': 0.5}}, got {resources!r}")
    norm = {}
    for k, v in resources.items():
        k = {"cpu": "CPU", "gpu": "GPU"}.get(k, k)
        if not isinstance(v, (int, float)) or v < 0:
            raise ValueError(f"with_resources: {k} must be a number >= 0, got {v!r}")
        norm[k] = v
    norm.setdefault("CPU", 0)
    return TrainableSpec(spec.trainable, norm, dict(spec.parameters), spec.actor_resources)


def with_parameters(trainable, **parameters) -> TrainableSpec:
    """``trainable`` called as ``trainable(config, **parameters)`` (a class: its
    ``setup(config, **parameters)``); each value is put in the object store once
    and read by every trial from there, not pickled per trial."""
    import shoal
    spec = as_spec(trainable)
    refs = dict(spec.parameters)
    for k, v in parameters.items():
        refs[k] = shoal.put(v)
    return TrainableSpec(spec.trainable, dict(spec.resources), refs, spec.actor_resources)


# ------------------------------------------------------------------ the in-trial API
class TrialContext:
    """Where a trial runs: ``trial_id``, ``trial_name``, ``trial_dir``, ``experiment_name``.

    The trial's directory is made when the trial first asks for it (a trial
    that never does costs no directory creation on its critical path; its
    result files are written beside it)."""

    def __init__(self, trial_id: str, trial_name: str, trial_dir: str,
                 experiment_name: str = ""):
        self.trial_id, self.trial_name = trial_id, trial_name
        self.experiment_name = experiment_name
        self._dir, self._made = trial_dir, False

    @property
    def trial_dir(self) -> str:
        """The trial's directory (made on first use)."""
        if not self._made:
            os.makedirs(self._dir, exist_ok=True)
            self._made = True
        return self._dir

    def get_trial_id(self) -> str:
        """The trial's id."""
        return self.trial_id

    def get_trial_name(self) -> str:
        """The trial's name (its directory's name)."""
        return self.trial_name

    def get_trial_dir(self) -> str:
        """The trial's directory (result.json, progress.csv, checkpoints)."""
        return self.trial_dir

    def __repr__(self):
        return (f"TrialContext(trial_id={self.trial_id!r}, trial_name={self.trial_name!r}, "
                f"trial_dir={self._dir!r}, experiment_name={self.experiment_name!r})")


_local = threading.local()


def _session():
    s = getattr(_local, "session", None)
    if s is None:
        raise TuneError("shoal.tune.report/get_checkpoint/get_context work inside a trial "
                        "only (a function run by Tuner.fit); call them from the trainable")
    return s


def report(metrics: dict, *, checkpoint=None) -> None:
    """Report this iteration's ``metrics`` (a dict of numbers and strings) and
    optionally a Checkpoint to resume from. The scheduler may end the trial here
    (the function then stops at this call)."""
    if not isinstance(metrics, dict):
        raise TypeError(f"report() takes a dict of metrics, got {type(metrics).__name__}")
    _session().report(metrics, checkpoint)


def get_checkpoint():
    """The Checkpoint to resume from (after a retry, a restore or a PBT exploit), or None."""
    return _session().get_checkpoint()


def get_context() -> TrialContext:
    """The running trial's TrialContext."""
    return _session().context


def _set_session(s) -> None:
    _local.session = s


def _trial_dir_name(name: str, trial_id: str) -> str:
    return f"{name}_{trial_id}".replace(os.sep, "_")
