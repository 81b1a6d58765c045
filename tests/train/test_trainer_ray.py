"""Trainer.fit on the Ray backend: 2 workers, metrics, checkpoints, the DDP math."""
from __future__ import annotations

import importlib.util
import os

import pytest
from test_trainer import EPOCHS, _assert_same_weights, _expected_weights, _trainer

import shoal

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def ray_cluster():
    if importlib.util.find_spec("ray") is None:
        pytest.skip("the Ray backend's tests need ray: pip install 'ray' to run them")
    was_local = shoal.is_initialized()     # the session's local cluster (conftest), if up
    if was_local:
        shoal.shutdown()
    shoal.init(num_cpus=2, backend="ray", log_to_driver=False)
    try:
        yield
    finally:
        shoal.shutdown()
        if was_local:
            shoal.init(num_cpus=4)


def test_fit_on_ray_reports_metrics_checkpoints_and_trains_like_one_process(ray_cluster,
                                                                            tmp_path):
    result = _trainer(tmp_path, "on-ray").fit()
    assert result.error is None
    assert list(result.metrics_dataframe["epoch"]) == list(range(EPOCHS))
    assert result.checkpoint.to_dict()["epoch"] == EPOCHS - 1
    assert result.get_best_checkpoint("score").to_dict()["epoch"] == 1
    assert os.path.exists(os.path.join(result.path, "progress.csv"))
    _assert_same_weights(result.checkpoint.to_dict()["model"], _expected_weights())
