"""``ResultGrid``: what an experiment produced, one ``Result`` per trial."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from shoal.exceptions import TuneError
from shoal.tune import space as sp
from shoal.tune.checkpoint import Checkpoint
from shoal.tune.trial import ERROR, TERMINATED


@dataclass
class Result:
    """One trial's outcome.

    Attributes:
        config: the trial's config (its last, after PBT's explorations).
        metrics: the last reported metrics.
        checkpoint: the latest Checkpoint (None if it reported none).
        best_checkpoints: kept (Checkpoint, metrics) pairs, oldest first.
        error: a TuneError with the trial's traceback if it failed, else None.
        path: the trial's directory (params.json, result.json, progress.csv).
        metrics_history: every reported result (dicts), in order.
        trial_id: the trial's id.
        status: TERMINATED or ERROR (PAUSED/PENDING if the experiment was cut short).
        stopped_early: a scheduler ended the trial before it finished.
    """

    config: dict
    metrics: dict
    checkpoint: Checkpoint | None
    best_checkpoints: list = field(default_factory=list)
    error: BaseException | None = None
    path: str = ""
    metrics_history: list = field(default_factory=list)
    trial_id: str = ""
    status: str = ""
    stopped_early: bool = False

    @property
    def metrics_dataframe(self):
        """Every reported result as a pandas DataFrame, one row each."""
        import pandas as pd
        return pd.DataFrame(self.metrics_history)

    def get_best_checkpoint(self, metric: str, mode: str = "max") -> Checkpoint | None:
        """The kept checkpoint with the best ``metric``, or None."""
        scored = [(c, m[metric]) for c, m in self.best_checkpoints if _number(m.get(metric))]
        if not scored:
            return None
        return (max if mode == "max" else min)(scored, key=lambda e: e[1])[0]


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def result_of(trial) -> Result:
    ckpts = [(Checkpoint(path=p), m) for p, m in trial.checkpoints if os.path.isdir(p)]
    err = None
    if trial.status == ERROR:
        err = TuneError(f"trial {trial.trial_id} failed: {trial.error}\n\n"
                        f"{trial.error_traceback or ''}")
        err.traceback = trial.error_traceback
    return Result(config=trial.config, metrics=dict(trial.last_result),
                  checkpoint=Checkpoint(path=trial.checkpoint)
                  if trial.checkpoint and os.path.isdir(trial.checkpoint) else None,
                  best_checkpoints=ckpts, error=err, path=trial.trial_dir,
                  metrics_history=list(trial.history), trial_id=trial.trial_id,
                  status=trial.status, stopped_early=trial.stopped_early)


class ResultGrid:
    """The results of ``Tuner.fit()``: index it, iterate it, or ask for the best.

    Attributes:
        experiment_path: the experiment directory (``Tuner.restore`` takes it).
    """

    def __init__(self, results: list, metric: str | None, mode: str | None,
                 experiment_path: str = ""):
        self._results = results
        self._metric, self._mode = metric, mode
        self.experiment_path = experiment_path

    def __len__(self):
        return len(self._results)

    def __getitem__(self, i) -> Result:
        return self._results[i]

    def __iter__(self):
        return iter(self._results)

    def __repr__(self):
        return (f"ResultGrid({len(self)} trials, {self.num_terminated} terminated, "
                f"{self.num_errors} errors)")

    @property
    def errors(self) -> list:
        """The errors of the trials that failed (each a TuneError with the traceback)."""
        return [r.error for r in self._results if r.error is not None]

    @property
    def num_errors(self) -> int:
        """How many trials failed."""
        return len(self.errors)

    @property
    def num_terminated(self) -> int:
        """How many trials ended without error."""
        return sum(r.status == TERMINATED for r in self._results)

    def _metric_mode(self, metric, mode):
        metric, mode = metric or self._metric, mode or self._mode
        if not metric or mode not in ("min", "max"):
            raise ValueError("give metric= and mode= ('min' or 'max'), here or in TuneConfig")
        return metric, mode

    def get_best_result(self, metric: str | None = None, mode: str | None = None,
                        scope: str = "last", filter_nan_and_inf: bool = True) -> Result:
        """The trial with the best ``metric``: its last result (``scope="last"``), its
        best over all iterations (``"all"``), or the mean of its last 5 or all
        results (``"last-5-avg"``, ``"avg"``). Raises TuneError if no trial reported it."""
        metric, mode = self._metric_mode(metric, mode)
        if scope not in ("last", "all", "avg", "last-5-avg", "last-10-avg"):
            raise ValueError(f"scope must be last, all, avg, last-5-avg or last-10-avg, "
                             f"got {scope!r}")
        best, best_v = None, None
        for r in self._results:
            v = _scope_value(r, metric, mode, scope)
            if v is None or (filter_nan_and_inf and not math.isfinite(v)):
                continue
            if best_v is None or (v > best_v if mode == "max" else v < best_v):
                best, best_v = r, v
        if best is None:
            seen = sorted({k for r in self._results for k in r.metrics})
            raise TuneError(f"no trial reported a number for metric {metric!r}; the trials "
                            f"reported {seen}")
        return best

    def get_dataframe(self, filter_metric: str | None = None, filter_mode: str | None = None):
        """One row per trial: its last result (or, with ``filter_metric``/``filter_mode``,
        its best one), its config as ``config/<name>`` columns, ``trial_id`` and ``logdir``."""
        import pandas as pd
        rows = []
        for r in self._results:
            rec = r.metrics
            if filter_metric and r.metrics_history:
                scored = [h for h in r.metrics_history if _number(h.get(filter_metric))]
                if scored:
                    pick = max if filter_mode != "min" else min
                    rec = pick(scored, key=lambda h: h[filter_metric])
            row = dict(rec)
            row.update({f"config/{k}": v for k, v in sp.flatten(r.config).items()})
            row.update(trial_id=r.trial_id, logdir=r.path, status=r.status)
            if r.error is not None:
                row["error"] = str(r.error).splitlines()[0]
            rows.append(row)
        return pd.DataFrame(rows)

    def plot(self, path: str | None = None, metric: str | None = None,
             x: str = "training_iteration") -> str:
        """Write a PNG of ``metric`` per trial over ``x`` (matplotlib); stopped trials are
        drawn dashed and marked where they stopped, failed ones in red. Returns the path
        (default ``<experiment>/<metric>.png``)."""
        from shoal.exceptions import MissingDependencyError
        MissingDependencyError.require("ResultGrid.plot", "tune", "matplotlib")
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        metric = metric or self._metric
        if not metric:
            raise ValueError("plot() needs metric= (or TuneConfig(metric=...))")
        path = path or os.path.join(self.experiment_path or ".", f"{metric}.png")
        fig, ax = plt.subplots(figsize=(8, 5))
        for r in self._results:
            pts = [(h.get(x), h.get(metric)) for h in r.metrics_history
                   if _number(h.get(x)) and _number(h.get(metric))]
            if not pts:
                continue
            xs, ys = zip(*pts)
            style = "--" if r.stopped_early else "-"
            color = "red" if r.error is not None else None
            (line,) = ax.plot(xs, ys, style, color=color, linewidth=1, alpha=0.8)
            if r.stopped_early:
                ax.plot(xs[-1], ys[-1], "x", color=line.get_color())
        ax.set_xlabel(x)
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} per trial ({len(self)} trials; dashed/x: stopped early)")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


def _scope_value(r: Result, metric, mode, scope):
    if scope == "last":
        v = r.metrics.get(metric)
        return float(v) if _number(v) or isinstance(v, float) else None
    vals = [float(h[metric]) for h in r.metrics_history if _number(h.get(metric))]
    if not vals:
        return None
    if scope == "all":
        return max(vals) if mode == "max" else min(vals)
    if scope == "avg":
        return sum(vals) / len(vals)
    n = int(scope.split("-")[1])
    return sum(vals[-n:]) / len(vals[-n:])
