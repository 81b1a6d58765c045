"""Collective groups whose ranks are actors on different nodes of a Ray cluster."""
import pytest

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.timeout(400)]

MEMBER = """
import numpy as np
from shoal import collective

@shoal.remote(num_cpus=0)
class Member:
    def form(self, rank, world, name, timeout=30, host=None):
        if host:
            os.environ["SHOAL_COLLECTIVE_HOST"] = host
        self.comm = collective.init_group(rank, world, shoal.get_kv_store(), name=name,
                                          timeout=timeout)
        return {"hosts": [list(h) for h in self.comm.topology.hosts],
                "shm": self.comm.shm is not None,
                "node": shoal.get_runtime_context().node_id}

    def allreduce(self, n):
        x = np.arange(n, dtype=np.float64) * (self.comm.rank + 1)
        self.comm.allreduce(x)
        return float(x.sum())

    def destroy(self):
        self.comm.destroy()
"""


def test_group_of_one_rank_per_node_forms_and_reduces(cluster):
    got = cluster.run(MEMBER + """
members = [Member.options(resources={"head": 1}).remote(), Member.options(resources={"worker": 1}).remote()]
info = shoal.get([m.form.remote(r, 2, "pair") for r, m in enumerate(members)], timeout=90)
sums = shoal.get([m.allreduce.remote(n) for m in members for n in (3, 1 << 20)], timeout=90)
shoal.get([m.destroy.remote() for m in members], timeout=30)
emit({"info": info, "sums": sums})
""")
    assert got["info"][0]["node"] != got["info"][1]["node"]
    assert all(i["hosts"] == [[0], [1]] and not i["shm"] for i in got["info"])
    n = 1 << 20
    want = [3.0 * 3, 3.0 * n * (n - 1) / 2]
    assert got["sums"] == want + want


def test_unreachable_rank_fails_formation_on_every_rank_naming_it(cluster):
    # rank 1 (worker node) advertises loopback, which the head node cannot reach
    got = cluster.run(MEMBER + """
import time
members = [Member.options(resources={"head": 1}).remote(), Member.options(resources={"worker": 1}).remote()]
t0 = time.monotonic()
refs = [m.form.remote(r, 2, "bad", 120, "127.0.0.1" if r else None) for r, m in enumerate(members)]
errors = []
for ref in refs:
    try:
        shoal.get(ref, timeout=150)
        errors.append(None)
    except shoal.exceptions.TaskError as e:
        errors.append(str(e))
emit({"errors": errors, "seconds": time.monotonic() - t0})
""", timeout=300)
    for err in got["errors"]:
        assert err is not None
        assert "rank 0 could not connect to rank 1 at 127.0.0.1:" in err
        assert "SHOAL_COLLECTIVE_HOST" in err
    assert got["seconds"] < 120  # the formation timeout: failing ranks do not wait it out


def test_two_ranks_per_node_share_memory_inside_a_node_and_tcp_between(cluster):
    got = cluster.run(MEMBER + """
members = [Member.options(resources={"head" if r < 2 else "worker": 1}).remote() for r in range(4)]
info = shoal.get([m.form.remote(r, 4, "quad") for r, m in enumerate(members)], timeout=90)
sums = shoal.get([m.allreduce.remote(n) for m in members for n in (5, 3000, 1 << 20)], timeout=120)
shoal.get([m.destroy.remote() for m in members], timeout=30)
emit({"info": info, "sums": sums})
""")
    nodes = [i["node"] for i in got["info"]]
    assert nodes[0] == nodes[1] != nodes[2] == nodes[3]
    assert all(i["hosts"] == [[0, 1], [2, 3]] and i["shm"] for i in got["info"])
    want = [10.0 * n * (n - 1) / 2 for n in (5, 3000, 1 << 20)]
    assert got["sums"] == want * 4
