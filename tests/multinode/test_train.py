"""shoal.train across the two nodes: same results as on one machine, restarts when a node dies."""
import json
import os
import subprocess
import sys
import time

import pytest

from _netns_ray import ROOT

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.timeout(400)]

# A deterministic loop: full-batch regression, identical data on every rank split by rank.
LOOP = """
import numpy as np
import torch
import shoal.train as st

def loop(config):
    ctx = st.get_context()
    torch.manual_seed(0)
    model = st.prepare_model(torch.nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    X = torch.randn(64, 8, generator=g)
    y = X @ torch.arange(8.0).unsqueeze(1)
    n = 64 // ctx.world_size
    part = slice(ctx.rank * n, (ctx.rank + 1) * n)
    start = 0
    ck = st.get_checkpoint()
    if ck is not None:
        state = ck.to_dict()
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = state["epoch"] + 1
    for epoch in range(start, config["epochs"]):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(X[part]), y[part])
        loss.backward()
        opt.step()
        if config.get("slow"):
            import time; time.sleep(config["slow"])
        w = [float(v) for v in next(model.parameters()).detach().reshape(-1)]
        st.report({"epoch": epoch, "loss": float(loss), "w": json.dumps(w),
                   "hosts": len(st.get_communicator().topology.hosts)},
                  checkpoint=st.Checkpoint.from_dict({"model": model.state_dict(),
                                                      "opt": opt.state_dict(), "epoch": epoch}))
"""


def _fit_code(storage, workers=2, **kw):
    args = ", ".join(f"{k}={v}" for k, v in kw.items())
    return LOOP + f"""
res = st.Trainer(loop, num_workers={workers}, config={{"epochs": 5}},
                 run_config=st.RunConfig(storage_path={storage!r}, verbose=0), {args}).fit()
emit({{"w": json.loads(res.metrics["w"]), "loss": res.metrics["loss"],
       "attempts": res.attempts, "hosts": res.metrics["hosts"]}})
"""


def _one_machine(code, tmp_path):
    """Run ``code`` on the local backend (one machine) and return what it emitted."""
    src = ("import json, sys, shoal\n"
           "def emit(o): print('SHOAL-RESULT ' + json.dumps(o), flush=True)\n"
           "shoal.init(num_cpus=4)\n" + code)
    out = subprocess.run([sys.executable, "-c", src], capture_output=True, text=True, timeout=240,
                         env=dict(os.environ, PYTHONPATH=ROOT), cwd=str(tmp_path))
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("SHOAL-RESULT ")]
    assert lines, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads(lines[-1][len("SHOAL-RESULT "):])


# collective_timeout bounds the Trainer's placement, start and reports well inside the
# driver's bound, so a stuck gang fails with the Trainer's own message.
def test_trainer_one_worker_per_node_matches_one_machine(cluster, tmp_path):
    cluster.wait_for_free_cpus(2)
    got = cluster.run(_fit_code(str(tmp_path / "c"), placement_strategy='"STRICT_SPREAD"',
                                collective_timeout=120), timeout=240)
    local = _one_machine(_fit_code(str(tmp_path / "l")), tmp_path)
    assert got["hosts"] == 2 and local["hosts"] == 1
    assert got["w"] == pytest.approx(local["w"], rel=1e-6)
    assert got["loss"] == pytest.approx(local["loss"], rel=1e-6)


def test_trainer_two_workers_per_node_matches_one_machine(cluster, tmp_path):
    cluster.wait_for_free_cpus(4)
    got = cluster.run(_fit_code(str(tmp_path / "c"), workers=4, placement_strategy='"SPREAD"',
                                collective_timeout=120), timeout=240)
    local = _one_machine(_fit_code(str(tmp_path / "l"), workers=4), tmp_path)
    assert got["hosts"] == 2 and local["hosts"] == 1
    # float32 gradients summed in another order ((r0+r1)+(r2+r3) across hosts, in rank
    # order in one shared-memory group) round differently in the last bits
    assert got["w"] == pytest.approx(local["w"], rel=1e-5, abs=1e-6)
    assert got["loss"] == pytest.approx(local["loss"], rel=1e-5)


def _wait_for(path, proc, timeout=180):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise AssertionError(f"the driver ended early:\n{proc.communicate()[0][-6000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{path} did not appear within {timeout}s:\n"
                                 f"{proc.communicate()[0][-6000:]}")
        time.sleep(0.2)


def _result_of(proc, timeout=300):
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"the driver ran past {timeout}s:\n{proc.communicate()[0][-6000:]}"
                             ) from None
    lines = [ln for ln in out.splitlines() if ln.startswith("SHOAL-RESULT ")]
    assert lines, out[-6000:]
    return json.loads(lines[-1][len("SHOAL-RESULT "):]), out


# Node failure tests end with the worker node restarted, so later tests see two nodes again.
def test_worker_node_dies_mid_training_and_the_gang_restarts_from_its_checkpoint(cluster, tmp_path):
    storage = str(tmp_path / "c")
    code = LOOP + f"""
res = st.Trainer(loop, num_workers=2, config={{"epochs": 8, "slow": 0.5}},
                 run_config=st.RunConfig(name="run", storage_path={storage!r}, verbose=1),
                 failure_config=st.FailureConfig(max_failures=1), placement_strategy="SPREAD",
                 collective_timeout=120).fit()
emit({{"w": json.loads(res.metrics["w"]), "epoch": res.metrics["epoch"], "attempts": res.attempts}})
"""
    proc = cluster.popen(code)
    try:
        _wait_for(os.path.join(storage, "run", "checkpoint_000002"), proc)
        t0 = time.monotonic()
        cluster.stop_worker()
        got, log = _result_of(proc)
        recovered_in = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
        cluster.start_worker()
    assert got["attempts"] == 2 and got["epoch"] == 7, log[-3000:]
    assert "attempt 1 failed" in log
    want = _one_machine(LOOP + f"""
res = st.Trainer(loop, num_workers=2, config={{"epochs": 8}},
                 run_config=st.RunConfig(storage_path={str(tmp_path / "l")!r}, verbose=0)).fit()
emit({{"w": json.loads(res.metrics["w"])}})
""", tmp_path)
    assert got["w"] == pytest.approx(want["w"], rel=1e-6)
    assert recovered_in < 240   # bounded: not the collective timeout of a hung peer, twice


def test_worker_node_dies_with_no_failures_left_raises_a_clear_error(cluster, tmp_path):
    storage = str(tmp_path / "c")
    code = LOOP + f"""
try:
    st.Trainer(loop, num_workers=2, config={{"epochs": 50, "slow": 0.5}},
               run_config=st.RunConfig(name="run", storage_path={storage!r}, verbose=0),
               placement_strategy="STRICT_SPREAD", collective_timeout=120).fit()
    emit({{"error": None}})
except shoal.exceptions.TrainingFailedError as e:
    emit({{"error": str(e), "attempts": e.result.attempts}})
"""
    proc = cluster.popen(code)
    try:
        _wait_for(os.path.join(storage, "run", "checkpoint_000001"), proc)
        cluster.stop_worker()
        got, log = _result_of(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        cluster.start_worker()
    assert got["error"] and "max_failures=0" in got["error"], log[-3000:]
    assert got["attempts"] == 1


def test_trainer_whose_ranks_cannot_reach_each_other_fails_naming_rank_address_and_fix(cluster,
                                                                                         tmp_path):
    # every rank advertises loopback: the rank on the other node cannot reach it
    got = cluster.run(LOOP + f"""
shoal.shutdown()
shoal.init(address={cluster.address!r},
           runtime_env={{"env_vars": {{"SHOAL_COLLECTIVE_HOST": "127.0.0.1"}}}})
try:
    st.Trainer(loop, num_workers=2, config={{"epochs": 2}}, placement_strategy="STRICT_SPREAD",
               run_config=st.RunConfig(storage_path={str(tmp_path)!r}, verbose=0)).fit()
    emit(None)
except shoal.exceptions.TrainingFailedError as e:
    emit(str(e))
""", timeout=300)
    assert got is not None
    assert "could not connect to rank 1 at 127.0.0.1:" in got
    assert "SHOAL_COLLECTIVE_HOST" in got
