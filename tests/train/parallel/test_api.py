"""``parallelize`` on a Mesh: pipeline x data parallel on 4 ranks equals one process."""
from __future__ import annotations

import pytest
import torch

import shoal.train as st
from shoal.exceptions import InvalidInputError
from shoal.train.parallel import Mesh, PipelineSchedule, parallelize

from _models import batches, lm_loss, make_gpt, reference_losses

LOSS_ATOL = 2e-4   # fp32, Adam: micro-batches and dp shards only reorder sums
STEPS = 20


def _pp2_dp2(config):
    from torch import nn

    from shoal.train.parallel import deferred
    mesh = Mesh(dp=2, pp=2)
    computed = []       # per W: how many Linear calls' weight gradients it computed
    plain = deferred.weight_gradients

    def counted(entries):
        computed.append(sum(gy is not None for *_, gy in entries))
        plain(entries)
    deferred.weight_gradients = counted
    try:
        interleaved = config["schedule"] == "interleaved" or config.get("virtual")
        pipeline = {"split_points": [2, 3, 5], "virtual_stages": 2} if interleaved else \
            {"split_points": [3]}
        stage = parallelize(make_gpt(seed=100), mesh, zero_stage=config["zero_stage"],
                            pipeline=pipeline)
        opt = torch.optim.Adam(stage.parameters(), lr=0.05)
        losses = []
        with PipelineSchedule(stage, mesh.pp_group, schedule=config["schedule"], num_microbatches=2,
                              loss_fn=lm_loss, broadcast_loss=True) as sched:
            for ids, tg in batches(STEPS):
                opt.zero_grad()
                # each dp replica of the pipeline takes half the batch
                loss = sched.step(ids[mesh.dp_rank::2], tg[mesh.dp_rank::2])
                opt.step()
                t = loss.reshape(1).clone()
                mesh.dp_group.allreduce(t, op="avg")
                losses.append(t.item())
        linears = sum(isinstance(m, nn.Linear) for m in stage.modules())   # over the chunks
        return {"coords": mesh.coords, "losses": losses, "deferred": sum(computed),
                "linear_calls": linears * 2 * STEPS}
    finally:
        deferred.weight_gradients = plain
        mesh.destroy()


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage, schedule", [(None, "1f1b"), (1, "gpipe"), (3, "1f1b"),
                                                 (2, "interleaved"), (None, "zb"), (1, "zb"),
                                                 (3, "zb"), (2, "zb-v2")],
                         ids=["ddp-1f1b", "zero1-gpipe", "zero3-1f1b", "zero2-interleaved",
                              "ddp-zb", "zero1-zb", "zero3-zb", "zero2-zb-v2"])
def test_pp2_x_dp2_through_parallelize_trains_to_the_one_process_losses(gang4, zero_stage, schedule):
    config = {"zero_stage": zero_stage, "schedule": schedule.split("-")[0],
              "virtual": schedule.endswith("-v2")}
    results = gang4.run(_pp2_dp2, config, timeout=300)
    ref = reference_losses(STEPS, seed=100)
    assert sorted((r["coords"]["pp"], r["coords"]["dp"]) for r in results) == \
        [(0, 0), (0, 1), (1, 0), (1, 1)]
    for r in results:
        assert r["losses"] == pytest.approx(ref, abs=LOSS_ATOL)
        # zero bubble: every Linear's weight gradient, DDP's or a ZeRO shard's, waited for W
        assert r["deferred"] == (r["linear_calls"] if schedule.startswith("zb") else 0)


def test_parallelize_needs_a_mesh():
    with pytest.raises(InvalidInputError, match=r"needs a shoal.train.parallel.Mesh, got dict"):
        parallelize(make_gpt(), {"dp": 2})


def _pp2_by_time(config):
    mesh = Mesh(pp=2)
    try:
        ids, tg = batches(1)[0]
        stage = parallelize(make_gpt(), mesh, pipeline={"balance": "time", "sample": (ids, tg),
                                                         "loss_fn": lm_loss})
        return {"pp": mesh.pp_rank, "layers": stage.layer_names}
    finally:
        mesh.destroy()


def test_parallelize_cuts_the_pipeline_by_measured_time_the_same_on_every_rank(gang):
    from shoal.train.parallel import pipeline_layers
    results = sorted(gang.run(_pp2_by_time, timeout=200), key=lambda r: r["pp"])
    names = [n for n, _ in pipeline_layers(make_gpt())]
    assert results[0]["layers"] + results[1]["layers"] == names
    assert results[0]["layers"] and results[1]["layers"]
