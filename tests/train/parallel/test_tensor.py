"""Tensor parallelism: split layers, vocabulary-parallel loss, plans; tp2 (and tp2 x pp2) equal one process."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import shoal.train as st
from shoal.collective import Mesh
from shoal.exceptions import InvalidInputError
from shoal.train.parallel.pipeline import PipelineSchedule, split_model
from shoal.train.parallel.tensor import (ColumnParallelLinear, RowParallelLinear,
                                         apply_tensor_parallel, vocab_parallel_cross_entropy)

from _models import TP_PLAN, batches, lm_loss, make_gpt, reference_losses

LOSS_ATOL = 2e-4   # fp32, Adam, 20 steps: split matmuls only reorder sums
STEPS = 20


class _FakeGroup:
    """Enough of a communicator to build layers (building moves no data)."""

    def __init__(self, rank, world_size):
        self.rank, self.world_size = rank, world_size


# ------------------------------------------------------------------ plans
def test_a_plan_naming_missing_modules_is_rejected_naming_them():
    plan = dict(TP_PLAN, **{"blocks.*.attn.q_proj": "colwise", "lm_head": "colwise"})
    with pytest.raises(InvalidInputError, match=r"\['blocks.\*.attn.q_proj', 'lm_head'\]"):
        apply_tensor_parallel(make_gpt(), _FakeGroup(0, 2), plan)


def test_unknown_style_wrong_module_type_and_sizes_not_dividing_are_rejected():
    with pytest.raises(InvalidInputError, match=r"'head': unknown style 'diagonal'"):
        apply_tensor_parallel(make_gpt(), _FakeGroup(0, 2), {"head": "diagonal"})
    with pytest.raises(InvalidInputError, match=r"'blocks.0.ln1' is a LayerNorm"):
        apply_tensor_parallel(make_gpt(), _FakeGroup(0, 2), {"blocks.0.ln1": "colwise"})
    with pytest.raises(InvalidInputError, match=r"n_head \(attention heads\) = 4 does not divide "
                                                r"over the tp group of 3"):
        apply_tensor_parallel(make_gpt(), _FakeGroup(0, 3), {"blocks.*.attn": "heads"})
    with pytest.raises(InvalidInputError, match=r"matches two plan entries"):
        apply_tensor_parallel(make_gpt(), _FakeGroup(0, 2), {"head": "colwise", "he*": "rowwise"})


def test_shards_are_slices_of_the_full_weights():
    full = nn.Linear(8, 12)
    col = [ColumnParallelLinear.from_linear(full, _FakeGroup(r, 2), chunks=3) for r in range(2)]
    # fused qkv: rank r holds rows r of each of the three parts
    assert torch.equal(col[1].weight, torch.cat([full.weight[2:4], full.weight[6:8], full.weight[10:12]]))
    row = [RowParallelLinear.from_linear(full, _FakeGroup(r, 2)) for r in range(2)]
    assert torch.equal(torch.cat([row[0].weight, row[1].weight], dim=1), full.weight)


def test_plan_replaces_the_named_modules():
    model = apply_tensor_parallel(make_gpt(), _FakeGroup(1, 2), TP_PLAN)
    assert isinstance(model.blocks[3].attn.qkv, ColumnParallelLinear)
    assert isinstance(model.blocks[3].mlp.fc2, RowParallelLinear)
    assert model.blocks[0].attn.n_head == 2
    assert model.embed.tok.weight.shape == (32, 32) and model.head.weight.shape == (32, 32)


# ------------------------------------------------------------------ on 2 ranks
class _Counting:
    """A tp group that counts the allreduces and allgathers passing through it."""

    def __init__(self, comm):
        self.comm, self.rank, self.world_size = comm, comm.rank, comm.world_size
        self.calls = []

    def allreduce(self, t, *args, **kw):
        self.calls.append(("allreduce", t.numel()))
        return self.comm.allreduce(t, *args, **kw)

    def allgather(self, t, *args, **kw):
        self.calls.append(("allgather", t.numel()))
        return self.comm.allgather(t, *args, **kw)


def _tp_train(config):
    comm = _Counting(st.get_communicator())
    plan = dict(TP_PLAN)
    if config["gather_logits"]:
        plan["head"] = "colwise_gather"
    model = apply_tensor_parallel(make_gpt(), comm, plan)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    losses, counts = [], []
    for ids, tg in batches(STEPS):
        opt.zero_grad()
        comm.calls.clear()
        logits = model(ids)
        if config["gather_logits"]:
            loss = lm_loss(logits, tg)
        else:
            loss = vocab_parallel_cross_entropy(logits, tg, comm)
        forward = len(comm.calls)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        counts.append((forward, len(comm.calls) - forward))
    return {"losses": losses, "counts": counts}


@pytest.mark.parametrize("gather_logits", [False, True], ids=["vocab_parallel_loss", "gathered_logits"])
def test_two_way_tensor_parallel_trains_to_the_one_process_losses(gang, gather_logits):
    results = gang.run(_tp_train, {"gather_logits": gather_logits})
    ref = reference_losses(STEPS)
    for r in results:
        assert r["losses"] == pytest.approx(ref, abs=LOSS_ATOL)
    layers = 4
    # forward: the embedding, 2 per block, then the loss's 2 (or the logits' allgather)
    # backward: 2 per block, and the head's input
    expected = (1 + 2 * layers + (1 if gather_logits else 2), 2 * layers + 1)
    assert results[0]["counts"] == [expected] * STEPS


def _vocab_loss(config):
    comm = st.get_communicator()
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(6, 10, 16, generator=g)
    targets = torch.randint(0, 16, (6, 10), generator=g)
    targets[0, :3] = -100
    full = logits.clone().requires_grad_()
    ref = F.cross_entropy(full.reshape(-1, 16), targets.reshape(-1), ignore_index=-100)
    ref.backward()
    part = logits[..., comm.rank * 8:(comm.rank + 1) * 8].clone().requires_grad_()
    loss = vocab_parallel_cross_entropy(part, targets, comm)
    loss.backward()
    return (loss.item(), ref.item(),
            float((part.grad - full.grad[..., comm.rank * 8:(comm.rank + 1) * 8]).abs().max()))


def test_vocab_parallel_cross_entropy_equals_the_gathered_loss_and_gradient(gang):
    for loss, ref, grad_err in gang.run(_vocab_loss):
        assert loss == pytest.approx(ref, abs=1e-6)
        assert grad_err < 1e-6


# ------------------------------------------------------------------ tp2 x pp2
def _tp_pp_train(config):
    from shoal.train.parallel import deferred
    comm = st.get_communicator()
    mesh = Mesh((2, 2), ("pp", "tp"), comm)
    tp, pp = mesh.get_group("tp"), mesh.get_group("pp")
    computed = []       # the layers' weights whose gradients a zero-bubble W computed
    plain = deferred.weight_gradients

    def counted(entries):
        computed.extend(type(layer).__name__ for layer in _owners(stage, entries))
        plain(entries)
    deferred.weight_gradients = counted
    try:
        model = apply_tensor_parallel(make_gpt(), tp, TP_PLAN)
        stage = split_model(model, pp.world_size, split_points=[3])[pp.rank]
        opt = torch.optim.Adam(stage.parameters(), lr=0.05)
        losses = []
        with PipelineSchedule(stage, pp, schedule=config["schedule"], num_microbatches=4,
                              loss_fn=lambda out, t: vocab_parallel_cross_entropy(out, t, tp)) as s:
            for ids, tg in batches(STEPS):
                opt.zero_grad()
                loss = s.step(ids, tg)
                opt.step()
                losses.append(None if loss is None else loss.item())
        return {"coords": mesh.coords, "losses": losses, "deferred": sorted(set(computed))}
    finally:
        deferred.weight_gradients = plain
        mesh.destroy()


def _owners(stage, entries):
    by_weight = {id(m.weight): m for m in stage.modules() if isinstance(getattr(m, "weight", None),
                                                                         torch.Tensor)}
    return [by_weight[id(w)] for w, _, _, gy in entries if gy is not None]


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["1f1b", "zb"])
def test_tp2_x_pp2_on_four_ranks_trains_to_the_one_process_losses(gang4, schedule):
    results = gang4.run(_tp_pp_train, {"schedule": schedule}, timeout=180)
    ref = reference_losses(STEPS)
    last = [r["losses"] for r in results if r["coords"]["pp"] == 1]
    assert len(last) == 2
    for losses in last:
        assert losses == pytest.approx(ref, abs=LOSS_ATOL)
    # zero bubble: the tensor-parallel layers' weight gradients waited for W, on every rank
    want = ["ColumnParallelLinear", "RowParallelLinear"] if schedule == "zb" else []
    assert all(r["deferred"] == want for r in results), [r["deferred"] for r in results]
