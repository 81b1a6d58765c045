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
"""
from shoal.tune.checkpoint import Checkpoint
from shoal.tune.config import CheckpointConfig, FailureConfig, RunConfig, TuneConfig
from shoal.tune.optuna_search import OptunaSearch
from shoal.tune.pb2 import PB2
from shoal.tune.result_grid import Result, ResultGrid
from shoal.tune.schedulers import (ASHAScheduler, AsyncHyperBandScheduler, FIFOScheduler,
                                   HyperBandScheduler, MedianStoppingRule,
                                   PopulationBasedTraining, TrialScheduler)
from shoal.tune.search import BasicVariantGenerator, ConcurrencyLimiter, Searcher
from shoal.tune.search_cv import TuneSearchCV
from shoal.tune.space import (choice, grid_search, lograndint, loguniform, qlograndint,
                              qloguniform, qrandint, qrandn, quniform, randint, randn,
                              sample_from, uniform)
from shoal.tune.trainable import (Trainable, TrialContext, get_checkpoint, get_context, report,
                                  with_parameters, with_resources)
from shoal.tune.trial import Trial
from shoal.tune.tuner import Tuner

__all__ = [
    "ASHAScheduler", "AsyncHyperBandScheduler", "BasicVariantGenerator", "Checkpoint",
    "CheckpointConfig", "ConcurrencyLimiter", "FIFOScheduler", "FailureConfig",
    "HyperBandScheduler", "MedianStoppingRule", "OptunaSearch", "PB2", "PopulationBasedTraining",
    "Result", "ResultGrid", "RunConfig", "Searcher", "Trainable", "Trial", "TrialContext",
    "TrialScheduler", "TuneConfig", "TuneSearchCV", "Tuner", "choice", "get_checkpoint", "get_context",
    "grid_search", "lograndint", "loguniform", "qlograndint", "qloguniform", "qrandint",
    "qrandn", "quniform", "randint", "randn", "report", "sample_from", "uniform",
    "with_parameters", "with_resources",
]
