"""Collectives among shoal actors formed by create_actor_group."""
import numpy as np
import pytest

import shoal
from shoal import collective

pytestmark = pytest.mark.slow


class Worker:
    def __init__(self, scale):
        self.scale = scale

    def allreduce(self, x):
        arr = np.full(4, float(x) * self.scale)
        self.comm.allreduce(arr)
        return arr.tolist(), self.comm.rank, self.comm.world_size


@pytest.fixture
def cluster():
    if shoal.is_initialized():      # another package's tests left a cluster running
        shoal.shutdown()
    shoal.init(num_cpus=2)
    try:
        yield
    finally:
        shoal.shutdown()


def test_actor_group_runs_allreduce_across_actors(cluster):
    actors = collective.create_actor_group(Worker, 3, 2.0, name="actors-test", timeout=60)
    try:
        out = shoal.get([a.allreduce.remote(i) for i, a in enumerate(actors)], timeout=60)
        assert [o[1] for o in out] == [0, 1, 2]
        assert all(o[0] == [6.0] * 4 and o[2] == 3 for o in out)
    finally:
        collective.leave_actor_group(actors)
        for a in actors:
            shoal.kill(a)


def test_actor_group_rejects_bad_size(cluster):
    with pytest.raises(ValueError, match="positive"):
        collective.create_actor_group(Worker, 0)
