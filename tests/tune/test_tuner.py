"""Tuner end to end on a local cluster: trainables, searchers, results, failures, bad input."""
import json
import os

import pandas as pd
import pytest

from shoal import tune
from shoal.exceptions import InfeasibleResourceError, TuneError

pytestmark = pytest.mark.usefixtures("cluster")


def quadratic(config):
    for step in range(4):
        tune.report({"loss": (config["x"] - 3) ** 2 + 1.0 / (step + 1), "step": step})


def run(trainable, space, tmp_path, name="exp", **tc):
    rc = tc.pop("run_config", None) or tune.RunConfig(storage_path=str(tmp_path), name=name,
                                                      verbose=0)
    return tune.Tuner(trainable, param_space=space, tune_config=tune.TuneConfig(**tc),
                      run_config=rc).fit()


def test_function_trainable_reports_history_and_best(tmp_path):
    grid = run(quadratic, {"x": tune.grid_search([0.0, 3.0, 5.0])}, tmp_path,
               metric="loss", mode="min")
    assert len(grid) == 3 and grid.num_errors == 0 and grid.num_terminated == 3
    best = grid.get_best_result()
    assert best.config == {"x": 3.0} and best.metrics["loss"] == pytest.approx(0.25)
    assert [h["training_iteration"] for h in best.metrics_history] == [1, 2, 3, 4]
    assert list(best.metrics_dataframe["step"]) == [0, 1, 2, 3]
    df = grid.get_dataframe()
    assert sorted(df["config/x"]) == [0.0, 3.0, 5.0] and "loss" in df
    assert grid.get_best_result(scope="all").config == {"x": 3.0}
    # the files next to the database are readable by pandas
    import pandas as pd
    assert len(pd.read_csv(os.path.join(best.path, "progress.csv"))) == 4
    assert len(pd.read_json(os.path.join(best.path, "result.json"), lines=True)) == 4
    assert os.path.exists(os.path.join(grid.experiment_path, "experiment.db"))


class Counter(tune.Trainable):
    def setup(self, config, offset=0):
        self.total = offset
        self.rate = config["rate"]

    def step(self):
        self.total += self.rate
        return {"total": self.total, "done": self.iteration + 1 >= 5}

    def save_checkpoint(self, checkpoint_dir):
        return {"total": self.total}

    def load_checkpoint(self, checkpoint):
        self.total = checkpoint["total"]


def test_class_trainable_with_parameters_and_checkpoints(tmp_path):
    big = list(range(1000))
    trainable = tune.with_parameters(Counter, offset=len(big))
    grid = run(trainable, {"rate": tune.grid_search([1, 2])}, tmp_path, metric="total",
               mode="max", run_config=tune.RunConfig(
                   storage_path=str(tmp_path), name="cls", verbose=0,
                   checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=2,
                                                           checkpoint_at_end=True,
                                                           num_to_keep=2)))
    best = grid.get_best_result()
    assert best.config["rate"] == 2 and best.metrics["total"] == 1000 + 10
    assert best.checkpoint.to_dict() == {"total": 1010}
    assert len(best.best_checkpoints) == 2     # num_to_keep
    assert best.get_best_checkpoint("total", "max").to_dict() == {"total": 1010}


def test_reused_actors_run_many_trials_in_few_processes(tmp_path):
    def pid(config):
        tune.report({"pid": os.getpid(), "v": config["v"]})
    grid = run(pid, {"v": tune.uniform(0, 1)}, tmp_path, num_samples=12,
               max_concurrent_trials=2, metric="v", mode="max")
    assert len(grid) == 12 and grid.num_errors == 0
    assert len({r.metrics["pid"] for r in grid}) <= 2


def test_trials_that_return_at_once_run_in_batches_as_tasks(tmp_path):
    def pid(config):
        return {"pid": os.getpid(), "v": config["v"]}
    grid = run(pid, {"v": tune.uniform(0, 1)}, tmp_path, num_samples=64,
               max_concurrent_trials=2, metric="v", mode="max", seed=1)
    assert len(grid) == 64 and grid.num_errors == 0 and grid.num_terminated == 64
    # batches of up to 16 trials per task: far fewer processes than trials
    assert len({r.metrics["pid"] for r in grid}) <= 8
    for r in grid:
        assert r.metrics["training_iteration"] == 1
        # by default such trials keep their result in the database only
        assert not os.path.exists(r.path)
    # trial_files=True: each one's files too
    grid = run(pid, {"v": tune.uniform(0, 1)}, tmp_path, num_samples=20, metric="v", mode="max",
               run_config=tune.RunConfig(storage_path=str(tmp_path), name="files", verbose=0,
                                         trial_files=True))
    assert len(grid) == 20 and grid.num_errors == 0
    for r in grid:
        with open(os.path.join(r.path, "params.json")) as f:
            assert json.load(f) == r.config
        assert len(pd.read_csv(os.path.join(r.path, "progress.csv"))) == 1


def test_trial_files_must_be_none_or_a_bool():
    with pytest.raises(TypeError, match="trial_files"):
        tune.RunConfig(trial_files="yes")


def _report_twice(v):
    tune.report({"v": v, "step": 0})
    tune.report({"v": v + 1, "step": 1})


def test_a_batched_trial_that_reports_after_all_moves_to_an_actor(tmp_path):
    # the function does not name report(): it is tried as a task, cut at its first
    # report, and every trial then runs on actors with its whole history
    def hidden(config):
        _report_twice(config["v"])
    grid = run(hidden, {"v": tune.grid_search([1, 2, 3, 4, 5])}, tmp_path,
               metric="v", mode="max")
    assert grid.num_errors == 0 and grid.num_terminated == 5
    for r in grid:
        assert [h["step"] for h in r.metrics_history] == [0, 1]
        assert [h["training_iteration"] for h in r.metrics_history] == [1, 2]
        assert len(pd.read_csv(os.path.join(r.path, "progress.csv"))) == 2


def test_trial_files_off_keeps_results_in_the_database_only(tmp_path):
    def f(config):
        if config["v"] == 2:     # a trial that asks for its directory gets one
            with open(os.path.join(tune.get_context().get_trial_dir(), "mine.txt"), "w") as fh:
                fh.write("x")
        return {"v": config["v"]}
    grid = run(f, {"v": tune.grid_search([1, 2, 3])}, tmp_path, metric="v", mode="max",
               run_config=tune.RunConfig(storage_path=str(tmp_path), name="nofiles",
                                         verbose=0, trial_files=False))
    assert grid.get_best_result().metrics["v"] == 3
    assert not any(os.path.exists(os.path.join(r.path, "result.json")) for r in grid)
    assert [os.path.exists(os.path.join(r.path, "mine.txt")) for r in grid] == [False, True, False]
    restored = tune.Tuner.restore(grid.experiment_path, f).fit()
    assert sorted(r.metrics["v"] for r in restored) == [1, 2, 3]


def test_fractional_resources_run_more_trials_at_once(tmp_path):
    import time

    def slow(config):     # reports: trial actors, one per fractional slot
        t0 = time.time()
        time.sleep(0.3)
        tune.report({"start": t0, "end": time.time()})
    grid = run(tune.with_resources(slow, {"CPU": 0.5}), {"i": tune.grid_search(list(range(8)))},
               tmp_path)
    spans = sorted((r.metrics["start"], r.metrics["end"]) for r in grid)
    most = max(sum(s <= t < e for s, e in spans) for t, _ in spans)
    assert most > 4     # 4 CPUs / 0.5: up to 8 at once, more than the 4 whole-CPU trials


def test_stop_criteria_and_done(tmp_path):
    def forever(config):
        i = 0
        while True:
            i += 1
            tune.report({"i": i})
    grid = run(forever, {}, tmp_path, run_config=tune.RunConfig(
        storage_path=str(tmp_path), name="stop", stop={"i": 7}, verbose=0))
    assert grid[0].metrics["i"] == 7 and grid[0].status == "TERMINATED"
    grid = run(forever, {}, tmp_path, run_config=tune.RunConfig(
        storage_path=str(tmp_path), name="stopfn", stop=lambda tid, r: r["i"] >= 3, verbose=0))
    assert grid[0].metrics["i"] == 3


def test_time_budget_stops_the_experiment(tmp_path):
    import time

    def slow(config):
        while True:
            time.sleep(0.05)
            tune.report({"t": time.time()})
    t0 = time.monotonic()
    grid = run(slow, {}, tmp_path, num_samples=-1, time_budget_s=1.0, metric="t", mode="max")
    assert time.monotonic() - t0 < 15
    assert len(grid) >= 1 and all(r.status == "TERMINATED" for r in grid)


def test_a_failing_trial_is_recorded_with_its_traceback_while_others_go_on(tmp_path):
    def sometimes(config):
        if config["x"] == 1:
            raise ValueError("x=1 is broken")
        tune.report({"ok": 1})
    grid = run(sometimes, {"x": tune.grid_search([0, 1, 2])}, tmp_path)
    assert grid.num_errors == 1 and grid.num_terminated == 2
    err = grid.errors[0]
    assert "x=1 is broken" in str(err) and "in sometimes" in err.traceback
    assert grid.get_dataframe()["error"].notna().sum() == 1


def test_a_trial_whose_process_dies_is_retried_from_its_checkpoint(tmp_path):
    marker = str(tmp_path / "died")

    def fragile(config):
        start = 0
        ckpt = tune.get_checkpoint()
        if ckpt is not None:
            start = ckpt.to_dict()["i"]
        for i in range(start, 6):
            tune.report({"i": i, "start": start},
                        checkpoint=tune.Checkpoint.from_dict({"i": i + 1}))
            if i == 3 and not os.path.exists(marker):
                open(marker, "w").close()
                os._exit(1)      # the trial's process dies mid-run
    grid = run(fragile, {}, tmp_path, run_config=tune.RunConfig(
        storage_path=str(tmp_path), name="retry", verbose=0,
        failure_config=tune.FailureConfig(max_failures=1)))
    r = grid[0]
    assert r.error is None and r.metrics["i"] == 5 and r.metrics["start"] == 4
    assert [h["i"] for h in r.metrics_history] == [0, 1, 2, 3, 4, 5]   # nothing twice
    assert [h["training_iteration"] for h in r.metrics_history] == [1, 2, 3, 4, 5, 6]


def test_a_process_death_without_retries_is_an_error(tmp_path):
    def dies(config):
        os._exit(3)
    grid = run(dies, {}, tmp_path)
    assert grid.num_errors == 1 and "died" in str(grid.errors[0])


def test_metric_nobody_reports_names_the_reported_keys(tmp_path):
    with pytest.raises(TuneError, match=r"'acc'.*\['loss', 'step'\]"):
        run(quadratic, {"x": 1.0}, tmp_path, metric="acc", mode="max")


def test_unpicklable_trainable_is_a_clear_error(tmp_path):
    import threading
    lock = threading.Lock()

    def uses_lock(config):
        with lock:
            tune.report({"a": 1})
    with pytest.raises(TuneError, match="cannot be pickled"):
        run(uses_lock, {}, tmp_path)


def test_impossible_resources_fail_at_fit(tmp_path):
    with pytest.raises(InfeasibleResourceError, match="no trial could ever start"):
        run(tune.with_resources(quadratic, {"CPU": 64}), {"x": 1.0}, tmp_path)


def test_report_outside_a_trial_is_an_error():
    with pytest.raises(TuneError, match="inside a trial"):
        tune.report({"a": 1})


def test_existing_experiment_directory_is_not_overwritten(tmp_path):
    run(quadratic, {"x": 1.0}, tmp_path, name="same")
    with pytest.raises(TuneError, match="Tuner.restore"):
        run(quadratic, {"x": 1.0}, tmp_path, name="same")


def test_optuna_tpe_beats_random_search_on_a_quadratic(tmp_path):
    optuna = pytest.importorskip("optuna")

    def bowl(config):
        return {"loss": (config["x"] - 1.7) ** 2 + (config["y"] + 0.4) ** 2}
    space = {"x": tune.uniform(-5, 5), "y": tune.uniform(-5, 5)}
    tpe, rnd = [], []
    for seed in range(3):
        g = run(bowl, space, tmp_path, name=f"tpe{seed}", metric="loss", mode="min",
                num_samples=40, search_alg=tune.ConcurrencyLimiter(
                    tune.OptunaSearch(sampler=optuna.samplers.TPESampler(
                        seed=seed, n_startup_trials=10)), max_concurrent=2))
        tpe.append(g.get_best_result().metrics["loss"])
        g = run(bowl, space, tmp_path, name=f"rnd{seed}", metric="loss", mode="min",
                num_samples=40, seed=seed)
        rnd.append(g.get_best_result().metrics["loss"])
    assert sum(tpe) < sum(rnd), (tpe, rnd)


def test_asha_stops_bad_trials_early_end_to_end(tmp_path):
    def curve(config):
        for i in range(1, 10):
            tune.report({"acc": config["q"] * (1 - 1 / (i + 1))})
    grid = run(curve, {"q": tune.grid_search([0.1 * k for k in range(8, 0, -1)])}, tmp_path,
               metric="acc", mode="max", max_concurrent_trials=2,
               scheduler=tune.ASHAScheduler(max_t=9, grace_period=1, reduction_factor=2))
    iters = {round(r.config["q"], 1): len(r.metrics_history) for r in grid}
    assert iters[0.8] == 9 and min(iters.values()) < 9
    assert any(r.stopped_early for r in grid)
    assert grid.get_best_result().config["q"] == pytest.approx(0.8)


def test_pbt_exploit_continues_from_the_donor_checkpoint_end_to_end(tmp_path):
    import time
    gate = str(tmp_path / "loser_at_2")
    exploited = str(tmp_path / "loser_exploited")
    donor_at_2 = str(tmp_path / "donor_at_2")

    def wait_for(path):
        deadline = time.time() + 60
        while not os.path.exists(path) and time.time() < deadline:
            time.sleep(0.01)

    def climb(config):
        ckpt = tune.get_checkpoint()
        state = ckpt.to_dict() if ckpt else {"w": 0.0, "it": 0, "slow": config["lr"] < 0.5}
        if ckpt and not state["slow"] and config["lr"] != 1.0:
            open(exploited, "w").close()       # the loser, restarted from the donor's weights
        w = state["w"]
        for it in range(state["it"], 8):
            if state["slow"] and it == 1:
                open(gate, "w").close()
                # the loser reports its iteration 2 only after the donor's (and a moment
                # for the driver to record it): both are ranked at the loser's check
                wait_for(donor_at_2)
                time.sleep(1.0)
            if not state["slow"] and it == 2:
                open(donor_at_2, "w").close()
                # the donor stays alive, its iteration-2 result recorded, until the
                # loser reports its iteration 2 (no race on who is ranked first)
                wait_for(gate)
            if config["lr"] == 1.0 and it == 7:
                wait_for(exploited)            # PBT copies only from trials still running
            w += config["lr"]
            tune.report({"w": w, "lr": config["lr"]}, checkpoint=tune.Checkpoint.from_dict(
                {"w": w, "it": it + 1, "slow": state["slow"]}))
    pbt = tune.PopulationBasedTraining(
        perturbation_interval=2, hyperparam_mutations={"lr": [0.01, 0.1, 1.0]},
        quantile_fraction=0.5, resample_probability=0.0, seed=1)
    grid = run(climb, {"lr": tune.grid_search([0.01, 1.0])}, tmp_path, metric="w", mode="max",
               scheduler=pbt)
    assert grid.num_errors == 0 and pbt.exploits
    _, loser, donor, ckpt = pbt.exploits[0]
    donor_it = int(ckpt.rsplit("_", 1)[1])
    r = next(r for r in grid if r.trial_id == loser)
    hist = r.metrics_history
    # after the exploit the loser goes on from the donor's weights with an explored lr
    k = next(i for i, h in enumerate(hist) if h["lr"] != 0.01)
    donor_hist = next(x for x in grid if x.trial_id == donor).metrics_history
    assert hist[k]["w"] == pytest.approx(donor_hist[donor_it - 1]["w"] + hist[k]["lr"])
    assert [h["training_iteration"] for h in hist[:k + 1]] == list(range(1, k + 2))
    assert hist[k]["lr"] == 0.1 and r.config["lr"] in (0.01, 0.1, 1.0)


def test_hyperband_pauses_and_resumes_trials_end_to_end(tmp_path):
    def curve(config):
        ckpt = tune.get_checkpoint()
        start = ckpt.to_dict()["i"] if ckpt else 0
        for i in range(start, 9):
            tune.report({"acc": config["q"] * (i + 1), "start": start},
                        checkpoint=tune.Checkpoint.from_dict({"i": i + 1}))
    grid = run(curve, {"q": tune.grid_search([0.1 * k for k in range(1, 10)])}, tmp_path,
               metric="acc", mode="max", max_concurrent_trials=3,
               scheduler=tune.HyperBandScheduler(max_t=9, reduction_factor=3))
    iters = sorted((len(r.metrics_history), round(r.config["q"], 1)) for r in grid)
    assert iters[-1] == (9, 0.9)                         # the best ran to max_t
    assert [n for n, _ in iters].count(1) == 6          # 6 of 9 dropped at the first rung
    best = grid.get_best_result()
    assert [h["training_iteration"] for h in best.metrics_history] == list(range(1, 10))
    assert max(h["start"] for h in best.metrics_history) >= 1   # resumed from a checkpoint


def test_plot_writes_a_png_and_the_table_shows_the_best(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    grid = run(quadratic, {"x": tune.grid_search([0.0, 3.0])}, tmp_path, metric="loss",
               mode="min", run_config=tune.RunConfig(storage_path=str(tmp_path), name="plot",
                                                     verbose=1))
    png = grid.plot()
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "2 TERMINATED" in out and "best:" in out and "loss=0.25" in out


@pytest.mark.parametrize("make, words", [
    (lambda: tune.TuneConfig(metric="a"), "metric and mode together"),
    (lambda: tune.TuneConfig(metric="a", mode="up"), "'min' or 'max'"),
    (lambda: tune.TuneConfig(num_samples=0), "num_samples"),
    (lambda: tune.TuneConfig(num_samples=-1), "needs time_budget_s"),
    (lambda: tune.RunConfig(stop=3), "stop must be"),
    (lambda: tune.FailureConfig(max_failures=-2), "max_failures"),
])
def test_bad_configs_are_rejected_when_made(make, words):
    with pytest.raises((ValueError, TypeError), match=words):
        make()


def test_a_batched_trial_that_kills_its_worker_fails_alone(tmp_path):
    def f(config):
        if config["i"] == 3:
            os._exit(7)           # the task's worker process dies mid-batch
        return {"i": config["i"]}
    grid = run(f, {"i": tune.grid_search(list(range(8)))}, tmp_path, metric="i", mode="max")
    assert grid.num_terminated == 7 and grid.num_errors == 1
    (bad,) = [r for r in grid if r.error is not None]
    assert bad.config == {"i": 3} and "died" in str(bad.error)
    assert sorted(r.metrics["i"] for r in grid if r.error is None) == [0, 1, 2, 4, 5, 6, 7]
