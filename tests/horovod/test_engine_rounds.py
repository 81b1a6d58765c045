"""The Horovod engine's rounds on real rank processes: a round whose list every rank
announces runs as the data collective alone (one meeting of the ranks), and ranks whose
lists differ fall back to agreeing first and still get every op's right result."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "collective"))

from _harness import run_ranks  # noqa: E402


def _counting(comm) -> dict:
    """Count the collectives the engine issues on ``comm`` (wrapping its methods)."""
    calls = {"allreduce": 0, "grouped_allreduce": 0, "allgather_object": 0}
    for name in calls:
        fn = getattr(comm, name)

        def wrapped(*a, _fn=fn, _name=name, **k):
            calls[_name] += 1
            return _fn(*a, **k)
        setattr(comm, name, wrapped)
    return calls


def _request(name, tensors):
    from shoal.horovod._engine import ALLREDUCE, Request
    return Request(name, ALLREDUCE, tensors, op="sum")


def _steady(comm):
    from shoal.horovod._engine import Engine
    eng = Engine(comm, list(range(comm.world_size)))
    calls = _counting(comm)
    r, out = comm.rank, []
    try:
        for step in range(10):
            t = np.full(5, float(r + step), np.float32)
            out.append(eng.submit(_request("grad", [t]), wake=False).wait(eng, 20)[0].tolist())
        # a fused pair, the way DistributedOptimizer hands over a bucket
        pair = [np.full(3, r + 1.0), np.full(2, 10.0 * (r + 1))]
        got = eng.submit(_request("bucket", pair), wake=False).wait(eng, 20)
        out.append([g.tolist() for g in got])
    finally:
        eng.close()
    return out, calls


def _diverging(comm):
    """Rank 0 issues a then b; the others issue b before a: the first round's lists differ."""
    from shoal.horovod._engine import Engine
    eng = Engine(comm, list(range(comm.world_size)))
    calls = _counting(comm)
    r = comm.rank
    a, b = np.full(4, r + 1.0), np.full(6, 2.0 * (r + 1))
    try:
        if r == 0:
            ha = eng.submit(_request("a", [a]), wake=False)
            ha.wait(eng, 20)
            hb = eng.submit(_request("b", [b]), wake=False)
            hb.wait(eng, 20)
        else:
            hb = eng.submit(_request("b", [b]), wake=False)
            ha = eng.submit(_request("a", [a]), wake=False)
            ha.wait(eng, 20)
            hb.wait(eng, 20)
    finally:
        eng.close()
    return a.tolist(), b.tolist(), calls


@pytest.mark.parametrize("world", [2, 3])
def test_a_common_round_meets_once(world):
    results = run_ranks(_steady, world)
    total = world * (world - 1) / 2
    for out, calls in results:
        assert out[:10] == [[total + world * step] * 5 for step in range(10)]
        assert out[10] == [[total + world] * 3, [10.0 * (total + world)] * 2]
        # one data collective per round: no digest allreduce, no allgather
        assert calls == {"allreduce": 10, "grouped_allreduce": 1, "allgather_object": 0}, calls


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_announcing_different_lists_fall_back_and_agree(world):
    results = run_ranks(_diverging, world)
    total = world * (world + 1) / 2
    for a, b, calls in results:
        assert a == [total] * 4 and b == [2.0 * total] * 6
        assert calls["allgather_object"] >= 1, calls   # the lists were agreed by allgather
