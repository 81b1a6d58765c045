"""hvd.join(): ranks with uneven work, Horovod's semantics (run by `shoal launch` on 2 ranks)."""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def _run_checks(**extra_env) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT, **extra_env)
    r = subprocess.run([sys.executable, "-m", "shoal.launch", "-n", "2",
                        os.path.join(HERE, "scripts", "hvd_join.py")],
                       capture_output=True, text=True, timeout=110, env=env, cwd=ROOT, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out: dict = {0: {}, 1: {}}
    for line in r.stdout.splitlines():
        m = re.match(r"\[(\d)\] CHECK (\S+) (.*)", line)
        if m:
            out[int(m.group(1))][m.group(2)] = ast.literal_eval(m.group(3))
    return out


@pytest.fixture(scope="module")
def checks():
    return _run_checks()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here (runs on a GPU machine)")
def test_join_on_cuda_tensors_gives_the_same_results(checks):
    # the joined rank's stand-ins are made on the GPU too, so they take the GPU ops' path
    assert _run_checks(HVD_TEST_DEVICE="cuda") == checks


def test_joined_rank_contributes_zeros_and_average_divides_by_size(checks):
    assert checks[1]["avg_with_joined"] == [1.0, 2.0, 3.0, 4.0]      # (0 + 2x) / 2
    assert checks[1]["sum_with_joined"] == [2.0, 4.0, 6.0, 8.0]
    assert checks[1]["max_with_joined"] == [0.0] * 4
    assert checks[1]["async_with_joined"] == [[2.0, 2.0], [2.0, 2.0]]


def test_grouped_allreduce_with_a_joined_rank(checks):
    assert checks[1]["grouped_with_joined"] == [1.0] * 5


def test_allgather_with_a_joined_rank_has_only_the_working_ranks_rows(checks):
    assert checks[1]["allgather_with_joined"] == [[7.0] * 3] * 2
    # as Horovod (an allgather of pickles): the joined rank contributes no object
    assert checks[1]["allgather_object_with_joined"] == ["mine"]


def test_broadcast_alltoall_reducescatter_raise_while_a_rank_has_joined(checks):
    for what in ("broadcast", "broadcast_object", "reducescatter", "alltoall"):
        assert checks[1][f"{what}_with_joined_error"] is True, what


def test_join_returns_the_last_rank_to_join_on_every_rank(checks):
    assert [checks[q]["last_joined"] for q in (0, 1)] == [1, 1]
    assert [checks[q]["last_joined_2"] for q in (0, 1)] == [0, 0]


def test_collectives_are_normal_after_everyone_joined(checks):
    assert [checks[q]["avg_after_join"] for q in (0, 1)] == [[1.5, 1.5]] * 2


def test_distributed_optimizer_with_uneven_batches_equals_the_math(checks):
    for q in (0, 1):
        assert checks[q]["optimizer_last_joined"] == 1
        assert checks[q]["optimizer_matches_math"] is True
        assert checks[q]["optimizer_moved"] is True
