"""The torch backend (Gloo on CPU) presents the same API with the same results."""
import pytest

from _battery import allreduce_cases, ops_cases

OPS_CASES = ["allreduce_out_of_place", "allreduce_non_contiguous_numpy", "allreduce_non_contiguous_torch",
             "allreduce_scaled_float32", "allreduce_scaled_int32", "allreduce_scaled_float16",
             "allreduce_torch_avg", "reduce_to_root", "reduce_scatter_uneven_rows", "reduce_scatter_large",
             "allgather_equal", "allgather_variable_rows", "allgather_large_into_out", "allgather_scalars",
             "allgather_torch_bfloat16", "broadcast_large", "gather_to_root", "scatter_variable_parts",
             "alltoall_with_splits", "alltoall_even", "barrier", "grouped_broadcast", "send_recv_ring", "broadcast_object",
             "allgather_object", "grouped_allreduce_mixed_dtypes", "async_allreduce_results",
             "sync_after_async_ordered"]
DTYPES = ["int32", "int64", "float16", "float32", "float64"]
OPS = ["sum", "avg", "min", "max", "prod"]


def _battery(comm):
    out = allreduce_cases(comm, (0, 13, 3001), dtypes=DTYPES)
    out.update(ops_cases(comm))
    out["backend"] = None if comm.backend == "torch" else f"backend {comm.backend}"
    return out


@pytest.fixture(scope="module")
def results(rank_pool):
    return rank_pool.run(_battery, 2, backend="torch", wait=150)


@pytest.mark.parametrize("case", OPS_CASES + ["backend"] +
                         [f"{d}-{o}-{n}" for d in DTYPES + ["bfloat16"] for o in OPS for n in (0, 13, 3001)])
def test_torch_backend_matches_reference(results, case):
    for rank, res in enumerate(results):
        assert res[case] is None, f"rank {rank}: {res[case]}"
