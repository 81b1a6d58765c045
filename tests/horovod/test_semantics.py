"""Horovod's semantics on 2 and 3 ranks (one `shoal launch` per size, checked by many tests):
every mismatch raises the same error on every rank and the next op runs; join with each
collective; process sets of different sizes at once; grouped and sparse ops; SyncBatchNorm
against torch's BatchNorm on the whole batch; the timeline file."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
MISMATCHES = ["allreduce_shape", "allreduce_dtype", "allreduce_op", "allreduce_prescale",
              "grouped_allreduce_count", "allgather_trailing_shape", "allgather_dtype",
              "broadcast_root", "broadcast_shape", "reducescatter_shape", "alltoall_dtype",
              "op_kind", "names", "root_out_of_range_on_one_rank",
              "allgather_scalar_on_one_rank", "alltoall_splits_on_one_rank"]


@pytest.fixture(scope="module", params=[2, 3], ids=["2ranks", "3ranks"])
def run(request, tmp_path_factory):
    n = request.param
    timeline = tmp_path_factory.mktemp(f"hvd{n}") / "timeline.json"
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-m", "shoal.launch", "-np", str(n),
                        os.path.join(HERE, "scripts", "hvd_semantics.py"), str(timeline)],
                       capture_output=True, text=True, timeout=240, env=env, cwd=ROOT, check=False)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    out: dict = {q: {} for q in range(n)}
    for line in r.stdout.splitlines():
        m = re.match(r"\[(\d)\] CHECK (\S+) (.*)", line)
        if m:
            out[int(m.group(1))][m.group(2)] = json.loads(m.group(3))
    assert all(out[q].get("done") for q in range(n)), r.stdout[-4000:]
    return n, out


@pytest.mark.parametrize("what", MISMATCHES)
def test_mismatch_raises_the_same_error_on_every_rank_and_the_next_op_runs(run, what):
    n, out = run
    results = [out[q][f"mismatch_{what}"] for q in range(n)]
    raised, kind, message, is_runtime, next_ok = zip(*results)
    assert all(raised) and all(is_runtime) and all(next_ok), results
    assert set(kind) == {"CollectiveError"}
    assert len(set(message)) == 1, message      # word for word the same everywhere


def test_mismatch_messages_name_what_differs(run):
    _, out = run
    c = out[0]
    assert "shape" in c["mismatch_allreduce_shape"][2]
    assert "float32" in c["mismatch_allreduce_dtype"][2]
    assert "root rank" in c["mismatch_broadcast_root"][2]
    assert "trailing shape" in c["mismatch_allgather_trailing_shape"][2]
    assert "issued allgather" in c["mismatch_op_kind"][2]
    assert "tensor-of-rank-1" in c["mismatch_names"][2]
    assert "rank 0 rejected" in c["mismatch_root_out_of_range_on_one_rank"][2]


def test_duplicate_in_flight_name_raises_value_error_and_the_first_op_completes(run):
    n, out = run
    total = [float(n)] * 4
    assert out[0]["duplicate_name"][0][:2] == ["ValueError", total]
    assert out[n - 1]["duplicate_name"][0][-2:] == ["ValueError", total]
    for q in range(n):
        assert out[q]["duplicate_name"][1] is True
        assert [v for v in out[q]["duplicate_name"][0] if v != "ValueError"] == [total, total]


def test_integer_average_floors_as_horovod(run):
    n, out = run
    sums = [sum(v) for v in zip(*[[3 * q + 1, -(3 * q + 1), 7, -7] for q in range(n)])]
    want = [s // n for s in sums]
    for q in range(n):
        assert out[q]["int_average"] == want and out[q]["int64_average"] == want


def test_join_stands_in_for_every_joinable_collective(run):
    n, out = run
    working = range(1, n)
    for q in working:
        j = out[q]["join_ops"]
        s = float(sum(working))
        assert j["avg"] == [s / n] * 2             # Horovod divides by size(), joined or not
        assert j["sum"] == [s] * 2
        assert j["int_avg"] == [sum(p * 5 + 1 for p in working) // n, -(n - 1) // n]
        assert j["grouped"] == [[n - 1.0] * 2, [n - 1.0]]
        assert j["allgather"] == [[float(p)] * 2 for p in working]
        assert j["grouped_allgather"][0] == [float(p) for p in working for _ in range(p)]
        assert j["grouped_allgather"][1] == [[float(p)] * 2 for p in working]
        assert j["barrier"] is True


def test_join_refuses_broadcast_alltoall_reducescatter_on_every_working_rank(run):
    n, out = run
    for q in range(1, n):
        for what in ("broadcast", "alltoall", "reducescatter", "grouped_reducescatter"):
            assert out[q]["join_ops"][f"{what}_raised"] is True, what


def test_join_returns_the_last_rank_and_ops_continue(run):
    n, out = run
    assert out[n - 1]["alone_after_joins"] == [float(n - 1)] * 2
    assert {out[q]["join_last"] for q in range(n)} == {n - 1}
    assert all(out[q]["after_join_ok"] for q in range(n))


def test_process_sets_of_different_sizes_run_at_once(run):
    n, out = run
    for q in range(n):
        sums = out[q]["process_set_sums"]
        for ranks, got in sums.items():
            members = json.loads(ranks)
            assert q in members
            assert got == [float(sum(m + 1 for m in members))] * 2
        assert str(list(range(n))) in sums
    assert out[0]["process_set_info"][:2] == [[1, -1, False], [1, 0, True]]
    assert out[n - 1]["process_set_info"][0] == [1, 0, True]


def test_process_set_ops_optimizer_and_errors(run):
    n, out = run
    for q in (0, 1):
        assert out[q]["process_set_allgather"] == [0, 1]
        assert out[q]["process_set_broadcast"] == [1.0]
        assert out[q]["process_set_optimizer_bias_grad"] == [1.0]
    for q in range(n):
        assert out[q]["process_set_duplicate"] == "ValueError"
        assert out[q]["not_a_member"] == ("member" if q == n - 1 else "ValueError")
        assert out[q]["remove_process_set"] == [True, False]
        assert out[q]["after_sets_ok"] is True


def test_grouped_allgather_and_reducescatter(run):
    n, out = run
    for q in range(n):
        ga = out[q]["grouped_allgather"]
        assert ga[0] == [float(p) for p in range(n) for _ in range(p + 1)]
        assert ga[1] == [[float(p)] * 2 for p in range(n)]
        gr = out[q]["grouped_reducescatter"]
        total = sum(p + 1 for p in range(n))
        assert gr[0] == [float(total * i) for i in (2 * q, 2 * q + 1)]
        assert gr[1] == [[float(n)] * 2]


def test_sparse_allreduce_and_sparse_embedding_gradients(run):
    n, out = run
    want = [1.0 * (q + 1) for q in range(n)] + [float(n)]
    for q in range(n):
        assert out[q]["sparse_sum"] == want
        # [the gradient stayed sparse, the weights equal the dense math]
        assert out[q]["sparse_embedding_denseFalse"] == [True, True]
        assert out[q]["sparse_embedding_denseTrue"] == [False, True]


def test_sync_batch_norm_equals_batch_norm_on_the_whole_batch(run):
    n, out = run
    for q in range(n):
        assert out[q]["syncbn"] == {"out": True, "grad_input": True, "grad_weight": True,
                                    "running": True}


def test_timeline_has_negotiate_and_op_rows_per_tensor(run):
    _, out = run
    assert out[0]["timeline"] == [["gathered", "ALLGATHER"], ["gathered", "NEGOTIATE_ALLGATHER"],
                                  ["timed_tensor", "ALLREDUCE"],
                                  ["timed_tensor", "NEGOTIATE_ALLREDUCE"]]


def test_init_again_with_process_sets(run):
    n, out = run
    for q in range(n):
        assert out[q]["reinit_process_sets"] == [True, n, True, True]


def test_introspection_is_truthful_for_shoal(run):
    n, out = run
    for q in range(n):
        # no MPI, no Gloo (the native backend), no oneCCL/DDL; mpi_threads_supported raises
        assert out[q]["introspection"][:5] == [False, False, False, False, False]
        assert out[q]["introspection"][6] == "ValueError"


@pytest.mark.parametrize("ranks", [2, 3])
def test_horovod_style_torch_suite_passes_on_every_rank(ranks):
    """Checks in the manner of Horovod's test_torch.py (dtypes, dims, fusion, grads, join)."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-m", "shoal.launch", "-np", str(ranks),
                        os.path.join(HERE, "scripts", "hvd_torch_suite.py")],
                       capture_output=True, text=True, timeout=240, env=env, cwd=ROOT, check=False)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert all(f"[{q}] OK" in r.stdout + r.stderr for q in range(ranks)), r.stderr[-4000:]


def test_a_dead_rank_fails_the_pending_and_later_ops_with_a_clear_error():
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-m", "shoal.launch", "-np", "2",
                        os.path.join(HERE, "scripts", "hvd_dead_rank.py")],
                       capture_output=True, text=True, timeout=120, env=env, cwd=ROOT, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert re.search(r"\[0\] CHECK first CollectiveError: rank 1 .*died", r.stdout), r.stdout
    assert re.search(r"\[0\] CHECK second CollectiveError: the Horovod engine stopped.*"
                     r"hvd.shutdown\(\) and hvd.init\(\)", r.stdout), r.stdout
    assert float(re.search(r"CHECK seconds ([\d.]+)", r.stdout).group(1)) < 60


def test_an_op_some_ranks_never_issue_fails_after_the_stall_timeout():
    env = dict(os.environ, PYTHONPATH=ROOT, HOROVOD_STALL_SHUTDOWN_TIME_SECONDS="1")
    r = subprocess.run([sys.executable, "-m", "shoal.launch", "-np", "2",
                        os.path.join(HERE, "scripts", "hvd_stall.py")],
                       capture_output=True, text=True, timeout=120, env=env, cwd=ROOT, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert re.search(r"\[0\] CHECK lonely CollectiveError: tensor 'lonely' was submitted by "
                     r"ranks \[0\] but not by ranks \[1\]", r.stdout), r.stdout
    assert "[0] CHECK after [2.0]" in r.stdout and "[1] CHECK after [2.0]" in r.stdout
