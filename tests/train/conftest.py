"""Fixtures of shoal.train's tests: a local cluster and a reusable 2-rank gang.

``gang.run(fn, config)`` runs ``fn(config)`` on both ranks of two
long-lived worker actors, inside a training session with a fresh
communicator, and returns the per-rank results: DDP tests pay the actor
start-up once per module, not once per test.
"""
from __future__ import annotations

import itertools
import sys

import cloudpickle
import pytest

import shoal
from shoal.train.context import TrainContext
from shoal.train.ddp import DDP
from shoal.train.trainer import _TrainWorker

_groups = itertools.count()


@pytest.fixture(scope="session")
def cluster():
    if shoal.is_initialized():
        shoal.shutdown()
    shoal.init(num_cpus=4)
    yield
    shoal.shutdown()


class Gang:
    def __init__(self, n: int):
        cls = shoal.remote(_TrainWorker)
        self.n = n
        self.workers = [cls.options(num_cpus=0).remote() for _ in range(n)]

    def run(self, fn, config=None, strategy=None, run_dir=None, timeout=60):
        cloudpickle.register_pickle_by_value(sys.modules[fn.__module__])
        payload = cloudpickle.dumps((fn, config or {}))
        group = f"test-gang-{next(_groups)}"
        refs = []
        for r, w in enumerate(self.workers):
            setup = {"context": TrainContext(r, self.n, r, self.n, 0), "strategy": strategy or DDP(),
                     "group": group, "run_dir": run_dir, "report_prefix": None,
                     "checkpoint": None, "report_index": 0, "timeout": 30}
            refs.append(w.run.remote(payload, setup))
        return shoal.get(refs, timeout=timeout)

    def close(self):
        for w in self.workers:
            shoal.kill(w)


@pytest.fixture(scope="module")
def gang(cluster):
    g = Gang(2)
    yield g
    g.close()
