"""Every op of the native backend equals a single-process reference, for world sizes 1-4."""
import pytest

from _battery import NUMPY_DTYPES, OPS, allreduce_cases, ops_cases, subgroup_cases
from shoal.collective import NativeConfig

WORLDS = (1, 2, 3, 4)
# Tiny segments, one-shot threshold and send/recv rings so a few thousand elements cross every
# code path (one-shot, two-phase, many segments, chunks not divisible by the world size, a
# message wrapping around its ring and waiting for room).
SMALL = NativeConfig(segment_bytes=4096, small_bytes=256, p2p_ring_bytes=4096)
SIZES = (0, 1, 13, 3001)


def _battery(comm):
    out = allreduce_cases(comm, SIZES)
    out.update(ops_cases(comm))
    out.update(subgroup_cases(comm))
    return out


@pytest.fixture(scope="module")
def results(rank_pool):
    return {w: rank_pool.run(_battery, w, config=SMALL, wait=150) for w in WORLDS}


def _check(results, world, case):
    for rank, res in enumerate(results[world]):
        if case not in res:
            continue
        assert res[case] is None, f"world {world} rank {rank}: {res[case]}"
    assert any(case in res for res in results[world]), f"case {case} did not run"


ALLREDUCE_CASES = [f"{d}-{o}-{n}" for d in NUMPY_DTYPES + ["bfloat16"] for o in OPS for n in SIZES
                   if not (d.startswith("complex") and o in ("min", "max"))]


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("case", ALLREDUCE_CASES)
def test_allreduce_matches_reference(results, world, case):
    _check(results, world, case)


OP_CASES = ["allreduce_out_of_place", "allreduce_non_contiguous_numpy", "allreduce_non_contiguous_torch",
            "allreduce_scaled_float32", "allreduce_scaled_int32", "allreduce_scaled_float16",
            "allreduce_torch_avg", "reduce_to_root", "reduce_scatter_uneven_rows", "reduce_scatter_large",
            "allgather_equal", "allgather_variable_rows", "allgather_large_into_out", "allgather_scalars",
            "allgather_torch_bfloat16", "broadcast_large", "gather_to_root", "scatter_variable_parts",
            "alltoall_with_splits", "alltoall_even", "barrier", "grouped_broadcast", "broadcast_object", "allgather_object",
            "grouped_allreduce_mixed_dtypes", "async_allreduce_results", "async_handles_completed",
            "sync_after_async_ordered", "new_group_allreduce", "split_rank_order_by_key", "split_allreduce"]


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("case", OP_CASES)
def test_op_matches_reference(results, world, case):
    _check(results, world, case)


@pytest.mark.parametrize("world", (2, 3, 4))
def test_send_recv_ring(results, world):
    _check(results, world, "send_recv_ring")


@pytest.mark.parametrize("world", (2, 3, 4))
def test_async_sends_arrive_in_order(results, world):
    _check(results, world, "send_async_in_order")


def test_mesh_2x2_groups(results):
    _check(results, 4, "mesh_2x2_groups")


def _tens_of_mb(comm):
    import numpy as np
    n = 6_000_000  # 24 MB of float32: several default-sized segments
    x = np.arange(n, dtype=np.float32) * (comm.rank + 1)
    comm.allreduce(x)
    want = np.arange(n, dtype=np.float32) * sum(range(1, comm.world_size + 1))
    b = np.full(n, comm.rank, np.float64)
    comm.broadcast(b, src=1)
    return bool(np.array_equal(x, want)) and bool((b == 1).all())


@pytest.mark.slow
def test_allreduce_tens_of_megabytes(rank_pool):
    assert rank_pool.run(_tens_of_mb, 3, wait=120) == [True, True, True]
