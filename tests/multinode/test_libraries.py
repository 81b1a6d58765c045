"""shoal's libraries on the two-node cluster give what they give on one machine."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from _netns_ray import ROOT

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.timeout(400)]


def _on_one_machine(code, tmp_path):
    src = ("import json, sys, shoal\n"
           "def emit(o): print('SHOAL-RESULT ' + json.dumps(o), flush=True)\n"
           "shoal.init(num_cpus=4)\n" + code + "\nshoal.shutdown()\n")
    out = subprocess.run([sys.executable, "-c", src], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=ROOT), cwd=str(tmp_path))
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("SHOAL-RESULT ")]
    assert lines, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads(lines[-1][len("SHOAL-RESULT "):])


PROGRAM = """
import numpy as np
import pandas as pd
import shoal.data as sd
from shoal.ml import LogisticRegression, RandomForestClassifier, StandardScaler

rng = np.random.default_rng(0)
X = rng.normal(size=(3000, 5))
y = (X[:, 0] + 0.5 * X[:, 1] - 0.25 * X[:, 2] > 0).astype(np.int64)
df = pd.DataFrame(X, columns=[f"f{i}" for i in range(5)]).assign(y=y)
ds = sd.from_pandas(df, override_num_blocks=8)
feats = [f"f{i}" for i in range(5)]

def node_of(batch):
    batch["node"] = np.array([shoal.get_runtime_context().node_id] * len(batch["y"]))
    return batch

piped = (ds.map_batches(lambda b: {**b, "s": b["f0"] * 2 + b["f1"]})
           .filter(expr=None, fn=lambda r: r["y"] == 1)
           .map_batches(node_of))
rows = piped.count()
total = piped.sum("s")
by = sd.from_pandas(df.assign(g=y * 2 + (X[:, 3] > 0)), override_num_blocks=6).groupby("g").count().to_pandas()
nodes = sorted(set(piped.to_pandas()["node"]))

rf = RandomForestClassifier(n_estimators=8, max_depth=4, random_state=0).fit(ds, features=feats, label="y")
lr = LogisticRegression(C=1.0, max_iter=200).fit(ds.select_columns(feats + ["y"]), "y")
sc = StandardScaler().fit(ds.select_columns(feats))
emit({"rows": rows, "sum": float(total), "groups": by.sort_values("g").values.tolist(),
      "rf": rf.predict_proba(X[:200]).tolist(), "lr_coef": np.asarray(lr.coef_).ravel().tolist(),
      "lr_pred": lr.predict(X[:200]).tolist(), "sc": np.asarray(sc.mean_).tolist(), "nodes": len(nodes)})
"""


def test_data_pipeline_and_ml_fits_match_one_machine(cluster, tmp_path):
    got = cluster.run(PROGRAM, timeout=300)
    want = _on_one_machine(PROGRAM, tmp_path)
    assert got["rows"] == want["rows"]
    assert got["sum"] == pytest.approx(want["sum"], rel=1e-12)
    assert got["groups"] == want["groups"]
    np.testing.assert_allclose(got["rf"], want["rf"], rtol=1e-9)
    assert got["lr_coef"] == pytest.approx(want["lr_coef"], rel=1e-6, abs=1e-9)
    assert got["lr_pred"] == want["lr_pred"]
    assert got["sc"] == pytest.approx(want["sc"], rel=1e-12)


def test_hundred_megabyte_object_is_read_on_both_nodes(cluster):
    got = cluster.run("""
import numpy as np

@shoal.remote(num_cpus=0)
def checksum(a):
    return float(a[::4096].sum()), a.nbytes, shoal.get_runtime_context().node_id

@shoal.remote(num_cpus=0)
def make(n):
    return np.full(n, 3, dtype=np.uint8)

big = np.arange(100 << 20, dtype=np.uint8)
ref = shoal.put(big)
here = [checksum.options(resources={r: 1}).remote(ref) for r in ("head", "worker")]
res = shoal.get(here, timeout=120)
back = shoal.get(make.options(resources={"worker": 1}).remote(100 << 20), timeout=120)
emit({"res": res, "want": float(big[::4096].sum()), "back": [int(back.sum()), back.nbytes]})
""")
    (s0, n0, node0), (s1, n1, node1) = got["res"]
    assert node0 != node1
    assert s0 == s1 == got["want"] and n0 == n1 == 100 << 20
    assert got["back"] == [3 * (100 << 20), 100 << 20]
