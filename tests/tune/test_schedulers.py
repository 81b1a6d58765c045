"""Each scheduler's decisions on a scripted sequence of results."""
import pytest

from shoal import tune
from shoal.tune.schedulers import CONTINUE, PAUSE, STOP
from shoal.tune.trial import PAUSED, Trial


def trials(n):
    return [Trial(f"t{i}", {"lr": 0.1 * (i + 1)}) for i in range(n)]


def result(it, acc):
    return {"training_iteration": it, "acc": acc}


def test_fifo_always_continues():
    s = tune.FIFOScheduler()
    assert s.on_trial_result(trials(1)[0], result(1, 0.0)) == CONTINUE


def test_asha_promotes_and_stops_at_a_rung_without_waiting_for_the_others():
    s = tune.ASHAScheduler(metric="acc", mode="max", max_t=9, grace_period=1, reduction_factor=3)
    ts = trials(4)
    for t in ts:
        s.on_trial_add(t)
    # rungs at 1 and 3 (< max_t=9); the first arrival at a rung always goes on
    assert s.on_trial_result(ts[0], result(1, 0.5)) == CONTINUE
    # better than the top third so far: promoted at once, no barrier on t2, t3
    assert s.on_trial_result(ts[1], result(1, 0.9)) == CONTINUE
    # worse than the 2/3 quantile of {0.5, 0.9}: stopped at once
    assert s.on_trial_result(ts[2], result(1, 0.3)) == STOP
    # rung 3: t1 first there, goes on; t0 worse, stopped
    assert s.on_trial_result(ts[1], result(3, 0.95)) == CONTINUE
    assert s.on_trial_result(ts[0], result(2, 0.6)) == CONTINUE     # between rungs
    assert s.on_trial_result(ts[0], result(3, 0.7)) == STOP
    # reaching max_t ends a trial
    assert s.on_trial_result(ts[1], result(9, 0.97)) == STOP


def test_asha_min_mode_flips_the_comparison():
    s = tune.ASHAScheduler(metric="loss", mode="min", max_t=10, grace_period=1, reduction_factor=2)
    a, b = trials(2)
    s.on_trial_add(a), s.on_trial_add(b)
    assert s.on_trial_result(a, {"training_iteration": 1, "loss": 1.0}) == CONTINUE
    assert s.on_trial_result(b, {"training_iteration": 1, "loss": 5.0}) == STOP


def test_asha_needs_metric_and_mode():
    s = tune.ASHAScheduler(max_t=10)
    with pytest.raises(ValueError, match="needs metric and mode"):
        s.on_trial_add(trials(1)[0])


def test_hyperband_pauses_at_the_rung_then_resumes_the_best_third():
    s = tune.HyperBandScheduler(metric="acc", mode="max", max_t=9, reduction_factor=3)
    # s_max = 2: the first bracket holds 9 trials, first rung at 1 iteration
    ts = trials(9)
    for t in ts:
        s.on_trial_add(t)
    for i, t in enumerate(ts):
        assert s.on_trial_result(t, result(1, i / 10)) == PAUSE
        t.status = PAUSED
    assert s.choose_trial_to_run([], no_more_trials=False) is None   # nobody to resume yet
    resumed = []
    while (t := s.choose_trial_to_run(ts, no_more_trials=False)) is not None:
        resumed.append(t.trial_id)
        ts = [x for x in ts if x is not t]
    assert sorted(resumed) == ["t6", "t7", "t8"]        # the best 9/3
    dropped = {t.trial_id for t in s.trials_to_stop(ts)}
    assert dropped == {f"t{i}" for i in range(6)}
    # next rung is at 3 iterations
    t8 = Trial("t8", {})
    assert s.on_trial_result(t8, result(2, 0.9)) == CONTINUE
    assert s.on_trial_result(t8, result(3, 0.9)) == PAUSE


def test_median_stopping_stops_a_trial_below_the_median_of_running_averages():
    s = tune.MedianStoppingRule(time_attr="training_iteration", metric="acc", mode="max",
                                grace_period=2, min_samples_required=2)
    ts = trials(3)
    for t in ts:
        s.on_trial_add(t)
    for it in (1, 2, 3):
        s.on_trial_result(ts[0], result(it, 0.8))
        s.on_trial_result(ts[1], result(it, 0.7))
    assert s.on_trial_result(ts[2], result(1, 0.1)) == CONTINUE   # grace period
    assert s.on_trial_result(ts[2], result(2, 0.2)) == STOP       # best 0.2 < median 0.75
    ok = Trial("ok", {})
    s.on_trial_add(ok)
    assert s.on_trial_result(ok, result(2, 0.9)) == CONTINUE


def test_pbt_exploit_copies_a_top_trial_checkpoint_and_explores_its_config():
    s = tune.PopulationBasedTraining(
        metric="acc", mode="max", perturbation_interval=2,
        hyperparam_mutations={"lr": tune.loguniform(1e-4, 1), "opt": ["sgd", "adam", "rms"]},
        quantile_fraction=0.25, resample_probability=0.0, seed=0)
    ts = [Trial(f"t{i}", {"lr": 0.01 * (i + 1), "opt": "adam"}) for i in range(4)]
    for i, t in enumerate(ts):
        s.on_trial_add(t)
        t.checkpoint = f"/ckpt/t{i}"
    # iteration 1: before the interval, nothing happens
    assert all(s.on_trial_result(t, result(1, 0.1 * i)) == CONTINUE for i, t in enumerate(ts))
    # iteration 2: t3 reports first (alone, nothing to compare), then t0, worse: exploit
    assert s.on_trial_result(ts[3], result(2, 0.9)) == CONTINUE
    assert s.on_trial_result(ts[0], result(2, 0.0)) == PAUSE
    new_config, ckpt = ts[0].exploit
    assert ckpt == "/ckpt/t3"                                # the top quantile's checkpoint
    assert new_config["lr"] in (pytest.approx(0.04 * 1.2), pytest.approx(0.04 * 0.8))
    assert new_config["opt"] in ("sgd", "rms")               # a neighbour of "adam"
    assert s.exploits == [(2, "t0", "t3", "/ckpt/t3")]
    # ranked t0 < t1 < t3: only t0 is in the bottom quantile, t1 goes on
    assert s.on_trial_result(ts[1], result(2, 0.5)) == CONTINUE


def test_pbt_without_a_donor_checkpoint_continues():
    s = tune.PopulationBasedTraining(metric="acc", mode="max", perturbation_interval=1,
                                     hyperparam_mutations={"lr": [0.1, 0.2]})
    a, b = trials(2)
    s.on_trial_add(a), s.on_trial_add(b)
    s.on_trial_result(b, result(1, 0.9))
    assert s.on_trial_result(a, result(1, 0.1)) == CONTINUE


def test_scheduler_state_round_trips():
    s = tune.ASHAScheduler(metric="acc", mode="max", max_t=9, grace_period=1, reduction_factor=3)
    a, b = trials(2)
    s.on_trial_add(a), s.on_trial_add(b)
    s.on_trial_result(a, result(1, 0.9))
    s2 = tune.ASHAScheduler(metric="acc", mode="max", max_t=9, grace_period=1, reduction_factor=3)
    s2.set_state(s.get_state())
    assert s2.on_trial_result(b, result(1, 0.1)) == STOP


def test_pb2_explores_where_the_gp_expects_the_most_improvement():
    pytest.importorskip("sklearn")
    s = tune.PB2(metric="acc", mode="max", perturbation_interval=2,
                 hyperparam_bounds={"lr": [0.0, 1.0]}, quantile_fraction=0.25, seed=0)
    # a population whose accuracy grows fastest at lr = 0.7 (the change per step is
    # 1 - |lr - 0.7|); every result adds a point once a trial has a previous one
    ts = [Trial(f"t{i}", {"lr": i / 7}) for i in range(8)]
    for i, t in enumerate(ts):
        s.on_trial_add(t)
        t.checkpoint = f"/ckpt/t{i}"
    acc = {t.trial_id: 0.0 for t in ts}
    for it in (1, 2, 3, 4):
        # at the perturbation (4) the best report first: the worst are then in the
        # bottom quantile with donors above them
        for t in (ts if it < 4 else ts[::-1]):
            acc[t.trial_id] += 1 - abs(t.config["lr"] - 0.7)
            decision = s.on_trial_result(t, result(it, acc[t.trial_id]))
            if decision == PAUSE:
                new_config, ckpt = t.exploit
                assert ckpt in {f"/ckpt/t{i}" for i in (4, 5, 6, 7)}   # from the top
                assert new_config["lr"] == pytest.approx(0.7, abs=0.15)  # the GP's pick
                t.exploit = None
    assert s.exploits and len(s.points) == 8 * 3
    assert s.select()["lr"] == pytest.approx(0.7, abs=0.15)


def test_pb2_checks_its_bounds_and_keeps_its_state():
    with pytest.raises(ValueError, match="hyperparam_bounds"):
        tune.PB2(metric="acc", mode="max")
    with pytest.raises(ValueError, match="low < high"):
        tune.PB2(metric="acc", mode="max", hyperparam_bounds={"lr": [1.0, 0.1]})
    with pytest.raises(ValueError, match="must be"):
        tune.PB2(metric="acc", mode="max", hyperparam_bounds={"lr": tune.choice([1, 2])})
    s = tune.PB2(metric="acc", mode="max", hyperparam_bounds={"lr": tune.loguniform(1e-4, 1)})
    t = Trial("t0", {"lr": 1e-2})
    s.on_trial_add(t)
    s.on_trial_result(t, result(1, 0.1))
    s.on_trial_result(t, result(2, 0.3))
    assert s.points == [(2.0, pytest.approx(0.5), pytest.approx(0.2))]  # 1e-2: mid of the log scale
    s2 = tune.PB2(metric="acc", mode="max", hyperparam_bounds={"lr": tune.loguniform(1e-4, 1)})
    s2.set_state(s.get_state())
    assert s2.points == s.points and s2.previous == s.previous
