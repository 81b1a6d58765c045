"""An elastic Trainer on the two-node Ray cluster: membership comes from Ray itself. The
worker node dies (every process of its namespace, raylet included): the gang shrinks to the
head node's worker; the node comes back (``ray start --address``): Ray places the pending
worker there and the gang grows back to one worker per node."""
import json
import os
import time

import pytest

from tests._elastic_logs import assert_each_epoch_used_every_sample_once, rows

pytestmark = [pytest.mark.netns, pytest.mark.slow]

N, BATCH = 96, 4

# One worker per node (each needs 2 of a node's 3 CPUs); logs every step and every sync.
LOOP = f"""
import hashlib, time
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
import shoal.train as st
from shoal.train import elastic

def loop(config):
    out = config["out"]
    torch.manual_seed(0)
    ds = TensorDataset(torch.randn({N}, 8), torch.randn({N}, 1), torch.arange({N}))
    model = st.prepare_model(nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loader = st.prepare_data_loader(DataLoader(ds, batch_size={BATCH}, shuffle=True))
    state = elastic.State(model=model, optimizer=optimizer, loader=loader, epoch=0,
                          worlds=[], done=False)
    pid = os.getpid()

    def digest():
        h = hashlib.sha256()
        for t in list(model.state_dict().values()) + [
                s["momentum_buffer"] for s in optimizer.state_dict()["state"].values()]:
            h.update(t.detach().numpy().tobytes())
        return h.hexdigest()

    @elastic.run
    def train(state):
        ctx = st.get_context()
        if not state.worlds or state.worlds[-1] != ctx.world_size:
            state.worlds = state.worlds + [ctx.world_size]
        hosts = len(st.get_communicator().topology.hosts)
        with open(f"{{out}}/sync-{{pid}}", "a") as f:
            f.write(json.dumps([state.commits, ctx.world_size, ctx.rank, digest(), hosts]) + "\\n")
        for state.epoch in range(state.epoch, 300):
            loader.set_epoch(state.epoch)
            for x, y, idx in loader:
                ctx = st.get_context()
                with open(f"{{out}}/steps-{{pid}}", "a") as f:
                    f.write(json.dumps([state.epoch, ctx.rank, ctx.world_size, idx.tolist(),
                                        state.commits + 1, ctx.attempt, hosts]) + "\\n")
                optimizer.zero_grad()
                nn.functional.mse_loss(model(x), y).backward()
                optimizer.step()
                state.commit()
                time.sleep(0.05)
            if state.done:
                break
            w = state.worlds
            state.done = 1 in w and w[-1] == 2 and w.index(1) < len(w) - 1
    train(state)
"""


def _wait(cond, proc, timeout, what):
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"the driver ended while waiting for {what}:\n"
                                 f"{proc.communicate()[0][-6000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out after {timeout}s waiting for {what}:\n"
                                 f"{proc.communicate()[0][-6000:]}")
        time.sleep(0.2)


def _trained(out, world, hosts, steps=4):
    """Some process logged ``steps`` steps in a world of ``world`` ranks over ``hosts`` hosts."""
    counts: dict = {}
    for pid, row in rows(out, "steps"):
        if row[2] == world and row[6] == hosts:
            counts[pid] = counts.get(pid, 0) + 1
    return any(n >= steps for n in counts.values())


@pytest.mark.timeout(400)
def test_elastic_trainer_shrinks_when_a_ray_node_dies_and_grows_when_one_joins(cluster, tmp_path):
    out = str(tmp_path / "log")
    os.makedirs(out)
    cluster.wait_for_free_cpus(4)
    code = LOOP + f"""
res = st.Trainer(loop, num_workers=(1, 2), resources_per_worker={{"CPU": 2}},
                 config={{"out": {out!r}}}, collective_timeout=20,
                 elastic_config=st.ElasticConfig(settle_s=60, min_workers_timeout=120),
                 run_config=st.RunConfig(name="run", storage_path={str(tmp_path / "c")!r},
                                         verbose=1)).fit()
emit({{"changes": res.membership_changes}})
"""
    proc = cluster.popen(code)
    stopped = False
    try:
        _wait(lambda: _trained(out, 2, 2), proc, 180, "a worker on each node training")
        t0 = time.monotonic()
        cluster.stop_worker()               # the node is lost: raylet, worker, everything
        stopped = True
        _wait(lambda: _trained(out, 1, 1, steps=2), proc, 120, "the head's worker alone")
        shrunk_in = time.monotonic() - t0
        cluster.start_worker()              # a node joins the Ray cluster
        stopped = False
        try:
            got, _ = proc.communicate(timeout=180)
        except Exception:
            proc.kill()
            raise AssertionError(f"the driver ran past 180 s after the node came back:\n"
                                 f"{proc.communicate()[0][-6000:]}\n{cluster.ray_status()}"
                                 ) from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        if stopped:
            cluster.start_worker()          # later tests see two nodes again
    lines = [ln for ln in got.splitlines() if ln.startswith("SHOAL-RESULT ")]
    assert proc.returncode == 0 and lines, got[-6000:]
    changes = json.loads(lines[-1][len("SHOAL-RESULT "):])["changes"]
    assert [c["world_size"] for c in changes] == [2, 1, 2], changes
    assert changes[1]["left"] and changes[2]["joined"], changes
    assert all(c["resumed_step"] is not None for c in changes), changes
    assert "membership change 1: left: rank" in got and "world size 1 -> 2" in got, got[-3000:]
    assert shrunk_in < 100              # bounded: the collective timeout, not a hang

    # every generation's members held identical parameters and momentum after the sync
    # (the worker on the new node got exactly the survivor's), across both nodes
    syncs: dict = {}
    for _, (commits, world, _, digest, hosts) in rows(out, "sync"):
        syncs.setdefault((commits, world), set()).add(digest)
        assert hosts == world, (world, hosts)       # one worker per node: TCP between them
    assert all(len(v) == 1 for v in syncs.values()), syncs
    assert any(w == 2 and c > 0 for c, w in syncs), syncs      # the regrown gang synced mid-run
    # each finished epoch used every sample once (a step cut short by the node's death is
    # done again by the next generation, whose rows replace it)
    assert_each_epoch_used_every_sample_once(out, N, max_world=2)
