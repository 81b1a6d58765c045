"""shoal.horovod: Horovod's PyTorch API, run by `shoal launch` on 2 ranks."""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys

import pytest
import torch

import shoal.horovod as hvd

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def _launch(script, *args, timeout=150, **extra_env):
    env = dict(os.environ, PYTHONPATH=ROOT, **extra_env)
    return subprocess.run([sys.executable, "-m", "shoal.launch", "-n", "2",
                           os.path.join(HERE, "scripts", script), *args],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT,
                          check=False)


def _run_checks(**env) -> dict:
    r = _launch("hvd_api.py", **env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out: dict = {0: {}, 1: {}}
    for line in r.stdout.splitlines():
        m = re.match(r"\[(\d)\] CHECK (\S+) (.*)", line)
        if m:
            out[int(m.group(1))][m.group(2)] = m.group(3)
    out["devices"] = re.findall(r"\[\d\] DEVICE (\S+)", r.stdout)
    return out


@pytest.fixture(scope="module")
def checks():
    return _run_checks()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here (runs on a GPU machine)")
def test_the_same_script_on_cuda_tensors_gives_the_same_results(checks):
    on_gpu = _run_checks(HVD_TEST_DEVICE="cuda")
    assert on_gpu.pop("devices") == ["cuda", "cuda"]
    assert checks["devices"] == ["cpu", "cpu"]
    assert on_gpu == {r: checks[r] for r in (0, 1)}


def _both(checks, name):
    return [checks[r][name] for r in (0, 1)]


def _lit(v):
    return ast.literal_eval(v.replace("'|'", "None"))


def test_rank_size_local_and_cross(checks):
    assert _both(checks, "rank_size") == ["0/2/0/2/1", "1/2/1/2/1"]


def test_allreduce_averages_by_default_and_leaves_input(checks):
    assert [_lit(v) for v in _both(checks, "allreduce_avg")] == [[1.5] * 4] * 2
    assert [_lit(v) for v in _both(checks, "allreduce_unchanged_input")] == [[1.0] * 4, [2.0] * 4]


def test_allreduce_ops_inplace_async_and_compression(checks):
    for r in (0, 1):
        c = checks[r]
        assert _lit(c["allreduce_sum"]) == [3.0] * 4
        assert _lit(c["allreduce_max"]) == [2.0] * 4
        assert _lit(c["allreduce_inplace"]) == [3.0] * 4
        assert _lit(c["async_sum"]) == [3.0] * 4
        assert c["allreduce_fp16"] == "torch.float32"     # decompressed to the input dtype


def test_grouped_allreduce(checks):
    assert [_lit(v) for v in _both(checks, "grouped")] == [[3.0, 3.0, 5.0, 5.0, 5.0]] * 2


def test_allgather_concatenates_uneven_first_dims(checks):
    assert _lit(checks[0]["allgather"]) == [[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]


def test_broadcast_from_root(checks):
    assert [_lit(v) for v in _both(checks, "broadcast")] == [[1.0], [1.0]]
    assert [_lit(v) for v in _both(checks, "broadcast_object")] == [{"from": 0}] * 2


def test_alltoall_with_splits_returns_received_splits(checks):
    assert _lit(checks[0]["alltoall"]) == [0, 10, None, 1, 1]
    assert _lit(checks[1]["alltoall"]) == [1, 2, 3, 11, 12, 13, None, 3, 3]


def test_reducescatter_gives_each_rank_its_part(checks):
    assert _lit(checks[0]["reducescatter"]) == [0.0, 3.0]
    assert _lit(checks[1]["reducescatter"]) == [6.0, 9.0]


def test_object_collectives_and_join(checks):
    assert _lit(checks[1]["allgather_object"]) == [0, 10]
    assert _both(checks, "join") == ["True", "True"]


def test_allreduce_is_differentiable(checks):
    assert _lit(checks[0]["allreduce_grad"]) == [2.0, 2.0]
    assert _lit(checks[1]["allreduce_grad"]) == [4.0, 4.0]


def test_distributed_optimizer_averages_gradients_and_keeps_ranks_equal(checks):
    assert _both(checks, "optimizer_params_equal") == ["True", "True"]
    assert [_lit(v) for v in _both(checks, "optimizer_grad_avg")] == [[2.0], [2.0]]
    assert [_lit(v) for v in _both(checks, "backward_passes_grad")] == [[2.0], [2.0]]


def test_horovod_errors_are_raised_as_horovod_raises_them(checks):
    for r in (0, 1):
        assert checks[r]["dup_names_error"] == "True"
        assert checks[r]["zero_grad_race_error"] == "True"
        assert checks[r]["not_initialized_error"] == "True"


@pytest.mark.slow
def test_pytorch_mnist_example_trains_on_two_ranks():
    r = _launch("pytorch_mnist.py", "--lr", "0.05", "--fp16-allreduce")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    finals = re.findall(r"\[(\d)\] FINAL accuracy=([\d.]+) params_equal=(\w+)", r.stdout)
    assert sorted(f[0] for f in finals) == ["0", "1"]
    assert all(f[2] == "True" for f in finals)
    assert float(finals[0][1]) > 0.6       # chance: 0.1
    assert "[0] Train Epoch: 3" in r.stdout and "[1] Train Epoch: 3" in r.stdout


# ------------------------------------------------------------------ one process
@pytest.fixture
def solo():
    hvd.init()
    yield
    hvd.shutdown()


def test_single_process_is_a_world_of_one(solo):
    assert (hvd.rank(), hvd.size(), hvd.local_rank(), hvd.local_size()) == (0, 1, 0, 1)
    x = torch.arange(3.0)
    out = hvd.allreduce(x, op=hvd.Sum)
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()


def test_uninitialized_calls_raise_like_horovod():
    hvd.shutdown()
    with pytest.raises(ValueError, match=r"use hvd.init\(\)"):
        hvd.size()


def test_average_and_op_together_are_rejected(solo):
    with pytest.raises(ValueError, match="supersedes average"):
        hvd.allreduce(torch.ones(2), average=True, op=hvd.Sum)


def test_adasum_is_refused_clearly(solo):
    with pytest.raises(NotImplementedError, match="Adasum"):
        hvd.allreduce(torch.ones(2), op=hvd.Adasum)


def test_fp16_compression_round_trips_dtype():
    c, ctx = hvd.Compression.fp16.compress(torch.ones(2, dtype=torch.float64))
    assert c.dtype == torch.float16
    assert hvd.Compression.fp16.decompress(c, ctx).dtype == torch.float64
