"""PB2: Population Based Bandits (Parker-Holder et al., NeurIPS 2020).

PBT whose explore step is a Gaussian-process bandit instead of a random
perturbation: every result adds a point (time, the trial's hyperparameters)
-> (how much its metric changed since its previous result); when a trial
exploits a better one, its new hyperparameters are the candidate within
``hyperparam_bounds`` with the highest upper confidence bound of a GP fit on
those points, at the current time. Exploit (copy a top trial's checkpoint) is
PBT's. Needs scikit-learn (its GaussianProcessRegressor).
"""
from __future__ import annotations

import copy
import math
import warnings

import numpy as np

from shoal.tune import space as sp
from shoal.tune.schedulers import PAUSE, PopulationBasedTraining

_MAX_POINTS = 400     # the GP is fit on the latest points (its cost grows as n^3)


class PB2(PopulationBasedTraining):
    """PBT with GP-bandit exploration.

    Args:
        hyperparam_bounds: {name: [low, high]} (searched on a linear scale) or
            {name: tune.loguniform(low, high)} (a log scale); top-level config keys.
        perturbation_interval, quantile_fraction, time_attr, metric, mode: as PBT.
        n_candidates: random points within the bounds the acquisition is maximized over.
        kappa: weight of the GP's standard deviation in the upper confidence bound.
        seed: seed of the candidates and of PBT's choices.
    """

    def __init__(self, time_attr: str = "training_iteration", metric: str | None = None,
                 mode: str | None = None, perturbation_interval: float = 60.0,
                 hyperparam_bounds: dict | None = None, quantile_fraction: float = 0.25,
                 n_candidates: int = 256, kappa: float = 2.0, seed: int | None = None):
        if not hyperparam_bounds or not isinstance(hyperparam_bounds, dict):
            raise ValueError("PB2 needs hyperparam_bounds, e.g. {'lr': [1e-4, 1e-1]} or "
                             "{'lr': tune.loguniform(1e-4, 1e-1)}")
        self.bounds = {k: _bounds(k, v) for k, v in hyperparam_bounds.items()}
        super().__init__(time_attr, metric, mode, perturbation_interval,
                         hyperparam_mutations=dict(hyperparam_bounds),
                         quantile_fraction=quantile_fraction, seed=seed)
        if not n_candidates >= 1 or not kappa >= 0:
            raise ValueError(f"PB2: n_candidates must be >= 1 and kappa >= 0, got "
                             f"{n_candidates}, {kappa}")
        self.n_candidates, self.kappa = int(n_candidates), float(kappa)
        self.points: list = []       # (time, scaled hyperparameters..., change of the score)
        self.previous: dict = {}     # trial_id -> (time, score) of its previous result

    def on_trial_result(self, trial, result):
        t, score = result.get(self.time_attr), self._score(result)
        if isinstance(t, (int, float)) and score is not None:
            prev = self.previous.get(trial.trial_id)
            if prev is not None and t > prev[0]:
                self.points.append((float(t), *self._scale(trial.config), score - prev[1]))
                del self.points[:-_MAX_POINTS]
            self.previous[trial.trial_id] = (float(t), score)
        decision = super().on_trial_result(trial, result)
        if decision == PAUSE:
            # it goes on from the donor's checkpoint: its next change starts from there
            self.previous.pop(trial.trial_id, None)
        return decision

    def explore(self, config: dict) -> dict:
        """``config`` with the hyperparameters the GP bandit picks."""
        new = copy.deepcopy(config)
        new.update(self.select())
        return new

    def select(self) -> dict:
        """The hyperparameters with the highest upper confidence bound now (uniformly
        random ones while there are too few points to fit a GP)."""
        rng = np.random.default_rng(self._rng.getrandbits(64))
        cands = rng.uniform(size=(self.n_candidates, len(self.bounds)))
        if len(self.points) < 2 * (len(self.bounds) + 1):
            return self._unscale(cands[0])
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel
        data = np.asarray(self.points, dtype=float)
        X, y = data[:, :-1].copy(), data[:, -1]
        t_lo, t_hi = X[:, 0].min(), X[:, 0].max()
        span = (t_hi - t_lo) or 1.0
        X[:, 0] = (X[:, 0] - t_lo) / span
        d = X.shape[1]
        kernel = ConstantKernel(1.0) * RBF(length_scale=np.ones(d), length_scale_bounds=(
            1e-2, 1e2)) + WhiteKernel(1e-2, noise_level_bounds=(1e-6, 1e1))
        gp = GaussianProcessRegressor(kernel=kernel, normalize_y=True,
                                      random_state=int(rng.integers(2 ** 31)))
        with warnings.catch_warnings():     # a length scale at its bound is no news here
            warnings.simplefilter("ignore")
            gp.fit(X, y)
        query = np.column_stack([np.full(len(cands), 1.0), cands])   # the latest time
        mean, std = gp.predict(query, return_std=True)
        return self._unscale(cands[int(np.argmax(mean + self.kappa * std))])

    def _scale(self, config: dict) -> list:
        out = []
        for k, (lo, hi, log) in self.bounds.items():
            v = config.get(k)
            if not isinstance(v, (int, float)):
                out.append(0.5)
                continue
            v = min(max(float(v), lo), hi)
            out.append((math.log(v / lo) / math.log(hi / lo)) if log else (v - lo) / (hi - lo))
        return out

    def _unscale(self, u) -> dict:
        out = {}
        for x, (k, (lo, hi, log)) in zip(u, self.bounds.items()):
            out[k] = float(lo * (hi / lo) ** x) if log else float(lo + x * (hi - lo))
        return out


def _bounds(key, v) -> tuple:
    if isinstance(v, sp.Float) and v.normal is None and v.q is None:
        lo, hi, log = float(v.lower), float(v.upper), bool(v.log)
    elif isinstance(v, (list, tuple)) and len(v) == 2 and all(
            isinstance(x, (int, float)) for x in v):
        lo, hi, log = float(v[0]), float(v[1]), False
    else:
        raise ValueError(f"PB2 hyperparam_bounds[{key!r}] must be [low, high] or "
                         f"tune.uniform/loguniform(low, high), got {v!r}")
    if not lo < hi or (log and lo <= 0):
        raise ValueError(f"PB2 hyperparam_bounds[{key!r}]: need low < high (and low > 0 on a "
                         f"log scale), got {lo}, {hi}")
    return lo, hi, log
