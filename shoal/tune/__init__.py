"""shoal.tune: hyperparameter search with early stopping, trials on shoal's actors.

    from shoal import tune

    def objective(config):
        for step in range(10):
            tune.report({"loss": (config["x"] - 3) ** 2 + 1 / (step + 1)})

    results = tune.Tuner(objective, param_space={"x": tune.uniform(0, 10)},
                         tune_config=tune.TuneConfig(metric="loss", mode="min", num_samples=20,
                                                     scheduler=tune.ASHAScheduler(max_t=10)),
                         ).fit()
    results.get_best_result().config

The names are Ray Tune's (search spaces, TuneConfig, RunConfig, schedulers,
searchers), so a Ray Tune program moves by changing its imports.

The names load from their modules on first use: a worker process that runs
trials imports only what a trial needs (not the driver's schedulers, searchers
or PB2's numpy), which is most of the first trial's cost on each worker.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "Checkpoint": "checkpoint",
    "CheckpointConfig": "config", "FailureConfig": "config", "RunConfig": "config",
    "TuneConfig": "config",
    "OptunaSearch": "optuna_search",
    "PB2": "pb2",
    "Result": "result_grid", "ResultGrid": "result_grid",
    "ASHAScheduler": "schedulers", "AsyncHyperBandScheduler": "schedulers",
    "FIFOScheduler": "schedulers", "HyperBandScheduler": "schedulers",
    "MedianStoppingRule": "schedulers", "PopulationBasedTraining": "schedulers",
    "TrialScheduler": "schedulers",
    "BasicVariantGenerator": "search", "ConcurrencyLimiter": "search", "Searcher": "search",
    "TuneSearchCV": "search_cv",
    **{name: "space" for name in (
        "choice", "grid_search", "lograndint", "loguniform", "qlograndint", "qloguniform",
        "qrandint", "qrandn", "quniform", "randint", "randn", "sample_from", "uniform")},
    **{name: "trainable" for name in (
        "Trainable", "TrialContext", "get_checkpoint", "get_context", "report",
        "with_parameters", "with_resources")},
    "Trial": "trial",
    "Tuner": "tuner",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'shoal.tune' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"shoal.tune.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
