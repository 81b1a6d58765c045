"""send/recv between ranks of one host: the shared-memory rings, their waits and failures, and TCP."""
import os
import time

import numpy as np
import pytest

from _harness import run_ranks
from shoal.collective import NativeConfig
from shoal.exceptions import CollectiveError

RING = NativeConfig(p2p_ring_bytes=4096)


def _crossing(comm, n):
    # both ranks send the other more than its ring holds, asynchronously, before receiving
    r, q = comm.rank, 1 - comm.rank
    works = [comm.send(np.arange(n, dtype=np.float64) * (r + 1) + k, dst=q, tag=k, async_op=True)
             for k in range(3)]
    got = [comm.recv(np.empty(n, np.float64), src=q, tag=k) for k in range(3)]
    for w in works:
        w.wait(30)
    want = [np.arange(n, dtype=np.float64) * (q + 1) + k for k in range(3)]
    ring = comm._p2p_path(q) is not comm.mesh
    return ring, all(np.array_equal(g, w) for g, w in zip(got, want))


@pytest.mark.parametrize("config,through_ring", [(RING, True), (NativeConfig(p2p_ring_bytes=0), False)],
                         ids=["ring", "tcp"])
def test_sends_larger_than_the_ring_cross_in_both_directions(config, through_ring):
    for ring, ok in run_ranks(_crossing, 2, 100_003, config=config):
        assert ring is through_ring
        assert ok


def _torch_tensors(comm):
    import torch
    r, q = comm.rank, 1 - comm.rank
    out = {}
    for dtype in (torch.float32, torch.bfloat16, torch.int64):
        t = (torch.arange(5000) * (r + 1)).to(dtype)
        w = comm.send(t, dst=q, async_op=True)
        got = comm.recv(torch.empty(5000, dtype=dtype), src=q)
        w.wait(30)
        out[str(dtype)] = bool(torch.equal(got, (torch.arange(5000) * (q + 1)).to(dtype)))
    # a non-contiguous tensor is received into in place
    dst = torch.zeros(100, 2)
    w = comm.send(torch.full((100,), float(r)), dst=q, async_op=True)
    comm.recv(dst[:, 1], src=q)
    w.wait(30)
    out["strided"] = bool((dst[:, 1] == q).all() and (dst[:, 0] == 0).all())
    return out


def test_torch_tensors_of_each_dtype_arrive_unchanged():
    for res in run_ranks(_torch_tensors, 2, config=RING):
        assert all(res.values()), res


def _mismatched_tag(comm):
    r = comm.rank
    if r == 0:
        comm.send(np.ones(10, np.float32), dst=1, tag=3)
        comm.send(np.full(4, 7.0, np.float32), dst=1, tag=4)
        return None
    try:
        comm.recv(np.empty(10, np.float32), src=0, tag=99)
        return "no error"
    except CollectiveError as e:
        msg = str(e)
    after = comm.recv(np.empty(4, np.float32), src=0, tag=4)   # the stream is still in step
    return msg, after.tolist()


def test_a_mismatched_recv_names_both_tags_and_keeps_the_stream_in_step():
    _, (msg, after) = run_ranks(_mismatched_tag, 2, config=RING)
    assert "expected tag 99" in msg and "had tag 3" in msg
    assert after == [7.0] * 4


def _timed_error(op):
    """(the CollectiveError's message, seconds until it came) of ``op()``."""
    t0 = time.monotonic()
    try:
        op()
        return "no error", 0.0
    except CollectiveError as e:
        return str(e), time.monotonic() - t0


def _recv_from_rank_0(comm):
    return _timed_error(lambda: comm.recv(np.empty(10, np.float32), src=0))


def _dies_before_sending(comm):
    if comm.rank == 0:
        time.sleep(0.3)
        os._exit(3)
    return _recv_from_rank_0(comm)


def test_a_receiver_learns_its_peer_died():
    res = run_ranks(_dies_before_sending, 2, config=RING, timeout=60, allow_errors=True)
    assert res[0] == ("died", 3)
    msg, waited = res[1]
    assert "rank 0 died" in msg, msg
    assert waited < 10        # not the group's 60 s timeout


def _reader_dies(comm):
    if comm.rank == 1:
        time.sleep(0.3)
        os._exit(4)
    # far more than the ring holds: the sender must wait for room that never comes
    return _timed_error(lambda: comm.send(np.ones(1 << 20, np.float32), dst=1))


def test_a_sender_learns_its_reader_died():
    res = run_ranks(_reader_dies, 2, config=RING, timeout=60, allow_errors=True)
    assert res[1] == ("died", 4)
    msg, waited = res[0]
    assert "rank 1 died" in msg, msg
    assert waited < 10


def _leaves_before_sending(comm):
    if comm.rank == 0:
        time.sleep(0.3)
        comm.destroy()      # e.g. after an error of its own; the process lives on
        time.sleep(3)
        return None
    return _recv_from_rank_0(comm)


def test_a_receiver_learns_its_peer_destroyed_the_group():
    _, (msg, waited) = run_ranks(_leaves_before_sending, 2, config=RING, timeout=60)
    assert "rank 0 left (destroyed the group)" in msg, msg
    assert waited < 3         # not the group's 60 s timeout


def _never_sent(comm):
    if comm.rank == 0:
        time.sleep(2.5)      # alive, never sends
        return None
    return _recv_from_rank_0(comm)


def test_a_recv_nothing_is_sent_to_times_out_naming_the_peer():
    _, (msg, waited) = run_ranks(_never_sent, 2, config=RING, timeout=1.0)
    assert "rank 0 did not send within 1.0s" in msg, msg
    assert 1.0 <= waited < 2.0


def _destroy_with_a_send_stuck(comm):
    if comm.rank == 1:
        time.sleep(1.5)   # never receives; outlives rank 0's destroy
        return None
    w = comm.send(np.ones(1 << 20, np.float32), dst=1, async_op=True)
    t0 = time.monotonic()
    comm.destroy()          # the harness destroys again: a no-op
    took = time.monotonic() - t0
    try:
        w.wait(5)
        err = "no error"
    except CollectiveError as e:
        err = str(e)
    return took, err


def test_destroy_returns_while_an_async_send_waits_for_room():
    (took, err), _ = run_ranks(_destroy_with_a_send_stuck, 2, config=RING, timeout=60)
    assert took < 3, took
    assert "destroyed" in err, err


def _other_group(comm, cfg):
    from shoal import collective
    try:
        g = collective.init_group(comm.rank, comm.world_size, comm.store, name="other", timeout=3,
                                  config=cfg)
    except CollectiveError as e:
        return str(e)
    try:
        w = g.send(np.full(5000, comm.rank, np.float32), dst=1 - comm.rank, async_op=True)
        got = g.recv(np.empty(5000, np.float32), src=1 - comm.rank)
        w.wait(30)
        return g.shm.R, bool((got == 1 - comm.rank).all())
    finally:
        g.destroy()


def _ring_sizes_differ(comm):
    return _other_group(comm, NativeConfig(p2p_ring_bytes=4096 if comm.rank == 0 else 8192))


def test_the_lowest_rank_of_a_host_sets_its_ring_size():
    assert run_ranks(_ring_sizes_differ, 2, wait=60) == [(4096, True), (4096, True)]


def _segments_differ(comm):
    return _other_group(comm, NativeConfig(segment_bytes=4096 if comm.rank == 0 else 8192))


def test_ranks_with_different_segment_sizes_fail_to_form_naming_the_setting():
    msgs = run_ranks(_segments_differ, 2, wait=60)
    assert "segment_bytes=8192" in msgs[1] and "pass the same NativeConfig" in msgs[1], msgs[1]
    assert isinstance(msgs[0], str), msgs[0]      # the leader gives up waiting for it


def test_rings_that_do_not_fit_in_dev_shm_fall_back_to_tcp(monkeypatch):
    from shoal.collective import _rendezvous as R
    free = [8 * (7 * ((1 << 20) + 128) + 2 * (2 << 20))]      # exactly what 8 ranks need
    monkeypatch.setattr(R.shutil, "disk_usage", lambda path: type("U", (), {"free": free[0]}))
    assert R._rings_that_fit(1 << 20, 8, 2 << 20) == 1 << 20
    free[0] -= 1
    assert R._rings_that_fit(1 << 20, 8, 2 << 20) == 0
    assert R._rings_that_fit(0, 8, 2 << 20) == 0


def test_a_ring_size_below_a_page_is_rejected():
    with pytest.raises(ValueError, match="p2p_ring_bytes"):
        NativeConfig(p2p_ring_bytes=100)
