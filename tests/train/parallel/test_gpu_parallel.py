"""Model parallelism on CUDA tensors (skipped without a GPU).

Two ranks share the machine's GPU: collectives stage through host memory
(NCCL refuses two ranks on one device). Compared with one process on the CPU.
"""
from __future__ import annotations

import pytest
import torch

import shoal.train as st
from shoal.train.parallel import Mesh, PipelineSchedule, ZeRO, parallelize

from _models import batches, lm_loss, make_gpt, reference_losses

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device here (these run on a GPU machine)")
STEPS = 10
GPU_ATOL = 2e-3    # fp32 matmuls on the GPU (TF32 off) differ from the CPU's by rounding


def _on_gpu(config):
    torch.backends.cuda.matmul.allow_tf32 = False
    comm = st.get_communicator()
    model = make_gpt(seed=100).cuda()
    if config["kind"].startswith("pipeline"):
        mesh = Mesh(pp=2, comm=comm)
        stage = parallelize(model, mesh, pipeline={"split_points": [3]})
        schedule = "zb" if config["kind"] == "pipeline-zb" else "1f1b"
        sched = PipelineSchedule(stage, mesh.pp_group, schedule=schedule, num_microbatches=4,
                                 loss_fn=lm_loss, broadcast_loss=True)
        step = lambda ids, tg: sched.step(ids, tg)   # noqa: E731
    else:
        stage = ZeRO(stage=3).prepare(model, comm)
        step = lambda ids, tg: _backward(lm_loss(stage(ids[comm.rank::2]), tg[comm.rank::2]), comm)  # noqa: E731
    opt = torch.optim.Adam(stage.parameters(), lr=0.05)
    losses = []
    for ids, tg in batches(STEPS):
        opt.zero_grad()
        loss = step(ids.cuda(), tg.cuda())
        opt.step()
        losses.append(float(loss))
    return losses


def _backward(loss, comm):
    loss.backward()
    t = loss.detach().reshape(1).cpu()
    comm.allreduce(t, op="avg")
    return t


@needs_cuda
@pytest.mark.parametrize("kind", ["pipeline", "pipeline-zb", "zero3"])
def test_two_ranks_on_cuda_train_to_the_cpu_losses(gang, kind):
    ref = reference_losses(STEPS, seed=100)
    for losses in gang.run(_on_gpu, {"kind": kind}, timeout=300):
        assert losses == pytest.approx(ref, abs=GPU_ATOL)
