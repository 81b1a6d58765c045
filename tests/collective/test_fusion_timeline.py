"""Tensor fusion packs small async allreduces; the timeline records ops and phases."""
import glob
import json
import os

import numpy as np
import pytest

from shoal.collective import FusionConfig, NativeConfig


def _fused(comm):
    tens = [np.full(100 + i, float(comm.rank + i)) for i in range(30)]
    works = [comm.allreduce(t, async_op=True) for t in tens]
    for w in works:
        w.wait(60)
    ok = all(np.array_equal(t, np.full(100 + i, float(sum(q + i for q in range(comm.world_size)))))
             for i, t in enumerate(tens))
    return ok, comm._fuser.fused_ops, comm._fuser.fused_tensors


def test_small_async_allreduces_are_fused(rank_pool):
    cfg = NativeConfig(fusion=FusionConfig(cycle_time_s=0.05))
    res = rank_pool.run(_fused, 3, config=cfg)
    for ok, ops, tensors in res:
        assert ok
        assert ops >= 1 and tensors >= 2
        assert ops < 30  # fewer collectives than tensors


def test_fusion_disabled_runs_each_op(rank_pool):
    cfg = NativeConfig(fusion=FusionConfig(enabled=False))
    for ok, ops, tensors in rank_pool.run(_fused, 2, config=cfg):
        assert ok and ops == 0


def test_fusion_config_rejects_negative_values():
    with pytest.raises(ValueError, match="threshold_bytes"):
        FusionConfig(threshold_bytes=-1)


def _traced(comm):
    big = np.ones(200_000, np.float32)
    comm.allreduce(big)
    works = [comm.allreduce(np.ones(10), async_op=True) for _ in range(5)]
    for w in works:
        w.wait(30)
    comm.allgather(np.ones(3))
    return True


def test_timeline_writes_chrome_trace_per_rank(rank_pool, tmp_path):
    prefix = str(tmp_path / "tl")
    cfg = NativeConfig(timeline=prefix, fusion=FusionConfig(cycle_time_s=0.02))
    rank_pool.run(_traced, 2, config=cfg)
    files = sorted(glob.glob(prefix + "*.json"))
    assert len(files) == 2 and all(os.path.basename(f).endswith(f"rank{i}.json") for i, f in enumerate(files))
    events = json.load(open(files[0]))
    names = {e["name"] for e in events}
    assert {"allreduce", "allgather", "copy_in", "reduce", "copy_out", "negotiation"} <= names
    assert all(e["ph"] in ("X", "M") for e in events)
