"""Sequence parallelism: collectives along the sequence, and a tp2 + sp GPT equal to one process."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import shoal.train as st
from shoal.exceptions import InvalidInputError
from shoal.train.parallel import (apply_tensor_parallel, gather_sequence, reduce_scatter_sequence,
                                  replicated_param, scatter_sequence, vocab_parallel_cross_entropy)

from _models import TP_SP_PLAN, lm_loss, batches, make_gpt, reference_losses

LOSS_ATOL = 2e-4
STEPS = 20


class _Counting:
    """A tp group that counts what each kind of collective carries."""

    def __init__(self, comm):
        self.comm, self.rank, self.world_size = comm, comm.rank, comm.world_size
        self.calls = []

    def __getattr__(self, op):
        fn = getattr(self.comm, op)

        def call(t, *args, **kw):
            self.calls.append((op, t.numel()))
            return fn(t, *args, **kw)
        return call


def _sequence_ops(config):
    comm = st.get_communicator()
    g = torch.Generator().manual_seed(3)
    full = torch.randn(2, 6, 4, generator=g)
    weights = torch.randn(2, 2, 6, 4, generator=g)         # a different upstream gradient per rank
    part = full[:, 3 * comm.rank:3 * comm.rank + 3].clone().requires_grad_()
    gathered = gather_sequence(part, comm)
    (gathered * weights[comm.rank]).sum().backward()
    x = full.clone().requires_grad_()
    scattered = scatter_sequence(x, comm)
    (scattered * weights[comm.rank][:, :3]).sum().backward()
    y = (full * (comm.rank + 1)).requires_grad_()
    rs = reduce_scatter_sequence(y, comm)
    rs.sum().backward()
    return {"gathered": gathered.detach(), "part_grad": part.grad, "scattered": scattered.detach(),
            "x_grad": x.grad, "rs": rs.detach(), "y_grad": y.grad}


def test_gather_scatter_and_reduce_scatter_along_the_sequence_and_their_gradients(gang):
    r0, r1 = gang.run(_sequence_ops)
    g = torch.Generator().manual_seed(3)
    full = torch.randn(2, 6, 4, generator=g)
    weights = torch.randn(2, 2, 6, 4, generator=g)
    total = weights[0] + weights[1]
    for r, res in enumerate((r0, r1)):
        part = slice(3 * r, 3 * r + 3)
        torch.testing.assert_close(res["gathered"], full)
        # gather's gradient: the ranks' gradients of the whole sequence summed, this rank's part
        torch.testing.assert_close(res["part_grad"], total[:, part])
        torch.testing.assert_close(res["scattered"], full[:, part])
        # scatter's gradient: every rank's part, gathered
        torch.testing.assert_close(res["x_grad"], torch.cat([weights[0][:, :3], weights[1][:, :3]], 1))
        torch.testing.assert_close(res["rs"], 3 * full[:, part])
        torch.testing.assert_close(res["y_grad"], torch.ones(2, 6, 4))


def _sp_train(config):
    comm = _Counting(st.get_communicator())
    model = apply_tensor_parallel(make_gpt(), comm, config["plan"])
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    losses, grads, shapes = [], None, {}
    model.blocks[0].ln2.register_forward_hook(lambda m, a, out: shapes.update(ln2=out.shape))
    for step, (ids, tg) in enumerate(batches(STEPS)):
        opt.zero_grad()
        comm.calls.clear()
        loss = vocab_parallel_cross_entropy(model(ids), tg, comm)
        loss.backward()
        if step == 0:
            grads = {n: p.grad.clone() for n, p in model.named_parameters()}
            calls = list(comm.calls)
        opt.step()
        losses.append(loss.item())
    return {"losses": losses, "grads": grads, "calls": calls, "ln2": tuple(shapes["ln2"])}


def test_tp2_with_sequence_parallelism_equals_one_process(gang):
    results = gang.run(_sp_train, {"plan": TP_SP_PLAN})
    ref = reference_losses(STEPS)
    model = make_gpt()
    ids, tg = batches(1)[0]
    lm_loss(model(ids), tg).backward()
    full = dict(model.named_parameters())
    for res in results:
        assert res["ln2"] == (8, 8, 32)       # a norm sees half the sequence of 16
        assert res["losses"] == pytest.approx(ref, abs=LOSS_ATOL)
        # replicated parameters (norms, row biases, position embedding) get the whole gradient
        for name in ("blocks.0.ln1.weight", "blocks.2.ln2.bias", "norm.weight",
                     "blocks.1.mlp.fc2.bias", "embed.pos.weight"):
            torch.testing.assert_close(res["grads"][name], full[name].grad, atol=1e-6, rtol=1e-5)
        # what replaces an allreduce: a reduce-scatter in forward, an allgather in backward
        # per block 2 gathers + 2 reduce-scatters each way; the head's gather (forward) and
        # reduce-scatter (backward); the embedding's scatter (an allgather in backward)
        kinds = [k for k, _ in res["calls"]]
        assert (kinds.count("allgather"), kinds.count("reduce_scatter")) == (4 * 4 + 2, 4 * 4 + 1)
        # the activations' allreduces of plain tp are gone (the embedding's and loss's remain)
        reduced = [n for k, n in res["calls"] if k == "allreduce"]
        assert 8 * 16 * 32 not in reduced[1:] and reduced.count(8 * 16 * 32) == 1
        # the norms' weights and biases and the row layers' biases (6 of dim 32 per block, the
        # final norm's 2): one bucketed allreduce at the end of backward, none of them alone
        assert reduced[-1] == 4 * 6 * 32 + 2 * 32 and 32 not in reduced
    for name in results[0]["grads"]:       # replicated parameters stay bitwise equal
        if "ln" in name or "norm" in name or name.endswith("proj.bias") or name.endswith("fc2.bias"):
            assert torch.equal(results[0]["grads"][name], results[1]["grads"][name]), name


def test_sequence_parallel_rejects_a_module_with_parameters_and_an_indivisible_sequence():
    class Half:
        rank, world_size = 0, 2
    with pytest.raises(InvalidInputError, match=r"'lin': Linear holds parameters"):
        apply_tensor_parallel(nn.Sequential(nn.Linear(2, 2)).__class__(
            __import__("collections").OrderedDict(lin=nn.Linear(2, 2))), Half(), {"lin": "sequence"})
    with pytest.raises(InvalidInputError, match=r"a sequence of 5 .* does not divide over the tp "
                                                r"group of 2"):
        scatter_sequence(torch.zeros(1, 5, 2), Half())


def _bucket_cases(config):
    comm = _Counting(st.get_communicator())
    r = comm.rank
    torch.manual_seed(0)
    w, v = nn.Parameter(torch.randn(4)), nn.Parameter(torch.randn(3))
    x, z = torch.full((4,), r + 1.0), torch.full((3,), 10.0 * (r + 1))
    out = {}
    comm.calls.clear()
    for _ in range(2):     # two backward passes accumulate, as a pipeline's micro-batches do
        y = (replicated_param(w, comm) * x).sum() + (replicated_param(w, comm) * x).sum() \
            + (replicated_param(v, comm) * z).sum()
        y.backward()
    out["bucketed"] = (w.grad.clone(), v.grad.clone(), list(comm.calls))
    hooked = nn.Parameter(torch.randn(4))
    seen = []
    hooked.register_post_accumulate_grad_hook(lambda p: seen.append(p.grad.clone()))
    comm.calls.clear()
    (replicated_param(hooked, comm) * x).sum().backward()
    out["hooked"] = (hooked.grad.clone(), seen, list(comm.calls))
    return out


def test_replicated_parameter_gradients_travel_in_one_allreduce_per_backward(gang):
    for res in gang.run(_bucket_cases):
        wg, vg, calls = res["bucketed"]
        # d/dw of 2 (w . x_r), summed over ranks (x = 1, 2), over 2 passes: 2 * 2 * 3
        torch.testing.assert_close(wg, torch.full((4,), 12.0))
        torch.testing.assert_close(vg, torch.full((3,), 2 * 30.0))
        assert calls == [("allreduce", 7), ("allreduce", 7)]     # w and v together, per pass
        hg, seen, calls = res["hooked"]
        # a parameter with a gradient hook (e.g. DDP's) is reduced where autograd reaches it,
        # so the hook sees the summed gradient
        torch.testing.assert_close(hg, torch.full((4,), 3.0))
        assert len(seen) == 1 and torch.equal(seen[0], hg) and calls == [("allreduce", 4)]
