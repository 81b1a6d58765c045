"""Trial schedulers: after each result, whether a trial goes on, stops or pauses.

- ``FIFOScheduler``: every trial runs to its end.
- ``ASHAScheduler`` (``AsyncHyperBandScheduler``): asynchronous successive
  halving; at each rung a trial is stopped or promoted as soon as its result
  arrives, against the results recorded at that rung so far (no barrier).
- ``HyperBandScheduler``: synchronous HyperBand; trials pause at a rung
  until their bracket is complete there, the best 1/eta go on.
- ``MedianStoppingRule``: stop a trial whose best result is worse than the
  median of the other trials' running averages at the same time.
- ``PopulationBasedTraining``: every ``perturbation_interval``, a trial in the
  bottom quantile copies the checkpoint of one in the top quantile (exploit)
  and continues with that trial's config perturbed or resampled (explore).
"""
from __future__ import annotations

import copy
import math
import random

from shoal.tune import space as sp
from shoal.tune.trial import PAUSED

CONTINUE, PAUSE, STOP = "CONTINUE", "PAUSE", "STOP"


class TrialScheduler:
    """Decides, per result, CONTINUE, PAUSE or STOP."""

    CONTINUE, PAUSE, STOP = CONTINUE, PAUSE, STOP

    def __init__(self, metric: str | None = None, mode: str | None = None):
        if mode not in (None, "min", "max"):
            raise ValueError(f"{type(self).__name__}: mode must be 'min' or 'max', got {mode!r}")
        self.metric, self.mode = metric, mode

    def set_search_properties(self, metric: str | None, mode: str | None) -> None:
        """Fill metric and mode from the TuneConfig where not given."""
        self.metric = self.metric or metric
        self.mode = self.mode or mode

    def _needs_metric(self):
        if not self.metric or self.mode not in ("min", "max"):
            raise ValueError(f"{type(self).__name__} needs metric and mode (give them to it or "
                             "to TuneConfig)")

    def _score(self, result: dict):
        """The result's metric, larger is better (None if absent)."""
        v = result.get(self.metric)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or math.isnan(v):
            return None
        return float(v) if self.mode == "max" else -float(v)

    def on_trial_add(self, trial) -> None:
        """A new trial."""

    def on_trial_result(self, trial, result: dict) -> str:
        """A result of ``trial``; returns CONTINUE, PAUSE or STOP."""
        return CONTINUE

    def on_trial_complete(self, trial, result: dict | None) -> None:
        """``trial`` ended."""

    def on_trial_error(self, trial) -> None:
        """``trial`` failed for good."""
        self.on_trial_complete(trial, None)

    def choose_trial_to_run(self, paused: list, no_more_trials: bool):
        """A paused trial to resume now, or None (the driver then starts a new one)."""
        return None

    def get_state(self) -> dict:
        """Picklable state, saved with the experiment."""
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_rng")}

    def set_state(self, state: dict) -> None:
        """Restore what get_state returned."""
        self.__dict__.update(state)


class FIFOScheduler(TrialScheduler):
    """Every trial runs until it ends or a stop criterion ends it."""


class _Bracket:
    def __init__(self, min_t, max_t, rf, s, stop_last_trials):
        self.rf = rf
        self.max_t = max_t
        self.stop_last = stop_last_trials
        self.rungs = [(min_t * rf ** (k + s), {}) for k in reversed(range(64))
                      if min_t * rf ** (k + s) < max_t]

    def cutoff(self, recorded: dict):
        if not recorded:
            return None
        import numpy as np   # here, not at import: a Tuner without ASHA needs no numpy
        return float(np.nanpercentile(list(recorded.values()), (1 - 1 / self.rf) * 100))

    def on_result(self, trial_id, t, score):
        action = CONTINUE
        for milestone, recorded in self.rungs:
            if t >= self.max_t and self.stop_last:
                action = STOP
            if t < milestone or trial_id in recorded:
                continue
            cutoff = self.cutoff(recorded)
            if cutoff is not None and score < cutoff:
                action = STOP
            recorded[trial_id] = score
            break
        return action


class AsyncHyperBandScheduler(TrialScheduler):
    """ASHA: asynchronous successive halving.

    Rungs at ``grace_period * reduction_factor**k`` (< ``max_t``) of
    ``time_attr``. The first result of a trial at or past a rung is compared
    with the results recorded there so far: below the top
    ``1/reduction_factor`` quantile it stops, else it goes on. A trial that
    reaches ``max_t`` stops. ``brackets`` > 1 spreads trials over brackets
    with later first rungs.
    """

    def __init__(self, time_attr: str = "training_iteration", metric: str | None = None,
                 mode: str | None = None, max_t: float = 100, grace_period: float = 1,
                 reduction_factor: float = 4, brackets: int = 1, stop_last_trials: bool = True):
        super().__init__(metric, mode)
        if not grace_period > 0:
            raise ValueError(f"grace_period must be > 0, got {grace_period}")
        if not reduction_factor > 1:
            raise ValueError(f"reduction_factor must be > 1, got {reduction_factor}")
        if not max_t >= grace_period:
            raise ValueError(f"max_t ({max_t}) must be >= grace_period ({grace_period})")
        self.time_attr = time_attr
        self.max_t, self.grace_period, self.rf = max_t, grace_period, reduction_factor
        self.brackets = [_Bracket(grace_period, max_t, reduction_factor, s, stop_last_trials)
                         for s in range(brackets)]
        self.trial_bracket: dict = {}
        self.n_added = 0

    def on_trial_add(self, trial):
        self._needs_metric()
        # Bracket by a fixed weighting (as Ray Tune), deterministic by arrival order.
        import numpy as np
        sizes = np.array([len(b.rungs) for b in self.brackets], dtype=float)
        probs = np.exp(sizes - sizes.max())
        probs /= probs.sum()
        cum = np.cumsum(probs)
        u = ((self.n_added * 0.6180339887) % 1.0)
        self.trial_bracket[trial.trial_id] = int(min(np.searchsorted(cum, u, side="right"),
                                                     len(self.brackets) - 1))
        self.n_added += 1

    def on_trial_result(self, trial, result):
        t = result.get(self.time_attr)
        score = self._score(result)
        if t is None or score is None:
            return CONTINUE
        b = self.brackets[self.trial_bracket.get(trial.trial_id, 0)]
        return b.on_result(trial.trial_id, t, score)

    def on_trial_complete(self, trial, result):
        if result is None:
            return
        t, score = result.get(self.time_attr), self._score(result)
        if t is not None and score is not None:
            self.brackets[self.trial_bracket.get(trial.trial_id, 0)].on_result(
                trial.trial_id, t, score)


ASHAScheduler = AsyncHyperBandScheduler


class HyperBandScheduler(TrialScheduler):
    """Synchronous HyperBand (Li et al.): brackets of successive halving.

    Bracket ``s`` (from ``s_max = floor(log_eta(max_t))`` down to 0) holds
    ``ceil((s_max + 1) / (s + 1) * eta**s)`` trials that first run to
    ``max_t * eta**-s`` of ``time_attr``. A trial that reaches its rung
    pauses (its actor is freed; it resumes from its latest checkpoint); once
    every trial of the bracket is there, the best ``1/eta`` resume to the next
    rung and the rest stop. A bracket not full when the searcher is done is
    halved with the trials it has.
    """

    def __init__(self, time_attr: str = "training_iteration", metric: str | None = None,
                 mode: str | None = None, max_t: float = 81, reduction_factor: float = 3,
                 stop_last_trials: bool = True):
        super().__init__(metric, mode)
        if not reduction_factor > 1:
            raise ValueError(f"reduction_factor must be > 1, got {reduction_factor}")
        self.time_attr, self.max_t, self.eta = time_attr, max_t, reduction_factor
        self.s_max = int(math.floor(math.log(max_t) / math.log(reduction_factor) + 1e-9))
        self.brackets: list[dict] = []       # {"size", "rung", "trials": {id: score|None}}
        self.trial_bracket: dict = {}
        self.to_resume: list = []
        self.stop_last_trials = stop_last_trials

    def _new_bracket(self):
        s = self.s_max - len(self.brackets) % (self.s_max + 1)
        size = int(math.ceil((self.s_max + 1) / (s + 1) * self.eta ** s))
        r = self.max_t * self.eta ** -s
        self.brackets.append({"size": size, "rung": r, "trials": {}, "done": set()})
        return len(self.brackets) - 1

    def on_trial_add(self, trial):
        self._needs_metric()
        if not self.brackets or len(self.brackets[-1]["trials"]) >= self.brackets[-1]["size"]:
            self._new_bracket()
        b = len(self.brackets) - 1
        self.brackets[b]["trials"][trial.trial_id] = None
        self.trial_bracket[trial.trial_id] = b

    def on_trial_result(self, trial, result):
        t = result.get(self.time_attr)
        if t is None:
            return CONTINUE
        if t >= self.max_t and self.stop_last_trials:
            return STOP
        b = self.brackets[self.trial_bracket[trial.trial_id]]
        if t >= b["rung"]:
            b["trials"][trial.trial_id] = self._score(result)
            return PAUSE
        return CONTINUE

    def on_trial_complete(self, trial, result):
        b = self.brackets[self.trial_bracket[trial.trial_id]]
        b["done"].add(trial.trial_id)
        b["trials"].pop(trial.trial_id, None)

    def _halve(self, b, no_more_trials):
        live = b["trials"]
        full = len(live) + len(b["done"]) >= b["size"] or no_more_trials
        if not live or not full or any(v is None for v in live.values()):
            return
        keep = max(1, int(len(live) / self.eta))
        ranked = sorted(live, key=lambda k: live[k], reverse=True)
        b["rung"] = b["rung"] * self.eta
        for tid in ranked[keep:]:
            self.to_resume.append((tid, STOP))
            del live[tid]
            b["done"].add(tid)
        for tid in ranked[:keep]:
            live[tid] = None
            self.to_resume.append((tid, CONTINUE))

    def choose_trial_to_run(self, paused, no_more_trials):
        for b in self.brackets:
            self._halve(b, no_more_trials)
        by_id = {t.trial_id: t for t in paused}
        for i, (tid, action) in enumerate(self.to_resume):
            if action == CONTINUE and tid in by_id:
                del self.to_resume[i]
                return by_id[tid]
        return None

    def trials_to_stop(self, paused) -> list:
        """Paused trials the last halving dropped (the driver ends them)."""
        ids = {tid for tid, a in self.to_resume if a == STOP}
        self.to_resume = [(tid, a) for tid, a in self.to_resume if a != STOP]
        return [t for t in paused if t.trial_id in ids and t.status == PAUSED]


class MedianStoppingRule(TrialScheduler):
    """Stop a trial whose best result so far is worse than the median of the other
    trials' mean results up to the same ``time_attr`` (after ``grace_period``,
    once ``min_samples_required`` other trials have results)."""

    def __init__(self, time_attr: str = "time_total_s", metric: str | None = None,
                 mode: str | None = None, grace_period: float = 60.0,
                 min_samples_required: int = 3, min_time_slice: float = 0, hard_stop: bool = True):
        super().__init__(metric, mode)
        self.time_attr, self.grace_period = time_attr, grace_period
        self.min_samples_required, self.hard_stop = min_samples_required, hard_stop
        self.results: dict = {}         # trial_id -> [(t, score)]
        self.completed: set = set()

    def on_trial_add(self, trial):
        self._needs_metric()
        self.results.setdefault(trial.trial_id, [])

    def on_trial_result(self, trial, result):
        t, score = result.get(self.time_attr), self._score(result)
        if t is None or score is None:
            return CONTINUE
        self.results.setdefault(trial.trial_id, []).append((t, score))
        if t < self.grace_period:
            return CONTINUE
        import numpy as np
        means = []
        for tid, rs in self.results.items():
            if tid == trial.trial_id:
                continue
            upto = [s for tt, s in rs if tt <= t]
            if upto:
                means.append(float(np.mean(upto)))
        if len(means) < self.min_samples_required:
            return CONTINUE
        best = max(s for _, s in self.results[trial.trial_id])
        if best < float(np.median(means)):
            return STOP if self.hard_stop else PAUSE
        return CONTINUE

    def on_trial_complete(self, trial, result):
        self.completed.add(trial.trial_id)


class PopulationBasedTraining(TrialScheduler):
    """PBT (Jaderberg et al.).

    Every ``perturbation_interval`` of ``time_attr`` a trial's score is
    ranked among the latest scores of the population. A trial in the bottom
    ``quantile_fraction`` exploits one in the top fraction: it continues from
    that trial's latest checkpoint with its config explored: each key of
    ``hyperparam_mutations`` is resampled (probability ``resample_probability``,
    from a Domain, a list or a function) or perturbed (a number multiplied by
    one of ``perturbation_factors``, a list value moved to a neighbour).
    Trials must report checkpoints (the donor's latest is copied).
    """

    def __init__(self, time_attr: str = "training_iteration", metric: str | None = None,
                 mode: str | None = None, perturbation_interval: float = 60.0,
                 hyperparam_mutations: dict | None = None, quantile_fraction: float = 0.25,
                 resample_probability: float = 0.25, perturbation_factors: tuple = (1.2, 0.8),
                 custom_explore_fn=None, seed: int | None = None):
        super().__init__(metric, mode)
        if not 0 <= quantile_fraction <= 0.5:
            raise ValueError(f"quantile_fraction must be in [0, 0.5], got {quantile_fraction}")
        if not hyperparam_mutations and custom_explore_fn is None:
            raise ValueError("PopulationBasedTraining needs hyperparam_mutations or "
                             "custom_explore_fn")
        if not perturbation_interval > 0:
            raise ValueError(f"perturbation_interval must be > 0, got {perturbation_interval}")
        self.time_attr, self.interval = time_attr, perturbation_interval
        self.mutations = hyperparam_mutations or {}
        self.quantile_fraction, self.resample_p = quantile_fraction, resample_probability
        self.factors = perturbation_factors
        self.explore_fn = custom_explore_fn
        self._rng = random.Random(seed)
        self.last_perturb: dict = {}
        self.scores: dict = {}        # trial_id -> latest score at a perturbation point
        self.trials: dict = {}        # trial_id -> Trial (for donors' checkpoints and configs)
        self.exploits: list = []      # (time, trial_id, donor_id, donor checkpoint)

    def on_trial_add(self, trial):
        self._needs_metric()
        self.trials[trial.trial_id] = trial
        self.last_perturb.setdefault(trial.trial_id, 0)

    def on_trial_result(self, trial, result):
        t, score = result.get(self.time_attr), self._score(result)
        if t is None or score is None:
            return CONTINUE
        self.trials[trial.trial_id] = trial
        if t - self.last_perturb.get(trial.trial_id, 0) < self.interval:
            return CONTINUE
        self.last_perturb[trial.trial_id] = t
        self.scores[trial.trial_id] = score
        lower, upper = self._quantiles()
        if trial.trial_id not in lower or not upper:
            return CONTINUE
        donor = self.trials[self._rng.choice(upper)]
        if not donor.checkpoint:
            return CONTINUE    # nothing to copy yet
        trial.exploit = (self.explore(donor.config), donor.checkpoint)
        self.exploits.append((t, trial.trial_id, donor.trial_id, donor.checkpoint))
        return PAUSE

    def _quantiles(self):
        ranked = sorted((tid for tid in self.scores
                         if tid in self.trials and not self.trials[tid].is_finished),
                        key=lambda tid: self.scores[tid])
        if len(ranked) <= 1:
            return [], []
        n = int(math.ceil(len(ranked) * self.quantile_fraction))
        n = min(n, len(ranked) // 2)
        return ranked[:n], ranked[len(ranked) - n:] if n else []

    def explore(self, config: dict) -> dict:
        """A perturbed or resampled copy of ``config``."""
        new = copy.deepcopy(config)
        self._explore(new, self.mutations)
        if self.explore_fn is not None:
            new = self.explore_fn(new)
        return new

    def _explore(self, cfg, mutations):
        for key, how in mutations.items():
            if isinstance(how, dict) and not sp._is_grid(how):
                self._explore(cfg.setdefault(key, {}), how)
                continue
            value = cfg.get(key)
            resample = self._rng.random() < self.resample_p or value is None
            if isinstance(how, (list, tuple)):
                vals = list(how)
                if resample or value not in vals:
                    cfg[key] = self._rng.choice(vals)
                else:
                    i = vals.index(value) + self._rng.choice([-1, 1])
                    cfg[key] = vals[min(max(i, 0), len(vals) - 1)]
            elif isinstance(how, sp.Function):
                cfg[key] = how.sample(self._rng, None)
            elif isinstance(how, sp.Domain):
                if resample:
                    cfg[key] = how.sample(self._rng)
                else:
                    v = value * self._rng.choice(self.factors)
                    cfg[key] = int(round(v)) if isinstance(value, int) else v
            elif callable(how):
                cfg[key] = how()
            else:
                raise ValueError(f"hyperparam_mutations[{key!r}] must be a list, a domain or a "
                                 f"function, got {type(how).__name__}")

    def get_state(self):
        state = {k: v for k, v in self.__dict__.items() if k not in ("_rng", "trials")}
        state["_rng_state"] = self._rng.getstate()
        return state

    def set_state(self, state):
        state = dict(state)
        self._rng.setstate(state.pop("_rng_state"))
        self.__dict__.update(state)
