"""An elastic Trainer on the Ray backend: a worker's process killed, the gang shrinks to 1
and grows back to 2 when Ray places the replacement actor."""
from __future__ import annotations

import glob
import importlib.util
import json
import os
import shutil
import tempfile
import threading

import pytest
from test_elastic import _elastic_loop, _kill_rank_one

import shoal
import shoal.train as st

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def ray_cluster():
    if importlib.util.find_spec("ray") is None:
        pytest.skip("the Ray backend's tests need ray: pip install 'ray' to run them")
    was_local = shoal.is_initialized()
    if was_local:
        shoal.shutdown()
    temp_dir = tempfile.mkdtemp(prefix="ray-elastic-")
    shoal.init(num_cpus=2, backend="ray", log_to_driver=False, _temp_dir=temp_dir)
    try:
        yield
    finally:
        shoal.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
        if was_local:
            shoal.init(num_cpus=4)


@pytest.mark.timeout(180)
def test_elastic_run_on_ray_shrinks_and_grows_back(ray_cluster, tmp_path):
    out = str(tmp_path)
    stop = threading.Event()
    killer = threading.Thread(target=_kill_rank_one, args=(out, stop, 2), daemon=True)
    killer.start()
    try:
        result = st.Trainer(_elastic_loop, num_workers=(1, 2),
                            config={"out": out, "sizes": (1, 2)}, collective_timeout=60,
                            elastic_config=st.ElasticConfig(settle_s=30),
                            run_config=st.RunConfig(storage_path=out, verbose=0)).fit()
    finally:
        stop.set()
        killer.join(timeout=5)
    sizes = [c["world_size"] for c in result.membership_changes]
    assert sizes[0] == 2 and 1 in sizes and sizes[-1] == 2, result.membership_changes
    shrink = next(c for c in result.membership_changes if c["left"])
    assert shrink["left"][0]["rank"] == 1 and shrink["resumed_step"] is not None
    # after every sync the members held the same parameters and optimizer state
    syncs: dict = {}
    for f in glob.glob(f"{out}/sync-*"):
        for line in open(f).read().splitlines():
            commits, world, _, p, o, _ = json.loads(line)
            syncs.setdefault((commits, world), set()).add((p, o))
    assert all(len(v) == 1 for v in syncs.values()), syncs
    assert any(w == 2 and c > 0 for c, w in syncs)          # the regrown gang synced mid-run
    assert os.path.exists(os.path.join(result.path, "membership.json"))
