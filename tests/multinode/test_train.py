"""shoal.train across the two nodes: same results as on one machine, restarts when a node dies."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

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
    part = slice(ctx.rank * 32, (ctx.rank + 1) * 32)
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
        if config.get("stall_at") == epoch and ctx.rank == 1:
            import time; time.sleep(3600)
        if config.get("slow"):
            import time; time.sleep(config["slow"])
        w = [float(v) for v in next(model.parameters()).detach().reshape(-1)]
        st.report({"epoch": epoch, "loss": float(loss), "w": json.dumps(w),
                   "node": shoal.get_runtime_context().node_id},
                  checkpoint=st.Checkpoint.from_dict({"model": model.state_dict(),
                                                      "opt": opt.state_dict(), "epoch": epoch}))
"""


def _fit_code(storage, **kw):
    args = ", ".join(f"{k}={v}" for k, v in kw.items())
    return LOOP + f"""
res = st.Trainer(loop, num_workers=2, config={{"epochs": 5}},
                 run_config=st.RunConfig(storage_path={storage!r}, verbose=0), {args}).fit()
emit({{"w": json.loads(res.metrics["w"]), "loss": res.metrics["loss"],
       "nodes": sorted(set(res.metrics_dataframe["node"])), "attempts": res.attempts}})
"""


def test_trainer_one_worker_per_node_matches_one_machine(cluster, tmp_path):
    got = cluster.run(_fit_code(str(tmp_path / "c"), placement_strategy='"STRICT_SPREAD"'),
                      timeout=240)
    # the same program on one machine (local backend)
    code = ("import json, sys, shoal\n"
            "def emit(o): print('SHOAL-RESULT ' + json.dumps(o), flush=True)\n"
            "shoal.init(num_cpus=2)\n" + _fit_code(str(tmp_path / "l")))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240,
                         env=dict(os.environ, PYTHONPATH=ROOT), cwd=str(tmp_path))
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("SHOAL-RESULT ")]
    assert lines, out.stdout[-3000:] + out.stderr[-3000:]
    local = json.loads(lines[-1][len("SHOAL-RESULT "):])
    assert got["w"] == pytest.approx(local["w"], rel=1e-6)
    assert got["loss"] == pytest.approx(local["loss"], rel=1e-6)
