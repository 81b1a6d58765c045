"""Mismatched calls raise on every rank; dead or missing ranks raise instead of hanging."""
import glob
import os
import time

import numpy as np
import pytest

from _harness import run_ranks
from shoal.exceptions import CollectiveError


def _mismatches(comm):
    r = comm.rank
    out = {}

    def attempt(name, fn):
        try:
            fn()
            out[name] = "no error"
        except CollectiveError as e:
            out[name] = ("CollectiveError", str(e))
        except (TypeError, ValueError) as e:
            out[name] = (type(e).__name__, str(e))

    attempt("shape", lambda: comm.allreduce(np.ones(10 + r, np.float32)))
    attempt("dtype", lambda: comm.allreduce(np.ones(10, np.float32 if r == 0 else np.float64)))
    attempt("op", lambda: comm.allreduce(np.ones(10), op="sum" if r == 0 else "max"))
    attempt("collective", lambda: comm.allreduce(np.ones(4)) if r == 0 else comm.broadcast(np.ones(4)))
    attempt("root", lambda: comm.broadcast(np.ones(4), src=r))
    attempt("rejected", lambda: comm.allreduce(np.ones(4) if r == 0 else np.array(["a", "b"])))
    # two-phase allreduces of 2 segments on rank 0 and 1 on rank 1 (2 MB segments)
    attempt("segments", lambda: comm.allreduce(np.ones((3 << 20) // 4 if r == 0 else (1 << 20) // 4,
                                                       np.float32)))
    y = np.full(4, r + 1.0)
    big = np.full(1 << 18, r + 1.0)   # 2 MB: the two-phase path

    def tagged(tag, t, grouped=False):
        def call():
            with comm.tagged(tag):
                comm.grouped_allreduce([t, t[:1].copy()]) if grouped else comm.allreduce(t)
        return call

    attempt("tag", tagged(7 + r, y))
    attempt("tag_two_phase", tagged(7 + r, big))
    attempt("tag_grouped", tagged(7 + r, y, grouped=True))
    out["tag_untouched"] = [y.tolist(), float(big.min()), float(big.max())]
    attempt("tag_vs_none", tagged(5, y) if r == 0 else lambda: comm.allreduce(y))
    attempt("tag_same", tagged(9, y))
    out["tag_same_result"] = y.tolist()
    x = np.ones(8)
    comm.allreduce(x)  # the group still works after every mismatch
    out["after"] = x.tolist()
    return out


@pytest.fixture(scope="module")
def mismatch(rank_pool):
    return rank_pool.run(_mismatches, 2)


@pytest.mark.parametrize("case,word", [("shape", "shape"), ("dtype", "dtype"), ("op", "reduce op"),
                                       ("collective", "different collectives"), ("root", "root"),
                                       ("segments", "shape"), ("tag", "tag"), ("tag_two_phase", "tag"),
                                       ("tag_grouped", "tag"), ("tag_vs_none", "tag")])
def test_mismatch_raises_on_every_rank_naming_it(mismatch, case, word):
    for rank in (0, 1):
        kind, msg = mismatch[rank][case]
        assert kind == "CollectiveError" and word in msg, (rank, mismatch[rank][case])


def test_rank_rejecting_its_input_makes_the_others_raise(mismatch):
    assert mismatch[1]["rejected"][0] == "TypeError"
    kind, msg = mismatch[0]["rejected"]
    assert kind == "CollectiveError" and "rank 1 rejected" in msg


def test_ranks_under_different_tags_raise_before_any_data_moves(mismatch):
    for rank in (0, 1):
        assert _tag_mismatch(mismatch[rank]["tag"])
        assert mismatch[rank]["tag_untouched"] == [[rank + 1.0] * 4, rank + 1.0, rank + 1.0]
        assert mismatch[rank]["tag_same"] == "no error"
        assert mismatch[rank]["tag_same_result"] == [3.0] * 4


def _tag_mismatch(result) -> bool:
    return result[0] == "CollectiveError" and "Communicator.tagged tag" in result[1]


def test_tagged_refuses_a_zero_or_non_int_tag():
    from shoal.collective import Communicator
    for bad in (0, 1.5, True, "x"):
        with pytest.raises(ValueError, match="nonzero int"):
            Communicator.tagged(bad)


def test_group_usable_after_mismatches(mismatch):
    assert mismatch[0]["after"] == [2.0] * 8 and mismatch[1]["after"] == [2.0] * 8


def _die_in_allreduce(comm):
    x = np.ones(1000)
    comm.allreduce(x)
    if comm.rank == comm.world_size - 1:
        os._exit(3)
    try:
        comm.allreduce(x)
    except CollectiveError as e:
        try:
            comm.allreduce(x)
            after = "no error"
        except CollectiveError as e2:
            after = str(e2)
        return ("raised", str(e), after)
    return ("no error", "", "")


def _shm_files():
    return set(glob.glob("/dev/shm/shoal-coll-*"))


def test_dead_rank_makes_the_others_raise():
    results = run_ranks(_die_in_allreduce, 3, timeout=60, allow_errors=True, wait=60, name="die")
    for r in (0, 1):
        status, msg, _ = results[r]
        assert status == "raised" and "died" in msg, results[r]


def test_group_with_a_dead_rank_refuses_further_ops():
    results = run_ranks(_die_in_allreduce, 2, timeout=60, allow_errors=True, wait=60, name="die3")
    assert "broken group" in results[0][2], results[0]


def test_shared_memory_released_after_a_rank_dies():
    before = _shm_files()
    run_ranks(_die_in_allreduce, 3, timeout=60, allow_errors=True, wait=60, name="die2")
    assert _shm_files() - before == set()


def _hold_segment(comm):
    return sorted(_shm_files())  # while the group lives


def test_shared_memory_unlinked_once_mapped(rank_pool):
    before = _shm_files()
    during = rank_pool.run(_hold_segment, 3)
    assert set(during[0]) - before == set()


def _late_rank(comm):
    if comm.rank == 1:
        time.sleep(6)
    try:
        comm.allreduce(np.ones(4))
        return "ok"
    except CollectiveError as e:
        return str(e)


def test_missing_rank_times_out_with_collective_error():
    results = run_ranks(_late_rank, 2, timeout=2, allow_errors=True, wait=60, name="late")
    assert "did not reach" in results[0] and "2" in results[0], results


def test_destroyed_communicator_refuses_ops():
    from shoal import collective
    from shoal.core.kv import TCPStore
    store = TCPStore(is_server=True, secret=b"s")
    try:
        comm = collective.init_group(0, 1, store, name="destroyed")
        comm.destroy()
        with pytest.raises(CollectiveError, match="destroy"):
            comm.allreduce(np.ones(3))
    finally:
        store.close()
