"""Pipeline parallelism: splitting, GPipe and 1F1B on 2 ranks equal one process."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import shoal.train as st
from shoal.exceptions import InvalidInputError
from shoal.train.parallel.pipeline import (PipelineSchedule, pipeline_layers, profile_layers,
                                          rebalance, split_model, stage_costs)

from _models import batches, lm_loss, make_gpt, reference_losses

# fp32, Adam: micro-batching only reorders sums, so the losses agree to rounding
LOSS_ATOL = 2e-4
STEPS = 20


# ------------------------------------------------------------------ splitting
def test_layers_of_a_model_with_a_list_of_blocks_expand_the_list():
    names = [n for n, _ in pipeline_layers(make_gpt(n_layer=3))]
    assert names == ["embed", "blocks.0", "blocks.1", "blocks.2", "norm", "head"]


def test_stages_together_compute_the_model_and_keep_its_parameter_names():
    model = make_gpt()
    stages = split_model(model, 3)
    ids = batches(1)[0][0]
    x = ids
    for s in stages:
        x = s(x)
    assert torch.equal(x, model(ids))
    keys = [k for s in stages for k in s.state_dict()]
    assert keys == list(model.state_dict())


def test_a_block_listing_sublayers_is_cut_inside_and_keeps_its_parameter_names():
    model = make_gpt(n_layer=2, halved_blocks=True)
    names = [n for n, _ in pipeline_layers(model)]
    assert names == ["embed", "blocks.0.attn", "blocks.0.mlp", "blocks.1.attn", "blocks.1.mlp",
                     "norm", "head"]
    stages = split_model(model, 3, split_points=["blocks.0.mlp", "blocks.1.mlp"])
    assert [s.layer_names for s in stages] == [names[:2], names[2:4], names[4:]]
    ids = batches(1)[0][0]
    x = ids
    for s in stages:
        x = s(x)
    assert torch.equal(x, model(ids))
    assert [k for s in stages for k in s.state_dict()] == list(model.state_dict())
    assert stage_costs(list(range(7)), stages, model) == [0 + 1, 2 + 3, 4 + 5 + 6]


class _Listing(nn.Module):
    def __init__(self, subs):
        super().__init__()
        self.subs = subs
        self.a, self.b = nn.Linear(2, 2), nn.Linear(2, 2)

    def forward(self, x):
        return self.b(self.a(x))

    def pipeline_sublayers(self):
        return self.subs


@pytest.mark.parametrize("subs, message", [
    (["a", "c"], r"blocks.0 \(_Listing\).pipeline_sublayers\(\) names \['c'\], which are not its "
                 r"children; its children are \['a', 'b'\]"),
    (["a"], r"blocks.0 \(_Listing\) holds parameters in \['b'\], outside the sub-layers \['a'\]"),
    (["a", "b", "a"], r"names \['a'\] more than once"),
    ([], r"blocks.0 \(_Listing\).pipeline_sublayers\(\) must return a non-empty list"),
    ("ab", r"must return a non-empty list of names of its children, got 'ab'"),
])
def test_bad_sublayer_lists_are_rejected_naming_the_block_and_the_names(subs, message):
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([_Listing(subs)])

    with pytest.raises(InvalidInputError, match=message):
        pipeline_layers(Model())


def test_balance_by_params_minimizes_the_largest_stage():
    model = nn.Sequential(nn.Linear(10, 100), nn.Linear(100, 10), nn.Linear(10, 10),
                          nn.Linear(10, 10), nn.Linear(10, 10))
    stages = split_model(model, 2)
    assert [s.layer_names for s in stages] == [["0"], ["1", "2", "3", "4"]]


class _Heavy(nn.Module):
    """A layer hundreds of times slower than a small Linear (repeated matmuls)."""

    def __init__(self, dim, reps=200):
        super().__init__()
        self.w, self.reps = nn.Parameter(torch.eye(dim)), reps

    def forward(self, x):
        for _ in range(self.reps):
            x = x @ self.w
        return x


def test_balance_by_listed_costs_minimizes_the_slowest_stage():
    model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(5)])
    stages = split_model(model, 2, balance=[1, 1, 1, 1, 4])
    assert [s.layer_names for s in stages] == [["0", "1", "2", "3"], ["4"]]
    assert stage_costs([1, 1, 1, 1, 4], stages, model) == [4, 4]
    with pytest.raises(InvalidInputError, match=r"needs 5 non-negative numbers"):
        split_model(model, 2, balance=[1, 2])
    with pytest.raises(InvalidInputError, match=r"balance='time' needs sample"):
        split_model(model, 2, balance="time")
    with pytest.raises(InvalidInputError, match=r"got 'flops'"):
        split_model(model, 2, balance="flops")


def test_profile_layers_counts_the_loss_on_the_last_layer_and_keeps_gradients():
    torch.manual_seed(0)
    dim = 64
    model = nn.Sequential(nn.Linear(dim, dim), _Heavy(dim), nn.Linear(dim, dim), nn.Linear(dim, dim))
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    x, y = torch.randn(64, dim), torch.randn(64, dim)
    heavy = _Heavy(dim)

    def slow_loss(out, t):        # as slow as the heavy layer: the last layer carries it
        return (heavy(out) - t).square().mean()
    costs = profile_layers(model, x, y, slow_loss, repeats=3, warmup=1)
    assert len(costs) == 4 and all(c > 0 for c in costs)
    assert costs[1] > 5 * max(costs[0], costs[2])       # ~200 matmuls against one
    assert costs[3] > 5 * max(costs[0], costs[2])       # the loss is the last layer's
    assert all(torch.equal(p.grad, torch.full_like(p, 3.0)) for p in model.parameters())
    stages = split_model(model, 2, balance="time", sample=(x, y), loss_fn=slow_loss)
    # the two heavy parts end on different stages
    assert [s.layer_names for s in stages] in ([["0", "1"], ["2", "3"]], [["0", "1", "2"], ["3"]])


def test_explicit_split_points_by_index_or_name():
    model = make_gpt()
    by_index = split_model(model, 2, split_points=[3])
    by_name = split_model(model, 2, split_points=["blocks.2"])
    assert by_index[1].layer_names == by_name[1].layer_names == ["blocks.2", "blocks.3", "norm", "head"]


def test_balance_by_layers_needs_a_layer_count_dividing_over_the_stages():
    model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(7)])
    with pytest.raises(InvalidInputError, match=r"7 layers do not divide over num_stages=2"):
        split_model(model, 2, balance="layers")
    assert [len(s.layer_names) for s in split_model(model, 7, balance="layers")] == [1] * 7


@pytest.mark.parametrize("points, message", [
    ([2, 4], r"split_points has 2 entries; 2 stages need 1"),
    ([0], r"split point 0 is out of range"),
    ([9], r"split point 9 is out of range: .* \(7 layers\)"),
    (["blocks.9"], r"split point 'blocks.9' is not a layer name"),
])
def test_bad_split_points_are_rejected_naming_them(points, message):
    with pytest.raises(InvalidInputError, match=message):
        split_model(make_gpt(), 2, split_points=points)


def test_split_points_must_increase():
    with pytest.raises(InvalidInputError, match=r"strictly increasing"):
        split_model(make_gpt(), 3, split_points=[3, 3])


def test_more_stages_than_layers_is_rejected_naming_both():
    with pytest.raises(InvalidInputError, match=r"has 7 layers, fewer than num_stages=8"):
        split_model(make_gpt(), 8)


def test_a_model_without_one_list_of_blocks_is_rejected():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.ModuleList([nn.Linear(2, 2)]), nn.ModuleList([nn.Linear(2, 2)])
    with pytest.raises(InvalidInputError, match=r"2 nn.ModuleList children \(a, b\)"):
        split_model(Two(), 2)


def test_schedule_arguments_are_checked():
    class One:
        rank, world_size, timeout = 0, 1, 5.0
    with pytest.raises(InvalidInputError, match=r"schedule must be one of"):
        PipelineSchedule(nn.Linear(2, 2), One(), schedule="pipedream", loss_fn=lm_loss)
    with pytest.raises(InvalidInputError, match=r"num_microbatches must be a positive int, got 0"):
        PipelineSchedule(nn.Linear(2, 2), One(), num_microbatches=0, loss_fn=lm_loss)
    with pytest.raises(InvalidInputError, match=r"needs loss_fn"):
        PipelineSchedule(nn.Linear(2, 2), One())


def test_one_stage_pipeline_equals_plain_gradient_accumulation():
    class One:
        rank, world_size, timeout = 0, 1, 5.0
    model, ref = make_gpt(), make_gpt()
    ids, tg = batches(1)[0]
    with PipelineSchedule(model, One(), num_microbatches=3, loss_fn=lm_loss) as sched:
        loss = sched.step(ids, tg)
    full = lm_loss(ref(ids), tg)
    full.backward()
    assert loss.item() == pytest.approx(full.item(), abs=1e-6)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5)
    with pytest.raises(InvalidInputError, match=r"inputs has a batch of 2, fewer than "
                                                r"num_microbatches=3"):
        sched.step(ids[:2], tg[:2])


# ------------------------------------------------------------------ on 2 ranks
def _pp_train(config):
    comm = st.get_communicator()
    model = make_gpt(halved_blocks=config.get("halved", False))
    if config.get("balance") == "time":    # every rank times its layers; all cut alike
        ids, tg = batches(1)[0]
        m = config["m"]
        stage = split_model(model, comm.world_size, balance="time", sample=(ids[:len(ids) // m],
                            tg[:len(tg) // m]), loss_fn=lm_loss, group=comm)[comm.rank]
    elif config.get("balance") == "rebalance":   # re-cut from compute measured in the pipeline
        ids, tg = batches(1)[0]
        held = {p: p.grad for p in model.parameters()}
        before = [p.detach().clone() for p in model.parameters()]
        # three steps per cut: their median survives one step a loaded host slows down
        stages = rebalance(model, comm, (ids, tg), lm_loss, schedule=config["schedule"],
                           num_microbatches=config["m"], costs=config["costs"], steps=3, tries=3)
        assert all(p.grad is held[p] for p in model.parameters())   # gradients as they were
        assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
        stage = stages[comm.rank]
        tried = [list(cut) for cut in rebalance.last]
    else:
        stage = split_model(model, comm.world_size, split_points=config.get("split"))[comm.rank]
    opt = torch.optim.Adam(stage.parameters(), lr=0.05)
    losses, bubbles = [], []
    with PipelineSchedule(stage, comm, schedule=config["schedule"],
                          num_microbatches=config["m"], loss_fn=lm_loss,
                          broadcast_loss=config.get("broadcast", False)) as sched:
        for step, (ids, tg) in enumerate(batches(STEPS)):
            if step in config.get("short_steps", ()):   # a smaller batch: shapes renegotiated
                ids, tg = ids[:5], tg[:5]
            opt.zero_grad()
            loss = sched.step(ids if comm.rank == 0 else None, tg if sched.is_last else None)
            opt.step()
            losses.append(None if loss is None else loss.item())
            bubbles.append(sched.stats.bubble)
    return {"losses": losses, "bubble": bubbles, "stage": stage.layer_names,
            "tried": locals().get("tried")}


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b", "zb"])
def test_two_stage_pipeline_trains_to_the_one_process_losses(gang, schedule):
    # 1F1B's run also broadcasts the loss from the last stage to the first
    broadcast = schedule == "1f1b"
    first, last = gang.run(_pp_train, {"schedule": schedule, "m": 4, "split": [3],
                                       "broadcast": broadcast})
    assert first["losses"] == (last["losses"] if broadcast else [None] * STEPS)
    assert first["stage"] == ["embed", "blocks.0", "blocks.1"]
    ref = reference_losses(STEPS)
    assert last["losses"] == pytest.approx(ref, abs=LOSS_ATOL)
    assert ref[-1] < 0.5 * ref[0]          # it learned, so the comparison means something
    assert all(0.0 <= b < 1.0 for b in first["bubble"] + last["bubble"])


def test_a_pipeline_cut_inside_a_block_trains_to_the_one_process_losses(gang):
    first, last = gang.run(_pp_train, {"schedule": "1f1b", "m": 4, "split": ["blocks.1.mlp"],
                                       "halved": True})
    assert first["stage"][-2:] == ["blocks.0.mlp", "blocks.1.attn"]
    assert last["stage"][0] == "blocks.1.mlp"
    assert last["losses"] == pytest.approx(reference_losses(STEPS, halved_blocks=True),
                                           abs=LOSS_ATOL)


def test_stages_balanced_by_measured_time_agree_across_ranks_and_train(gang):
    first, last = gang.run(_pp_train, {"schedule": "1f1b", "m": 4, "balance": "time"})
    names = [n for n, _ in pipeline_layers(make_gpt())]
    assert first["stage"] + last["stage"] == names       # one cut, the same on both ranks
    assert last["losses"] == pytest.approx(reference_losses(STEPS), abs=LOSS_ATOL)


def test_rebalance_recuts_from_compute_measured_in_the_pipeline_and_trains(gang):
    # costs that put nearly all the work on the embedding: the first cut is "embed" alone; the
    # pipeline's own timing shows its stage idle and the re-cut moves blocks to it
    costs = [100.0] + [1.0] * 6
    first, last = gang.run(_pp_train, {"schedule": "1f1b", "m": 4, "balance": "rebalance",
                                       "costs": costs})
    names = [n for n, _ in pipeline_layers(make_gpt())]
    assert first["stage"] + last["stage"] == names       # one cut, the same on both ranks
    assert first["tried"] == last["tried"] and first["tried"][0] == [1] and len(first["tried"]) > 1
    assert len(first["stage"]) > 1                       # not the profiled (wrong) cut
    # the same model trained: the losses of one process, as with any other cut
    assert last["losses"] == pytest.approx(reference_losses(STEPS), abs=LOSS_ATOL)


def test_rebalance_rejects_bad_arguments():
    class One:
        rank, world_size, timeout = 0, 1, 5.0
    model = make_gpt()
    with pytest.raises(InvalidInputError, match=r"steps >= 1.*steps=0"):
        rebalance(model, One(), batches(1)[0], lm_loss, steps=0)
    with pytest.raises(InvalidInputError, match=r"costs has 2 entries.*7 layers"):
        rebalance(model, One(), batches(1)[0], lm_loss, costs=[1, 2])


def test_interleaved_cut_balances_each_ranks_stages_together():
    from shoal.train.parallel.pipeline import _balanced_starts, _best_cut
    # a GPT's profile: embedding, 32 equal blocks, norm, and a heavy head + loss
    costs = [0.47] + [2.27] * 32 + [0.12, 3.96]

    def per_rank(cut):
        b = [0] + cut + [len(costs)]
        stage = [sum(costs[x:y]) for x, y in zip(b, b[1:])]
        return stage[0] + stage[2], stage[1] + stage[3]   # 2 ranks, stages r and r + 2

    slowest_stage_first = _balanced_starts(costs, 4)
    cut = _best_cut(costs, "interleaved", 2, 2, 8)
    assert max(per_rank(slowest_stage_first)) / min(per_rank(slowest_stage_first)) > 1.08
    assert max(per_rank(cut)) / min(per_rank(cut)) < 1.03
    assert _best_cut(costs, "1f1b", 2, 1, 8) == _balanced_starts(costs, 2)


def _reference_with_short_steps(short):
    model = make_gpt()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    out = []
    for step, (ids, tg) in enumerate(batches(STEPS)):
        if step in short:
            ids, tg = ids[:5], tg[:5]
        opt.zero_grad()
        loss = lm_loss(model(ids), tg)
        loss.backward()
        opt.step()
        out.append(loss.item())
    return out


def test_uneven_micro_batches_and_changing_batch_sizes_keep_the_losses(gang):
    short = (5, 6, 12)
    _, last = gang.run(_pp_train, {"schedule": "1f1b", "m": 3, "short_steps": short})
    assert last["losses"] == pytest.approx(_reference_with_short_steps(short), abs=LOSS_ATOL)


class _Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(1.0))

    def forward(self, x):
        return x * self.w


def _large_activations(config):
    comm = st.get_communicator()
    torch.manual_seed(0)
    model = nn.Sequential(*[_Scale() for _ in range(4)])
    stage = split_model(model, 2)[comm.rank]
    x = torch.randn(8, 1 << 22)      # 16 MiB per micro-batch, more than socket buffers hold
    with PipelineSchedule(stage, comm, schedule=config["schedule"], num_microbatches=8,
                          loss_fn=lambda out, t: (out - t).square().mean()) as sched:
        loss = sched.step(x, torch.zeros_like(x))
    return None if loss is None else loss.item(), [p.grad.item() for p in stage.parameters()]


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_activations_larger_than_socket_buffers_do_not_deadlock(gang, schedule):
    (_, g0), (loss, g1) = gang.run(_large_activations, {"schedule": schedule}, timeout=120)
    torch.manual_seed(0)
    x = torch.randn(8, 1 << 22)
    # loss = mean(x^2) with all scales 1; d loss / d w = 2 mean(x^2) for each scale
    assert loss == pytest.approx(x.square().mean().item(), rel=1e-5)
    assert g0 + g1 == pytest.approx([2 * x.square().mean().item()] * 4, rel=1e-4)


def test_a_layer_replaced_after_splitting_is_the_one_that_runs():
    stage = split_model(make_gpt(), 2, split_points=[3])[1]

    class Doubled(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return 2 * self.inner(x)
    x = torch.randn(2, 16, 32)
    before = stage(x)
    stage.head = Doubled(stage.head)      # as a sharded-data-parallel wrapper would
    assert torch.allclose(stage(x), 2 * before)
    # a sub-layer inside a block, too
    stage = split_model(make_gpt(halved_blocks=True), 2, split_points=["blocks.1.mlp"])[1]
    before = stage(x)
    stage.blocks["3"].mlp = Doubled(stage.blocks["3"].mlp)
    assert not torch.allclose(stage(x), before)
    stage.head = Doubled(stage.head)
    stage.blocks["3"].mlp = stage.blocks["3"].mlp.inner
    assert torch.allclose(stage(x), 2 * before)
