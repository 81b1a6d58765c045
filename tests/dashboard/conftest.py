"""A cluster with its dashboard, and a task, a failed actor and a training run to show."""
from __future__ import annotations

import importlib.util

import pytest

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


def _train_loop(config):
    from shoal import train
    for step in range(5):
        train.report({"loss": 1.0 / (step + 1), "samples_per_s": 50.0 + step})


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
            verbose=0)).fit()
        yield f"http://127.0.0.1:{d.port}", d.token
    finally:
        shoal.shutdown()
