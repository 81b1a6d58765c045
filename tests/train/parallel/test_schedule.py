"""Pipeline schedules: the order of work, interleaved 1F1B, and the timeline of a step."""
from __future__ import annotations

import copy
import time

import pytest
import torch
from torch import nn

import shoal.train as st
from shoal.exceptions import InvalidInputError
from shoal.train.parallel import (PipelineSchedule, pipeline_actions, replay_bubble, span_bubble,
                                  split_model, theoretical_bubble)

from _models import batches, lm_loss, make_gpt, reference_losses

LOSS_ATOL = 2e-4
STEPS = 20


# ------------------------------------------------------------------ the order of work
@pytest.mark.parametrize("schedule, v", [("gpipe", 1), ("1f1b", 1), ("interleaved", 2),
                                         ("interleaved", 3)])
def test_every_rank_runs_each_forward_and_backward_once_forward_first(schedule, v):
    p, m = 4, 8
    for r in range(p):
        acts = pipeline_actions(schedule, p, r, m, v)
        assert sorted(acts) == sorted((k, c, i) for k in "FB" for c in range(v) for i in range(m))
        assert all(acts.index(("F", c, i)) < acts.index(("B", c, i))
                   for c in range(v) for i in range(m))


def test_1f1b_holds_at_most_p_minus_rank_micro_batches():
    p, m = 4, 8
    for r in range(p):
        held, most = 0, 0
        for kind, _, _ in pipeline_actions("1f1b", p, r, m):
            held += 1 if kind == "F" else -1
            most = max(most, held)
        assert most == p - r


@pytest.mark.parametrize("p, m", [(2, 8), (4, 8), (4, 3), (3, 5)])
def test_zero_bubble_splits_each_backward_and_keeps_1f1b_s_order_and_memory(p, m):
    for r in range(p):
        acts = pipeline_actions("zb", p, r, m)
        assert sorted(acts) == sorted((k, 0, i) for k in "FIW" for i in range(m))
        assert all(acts.index(("F", 0, i)) < acts.index(("I", 0, i)) < acts.index(("W", 0, i))
                   for i in range(m))
        # forwards and input gradients in 1F1B's order: the neighbours see the same messages
        assert [("B" if k == "I" else k, c, i) for k, c, i in acts if k != "W"] == \
            pipeline_actions("1f1b", p, r, m)
        # a micro-batch is held from its forward to its W: never more of them than 1F1B's
        # first rank holds (rank r's r waiting W's stand for the r fewer forwards it runs ahead)
        held, most = 0, 0
        for kind, _, _ in acts:
            held += {"F": 1, "I": 0, "W": -1}[kind]
            most = max(most, held)
        assert most == min(m, p)


@pytest.mark.parametrize("p, m, v", [(2, 4, 2), (4, 8, 2), (2, 6, 3)])
def test_zero_bubble_with_virtual_stages_runs_every_op_once_in_order(p, m, v):
    for r in range(p):
        acts = pipeline_actions("zb", p, r, m, v)
        assert sorted(acts) == sorted((k, c, i) for k in "FIW" for c in range(v) for i in range(m))
        assert all(acts.index(("F", c, i)) < acts.index(("I", c, i)) < acts.index(("W", c, i))
                   for c in range(v) for i in range(m))


def _replay_of(schedule, p, m, v, f=1.0, b=2.0):
    """Timelines of a balanced pipeline (forward f, backward b), replayed."""
    tls = []
    cost = {"F": f, "B": b, "I": b / 2, "W": b / 2}
    for r in range(p):
        tls.append([(k, c * p + r, i, 0.0, cost[k], cost[k])
                    for k, c, i in pipeline_actions(schedule, p, r, m, v)])
    return replay_bubble(tls)


@pytest.mark.parametrize("schedule, v", [("gpipe", 1), ("1f1b", 1), ("interleaved", 2), ("zb", 1),
                                         ("zb", 2), ("zb", 3)])
def test_replay_of_a_balanced_pipeline_gives_the_theoretical_bubble(schedule, v):
    p, m = 4, 8
    bubbles = _replay_of(schedule, p, m, v)
    assert bubbles == pytest.approx([theoretical_bubble(p, m, v, schedule)] * p, abs=1e-9)
    assert theoretical_bubble(p, m, 2) < theoretical_bubble(p, m, 1)
    assert theoretical_bubble(p, m, 2, "zb") < theoretical_bubble(p, m, 1, "zb") < \
        theoretical_bubble(p, m, 1)


def test_span_bubble_of_a_balanced_step_is_the_theory():
    # GPipe, 2 ranks, 2 micro-batches, forward 1 s and backward 2 s, on a clock starting at 100
    t0 = 100.0
    r0 = [("F", 0, 0, 0, 1), ("F", 0, 1, 1, 2), ("B", 0, 0, 5, 7), ("B", 0, 1, 7, 9)]
    r1 = [("F", 1, 0, 1, 2), ("F", 1, 1, 2, 3), ("B", 1, 0, 3, 5), ("B", 1, 1, 5, 7)]
    tls = [[(k, s, i, t0 + a, t0 + b, b - a) for k, s, i, a, b in tl] for tl in (r0, r1)]
    assert span_bubble(tls) == pytest.approx([theoretical_bubble(2, 2)] * 2)   # 3 of 9 s idle
    assert replay_bubble(tls) == pytest.approx(span_bubble(tls))
    # a rank that starts late lengthens the span for both
    late = [tls[0], [(k, s, i, a + 3, b + 3, c) for k, s, i, a, b, c in tls[1]]]
    assert span_bubble(late) == pytest.approx([0.4, 0.4])


def test_replay_rejects_timelines_that_cannot_run():
    tl = [[("F", 1, 0, 0.0, 1.0, 1.0)], [("F", 0, 0, 0.0, 1.0, 1.0)]]   # stage 1 first on rank 0
    tl[0].insert(0, ("B", 0, 0, 0.0, 1.0, 1.0))
    with pytest.raises(InvalidInputError, match="cannot all be met"):
        replay_bubble(tl)


def test_zero_bubble_on_one_rank_equals_plain_gradient_accumulation(monkeypatch):
    # a GPT, then Linears under activation checkpointing (both kinds) and an in-place op on a
    # Linear's output: every weight gradient computed later in "W" is the one backward gives
    from torch.utils.checkpoint import checkpoint

    class One:
        rank, world_size, timeout = 0, 1, 5.0

    class Relu(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 16)

        def forward(self, x):
            h = self.fc1(x)
            h.relu_()
            return self.fc2(h)

    class Checkpointed(nn.Module):
        def __init__(self, reentrant):
            super().__init__()
            self.inner, self.reentrant = Relu(), reentrant

        def forward(self, x):
            return checkpoint(self.inner, x, use_reentrant=self.reentrant)

    torch.manual_seed(0)
    x, y = torch.randn(12, 8), torch.randn(12, 4)
    ids, tg = batches(1)[0]
    # (model, its copy, inputs, targets, loss, deferred Linear calls per micro-batch): the GPT's 4
    # blocks hold 4 Linears each, plus the head; the first Linear of the others reads the batch,
    # which needs no gradient, so it computes dW in I as a plain backward would
    cases = [(make_gpt(), make_gpt(), ids, tg, lm_loss, 17)]
    for reentrant in (False, True):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), Checkpointed(reentrant), nn.Linear(16, 4))
        cases.append((model, copy.deepcopy(model), x, y, nn.functional.mse_loss, 3))
    from shoal.train.parallel import deferred
    plain, computed = deferred.weight_gradients, []

    def counted(entries):
        computed.extend(e for e in entries if e[3] is not None)
        plain(entries)
    monkeypatch.setattr(deferred, "weight_gradients", counted)
    for model, ref, inputs, targets, loss_fn, calls in cases:
        computed.clear()
        with PipelineSchedule(model, One(), schedule="zb", num_microbatches=3,
                              loss_fn=loss_fn) as sched:
            loss = sched.step(inputs, targets)
        assert [e[0] for e in sched.stats.events] == ["F", "I", "W"] * 3
        assert len(computed) == 3 * calls      # these Linears' dW waited for "W"
        full = loss_fn(ref(inputs), targets)
        full.backward()
        assert loss.item() == pytest.approx(full.item(), abs=1e-6)
        for (name, p), q in zip(model.named_parameters(), ref.parameters()):
            torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5, msg=name)
        # the modules are as they were: no forward left on them, so copies run plainly
        assert all("forward" not in mod.__dict__ for mod in model.modules())


def test_zero_bubble_leaves_hooked_and_frozen_weights_to_the_backward():
    class One:
        rank, world_size, timeout = 0, 1, 5.0
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 2))
    model[1].weight.requires_grad_(False)
    seen = []
    model[2].weight.register_post_accumulate_grad_hook(lambda q: seen.append(q.grad.clone()))
    with PipelineSchedule(model, One(), schedule="zb", num_microbatches=2,
                          loss_fn=nn.functional.mse_loss) as sched:
        assert [mod for mod, _ in sched._linears[0]] == [model[0]]
        sched.step(torch.randn(6, 4), torch.randn(6, 2))
    assert len(seen) == 2 and model[1].weight.grad is None
    torch.testing.assert_close(seen[-1], model[2].weight.grad)


def test_deferred_weights_of_a_synced_flat_parameter_land_in_its_gradient():
    from shoal.train.ddp import grad_sync_hook
    from shoal.train.parallel import deferred
    torch.manual_seed(0)
    flat = nn.Parameter(torch.randn(8 * 4 + 8))      # as ZeRO holds a unit: views of one leaf
    synced = []
    flat.register_post_accumulate_grad_hook(grad_sync_hook(lambda p: synced.append(1)))
    w, b = flat[:32].view(8, 4), flat[32:]
    x = torch.randn(5, 4, requires_grad=True)
    store = []
    with deferred.deferring(store):                  # nobody syncs afterwards: the backward does
        deferred.linear(x, w, b).square().sum().backward()
    assert store == [] and synced == [1]
    want, flat.grad = flat.grad.clone(), None
    with deferred.deferring(store, synced=True):
        deferred.linear(x, w, b).square().sum().backward()
    assert flat.grad is None and len(store) == 1 and synced == [1]   # the caller syncs
    deferred.weight_gradients(store)
    torch.testing.assert_close(flat.grad, want)
    # a view that is no plain slice of its leaf is left to the backward
    store.clear()
    with deferred.deferring(store, synced=True):
        deferred.linear(x, flat[:32].view(4, 8).t(), b).sum().backward()
    assert store == []


def test_zero_bubble_rejects_stages_that_synchronize_only_in_the_backward():
    class Two:
        rank, world_size, timeout = 0, 2, 5.0

    class Synced(nn.Linear):       # a data-parallel stage without sync_gradients()
        def no_sync(self):
            raise AssertionError("not called")
    with pytest.raises(InvalidInputError, match=r"schedule='zb' .* \(Synced\) synchronizes .* "
                                                r"no sync_gradients\(\) .* use schedule='1f1b'"):
        PipelineSchedule(Synced(2, 2), Two(), schedule="zb", num_microbatches=2, loss_fn=lm_loss)
    with pytest.raises(InvalidInputError, match=r"'zb' with several stages per rank needs "
                                                r"num_microbatches a multiple of the 2"):
        PipelineSchedule(split_model(make_gpt(), 4)[0::2], Two(), schedule="zb",
                         num_microbatches=3)


def test_interleaved_arguments_are_checked():
    class Two:
        rank, world_size, timeout = 0, 2, 5.0
    stages = split_model(make_gpt(), 4)
    with pytest.raises(InvalidInputError, match=r"needs a list of this rank's virtual stages"):
        PipelineSchedule(stages[0], Two(), schedule="interleaved", num_microbatches=4)
    with pytest.raises(InvalidInputError, match=r"multiple of the 2 pipeline ranks, got 3"):
        PipelineSchedule(stages[0::2], Two(), schedule="interleaved", num_microbatches=3)
    with pytest.raises(InvalidInputError, match=r"runs one stage per rank, got 2"):
        PipelineSchedule(stages[0::2], Two(), schedule="1f1b", num_microbatches=4)


# ------------------------------------------------------------------ on 2 ranks
def _interleaved(config):
    if not config.get("threads"):
        return _interleaved_on(st.get_communicator(), config)
    # the helper-thread path (CUDA's, other backends') on CPU, in this worker for this test only
    from shoal.train.parallel import pp_comm
    pp_comm.Links._pull_on_cpu = False
    try:
        comm = st.get_communicator()
        return _interleaved_on(_Impatient(comm, comm.timeout, nonblocking_send=False), config)
    finally:
        pp_comm.Links._pull_on_cpu = True


def _interleaved_on(comm, config):
    p, v = comm.world_size, 2
    model = make_gpt()
    chunks = split_model(model, p * v, split_points=config["split"])[comm.rank::p]
    params = [q for c in chunks for q in c.parameters()]
    opt = torch.optim.Adam(params, lr=0.05)
    losses, grads, timelines = [], None, []
    with PipelineSchedule(chunks, comm, schedule=config.get("schedule", "interleaved"),
                          num_microbatches=4,
                          loss_fn=lm_loss, broadcast_loss=True) as sched:
        for step, (ids, tg) in enumerate(batches(STEPS)):
            opt.zero_grad()
            loss = sched.step(ids, tg)
            if step == 0:
                grads = {n: q.grad.clone() for c in chunks for n, q in c.named_parameters()}
            opt.step()
            losses.append(loss.item())
            timelines.append(sched.stats.events)
            st_ = sched.stats
            assert st_.compute_s + st_.wait_s <= st_.wall_s and st_.compute_cpu_s <= st_.cpu_s
    return {"losses": losses, "grads": grads, "events": timelines[-1],
            "stages": [c.layer_names for c in chunks]}


@pytest.mark.parametrize("schedule, threads", [("interleaved", False), ("interleaved", True),
                                               ("zb", False)],
                         ids=["training-thread", "helper-threads", "zero-bubble"])
def test_interleaved_gradients_and_losses_equal_one_process(gang, schedule, threads):
    # 7 layers into 4 stages: rank 0 runs stages 0 and 2, rank 1 stages 1 and 3
    r0, r1 = gang.run(_interleaved, {"split": [2, 3, 5], "threads": threads, "schedule": schedule})
    assert r0["stages"] == [["embed", "blocks.0"], ["blocks.2", "blocks.3"]]
    assert r1["stages"] == [["blocks.1"], ["norm", "head"]]
    model = make_gpt()
    ids, tg = batches(1)[0]
    lm_loss(model(ids), tg).backward()
    for name, q in model.named_parameters():
        got = r0["grads"].get(name, r1["grads"].get(name))
        torch.testing.assert_close(got, q.grad, atol=1e-6, rtol=1e-5)
    assert r0["losses"] == r1["losses"]
    assert r1["losses"] == pytest.approx(reference_losses(STEPS), abs=LOSS_ATOL)
    # the events of both ranks replay: every op of the step (forward and backward, or forward,
    # input gradient and weight gradient, of 2 stages x 4 micro-batches) ran once, in an order
    # that can run
    kinds = "FB" if schedule == "interleaved" else "FIW"
    for r in (r0, r1):
        assert sorted(e[0] for e in r["events"]) == sorted(kinds * 8)
    assert all(0.0 <= b < 1.0 for b in replay_bubble([r0["events"], r1["events"]]))


class _Impatient:
    """The session's communicator with a short timeout for the pipeline's own waits."""

    def __init__(self, comm, timeout, **attrs):
        self.comm, self.rank, self.world_size, self.timeout = comm, comm.rank, comm.world_size, timeout
        self.__dict__.update(attrs)

    def __getattr__(self, name):
        return getattr(self.comm, name)


def _one_rank_stops(config):
    comm = st.get_communicator()
    stage = split_model(make_gpt(), 2, split_points=[3])[comm.rank]
    sched = PipelineSchedule(stage, _Impatient(comm, 3.0), num_microbatches=2, loss_fn=lm_loss)
    ids, tg = batches(1)[0]
    sched.step(ids, tg)
    if comm.rank == 1:
        time.sleep(6)                 # the last stage stays, but takes no second step
        return None
    try:
        sched.step(ids, tg)           # waits for a gradient that never comes
    except Exception as e:  # noqa: BLE001 -- the test inspects it
        return f"{type(e).__name__}: {e}"
    finally:
        sched.close()
    return "no error"


def test_a_stage_that_stops_fails_its_neighbour_within_the_timeout(gang):
    err, _ = gang.run(_one_rank_stops, timeout=120)
    # on CPU the training thread reads the gradient itself: its wait is bounded by the
    # connection's timeout, and here ends when rank 1's group closes
    assert err.startswith("CollectiveError: pipeline rank 0 waited"), err
    assert "the gradient of stage 0, micro-batch 0 from rank 1" in err, err
