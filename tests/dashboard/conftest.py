"""A cluster with its dashboard, and a task, a failed actor and a training run to show."""
from __future__ import annotations

import importlib.util
import urllib.request

import pytest
from dashboard_http import SERVE_REQUESTS

import shoal

_NEEDS = ("starlette", "uvicorn", "prometheus_client")


@shoal.remote
def dashboard_probe_task(x):
    print(f"probe task says {x}")
    return x + 1


@shoal.remote
class BrokenActor:
    def __init__(self):
        raise RuntimeError("this actor breaks in its constructor on purpose")

    def ping(self):
        return 1


def _trainable(config):
    from shoal import tune
    for i in range(4):
        tune.report({"score": config["lr"] * (i + 1)})


def _train_loop(config):
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from shoal import train
    # a prepared loader: shoal.train counts its batches and reports samples_per_s itself
    loader = train.prepare_data_loader(DataLoader(TensorDataset(torch.arange(32.0)),
                                                  batch_size=8))
    for step in range(5):
        for _ in loader:
            pass
        train.report({"loss": 1.0 / (step + 1)},
                     checkpoint=train.Checkpoint.from_dict({"step": step}))


@pytest.fixture(scope="package")
def dash(tmp_path_factory):
    """(base URL, token) of a running dashboard whose cluster ran the things above."""
    missing = [m for m in _NEEDS if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"the dashboard needs {', '.join(missing)}: pip install 'shoal[dashboard]'")
    if shoal.is_initialized():
        shoal.shutdown()
    shoal.init(num_cpus=2, log_to_driver=False, dashboard=True)
    try:
        from shoal import dashboard
        d = dashboard._dashboard
        assert shoal.get(dashboard_probe_task.remote(41)) == 42
        broken = BrokenActor.options(name="broken-actor").remote()
        with pytest.raises(shoal.exceptions.ActorDiedError):
            shoal.get(broken.ping.remote(), timeout=60)
        from shoal import train
        train.Trainer(_train_loop, num_workers=1, run_config=train.RunConfig(
            name="dashboard-curve", storage_path=str(tmp_path_factory.mktemp("runs")),
            checkpoint_config=train.CheckpointConfig(num_to_keep=2, score_attribute="loss",
                                                     score_order="min"),
            verbose=0)).fit()
        from shoal import tune
        tune.Tuner(_trainable, param_space={"lr": tune.grid_search([0.1, 0.2, 0.3])},
                   tune_config=tune.TuneConfig(metric="score", mode="max"),
                   run_config=tune.RunConfig(storage_path=str(tmp_path_factory.mktemp("tune")),
                                             name="dashboard-exp", verbose=0)).fit()
        from shoal import serve

        @serve.deployment(num_replicas=1)
        class Echo:
            def __call__(self, request):
                return "hi"
        serve.run(Echo.bind(), name="echo-app", route_prefix="/echo", port=0)
        port = serve.status()["proxy"]["port"]
        for _ in range(SERVE_REQUESTS):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/echo", timeout=30) as r:
                assert r.read() == b"hi"
        try:
            yield f"http://127.0.0.1:{d.port}", d.token
        finally:
            serve.shutdown()
    finally:
        shoal.shutdown()
