"""A shoal.train.Trainer as the trainable: each trial trains on its own gang of 2 workers."""
import time

import pytest

import shoal
from shoal import tune

pytest.importorskip("torch")
pytestmark = [pytest.mark.usefixtures("cluster"), pytest.mark.slow]


def train_loop(config):
    import torch
    import shoal.train as st
    torch.manual_seed(0)
    model = st.prepare_model(torch.nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=config["lr"])
    x = torch.randn(64, 4)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]).unsqueeze(1)
    for epoch in range(config["epochs"]):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        time.sleep(config.get("sleep", 0))
        st.report({"loss": loss.item(), "world": st.get_context().get_world_size(),
                   "epoch": epoch},
                  checkpoint=st.Checkpoint.from_dict({"epoch": epoch}))


def test_trainer_trials_run_on_their_own_two_worker_gangs(tmp_path):
    import shoal.train as st
    trainer = st.Trainer(train_loop, num_workers=2, config={"epochs": 3})
    grid = tune.Tuner(trainer, param_space={"train_loop_config": {
                          "lr": tune.grid_search([0.001, 0.1])}},
                      tune_config=tune.TuneConfig(metric="loss", mode="min"),
                      run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0)).fit()
    assert grid.num_errors == 0, grid.errors
    for r in grid:
        assert [h["epoch"] for h in r.metrics_history] == [0, 1, 2]
        assert all(h["world"] == 2 for h in r.metrics_history)
        assert r.checkpoint.to_dict() == {"epoch": 2}
    assert grid.get_best_result().config["train_loop_config"]["lr"] == 0.1


def test_a_stopped_trainer_trial_frees_its_gang(tmp_path):
    import shoal.train as st
    trainer = st.Trainer(train_loop, num_workers=2, config={"epochs": 200, "sleep": 0.05})
    t0 = time.monotonic()
    grid = tune.Tuner(trainer, param_space={"lr": 0.01},
                      run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0,
                                                stop={"training_iteration": 2})).fit()
    assert time.monotonic() - t0 < 60
    assert grid.num_errors == 0 and len(grid[0].metrics_history) == 2
    deadline = time.monotonic() + 30
    while shoal.available_resources().get("CPU", 0) < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert shoal.available_resources().get("CPU", 0) == 4
