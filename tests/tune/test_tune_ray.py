"""shoal.tune on the Ray backend: the same Tuner, trials as Ray tasks and actors."""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile

import pytest

import shoal
from shoal import tune

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def ray_cluster():
    if importlib.util.find_spec("ray") is None:
        pytest.skip("the Ray backend's tests need ray: pip install 'ray' to run them")
    was_local = shoal.is_initialized()     # the session's local cluster (conftest), if up
    if was_local:
        shoal.shutdown()
    tmp = tempfile.mkdtemp(prefix="ray_tune_")
    shoal.init(num_cpus=2, backend="ray", log_to_driver=False, _temp_dir=tmp)
    try:
        yield
    finally:
        shoal.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
        if was_local:
            shoal.init(num_cpus=4)


def test_asha_experiment_on_ray_and_restore(ray_cluster, tmp_path):
    # defined here, so it pickles by value: Ray's workers cannot import this test module
    def _steps(config):
        for i in range(6):
            tune.report({"loss": (config["x"] - 3) ** 2 + 1.0 / (i + 1)})
    grid = tune.Tuner(_steps, param_space={"x": tune.grid_search([0.0, 2.0, 3.0, 6.0])},
                      tune_config=tune.TuneConfig(metric="loss", mode="min",
                                                  scheduler=tune.ASHAScheduler(max_t=6)),
                      run_config=tune.RunConfig(storage_path=str(tmp_path), name="asha",
                                                verbose=0)).fit()
    assert grid.num_errors == 0 and len(grid) == 4, [str(e)[:2000] for e in grid.errors]
    assert grid.get_best_result().config == {"x": 3.0}
    assert any(r.metrics["training_iteration"] < 6 for r in grid)    # ASHA stopped some
    assert os.path.exists(os.path.join(grid.get_best_result().path, "progress.csv"))
    again = tune.Tuner.restore(grid.experiment_path, _steps).fit()   # nothing left to run
    assert [len(r.metrics_history) for r in again] == [len(r.metrics_history) for r in grid]


def test_trials_that_return_at_once_on_ray(ray_cluster, tmp_path):
    def f(config):
        return {"v": config["v"]}
    grid = tune.Tuner(f, param_space={"v": tune.uniform(0, 1)},
                      tune_config=tune.TuneConfig(metric="v", mode="max", num_samples=40, seed=0),
                      run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0)).fit()
    assert len(grid) == 40 and grid.num_errors == 0
    assert grid.get_best_result().metrics["v"] == max(r.config["v"] for r in grid)
