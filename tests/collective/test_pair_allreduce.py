"""Two ranks on two hosts: small allreduces send the data behind the descriptor (one round trip).

The ranks run on this machine with a host identity each, so they talk TCP as
two hosts would; the mismatch battery checks that a descriptor travelling
with data still raises the same error on both ranks and leaves the group usable.
"""
import numpy as np

from _harness import run_ranks
from shoal.collective import NativeConfig
from test_failures import _mismatches

TWO_HOSTS = {"SHOAL_COLLECTIVE_HOST_ID": "pair-test-host-{rank}"}


def _sums(comm):
    r = comm.rank
    out = {"hosts": [list(h) for h in comm.topology.hosts], "shm": comm.shm is not None}
    for dtype in ("float32", "float64", "int64", "uint8"):
        x = (np.arange(13) % 7 + r + 1).astype(dtype)
        comm.allreduce(x)
        out[dtype] = x.tolist()
    y = np.linspace(0, 1, 100) * (r + 1)
    comm.allreduce(y, op="avg")
    out["avg"] = y.tobytes().hex()
    z = np.array([r, 5 - r], np.int32)
    comm.allreduce(z, op="max")
    out["max"] = z.tolist()
    big = np.ones(50_000, np.float32) * (r + 1)     # past tcp_small_bytes: the ring
    comm.allreduce(big)
    out["big"] = float(big.sum())
    return out


def test_small_allreduces_between_two_hosts_are_exact_and_identical():
    res = run_ranks(_sums, 2, env=TWO_HOSTS)
    for r in range(2):
        assert res[r]["hosts"] == [[0], [1]] and not res[r]["shm"]
        for dtype in ("float32", "float64", "int64", "uint8"):
            want = [(2 * (i % 7) + 3) for i in range(13)]
            assert res[r][dtype] == want, dtype
        assert res[r]["max"] == [1, 5]
        assert res[r]["big"] == 150_000.0
    assert res[0]["avg"] == res[1]["avg"]
    assert np.allclose(np.frombuffer(bytes.fromhex(res[0]["avg"])), np.linspace(0, 1, 100) * 1.5)


def test_mismatches_between_two_hosts_raise_on_both_and_leave_the_group_usable():
    res = run_ranks(_mismatches, 2, env=TWO_HOSTS)
    for case, word in [("shape", "shape"), ("dtype", "dtype"), ("op", "op"),
                       ("collective", "different collectives"), ("root", "root"),
                       ("rejected", "rejected")]:
        for r in range(2):
            got = res[r][case]
            assert got[0] in ("CollectiveError", "TypeError") and got != "no error", (case, r, got)
            if got[0] == "CollectiveError":
                assert word in got[1], (case, r, got)
    assert res[0]["after"] == res[1]["after"] == [2.0] * 8


def _prescaled_on_one_rank(comm):
    x = np.ones(4)
    try:
        comm.allreduce(x, prescale=2.0 if comm.rank == 0 else 1.0)
        first = "no error"
    except Exception as e:  # noqa: BLE001 - reported to the test
        first = str(e)
    y = np.ones(4)
    comm.allreduce(y)
    return first, y.tolist()


def test_ranks_that_disagree_on_sending_data_with_the_descriptor_both_raise():
    cfg = NativeConfig(tcp_small_bytes=1 << 16)
    res = run_ranks(_prescaled_on_one_rank, 2, env=TWO_HOSTS, config=cfg)
    for first, after in res:
        assert "tcp_small_bytes or prescale/postscale differ" in first
        assert after == [2.0] * 4
