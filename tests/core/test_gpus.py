"""GPU ids: detection, and which GPUs each GPU actor gets (CUDA_VISIBLE_DEVICES).

These run without a GPU: the node is told it has GPUs (``num_gpus=``) and
the tests read what each actor's process was given. ``tests/train/test_gpu.py``
trains on a real GPU where there is one.
"""
from __future__ import annotations

import os

import pytest

import shoal
from shoal.core._gpus import GpuIds, visible_gpu_ids


def test_visible_ids_follow_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 5")
    assert visible_gpu_ids() == ["2", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpu_ids() == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert visible_gpu_ids() == []


def test_whole_gpus_are_exclusive_and_fractions_pack():
    ids = GpuIds(["0", "1", "2"], 3)
    a = ids.take(1)
    b = ids.take(2)
    assert len(a) == 1 and len(b) == 2 and not set(a) & set(b)
    ids.give_back(b, 2)
    # fractional requests fill one GPU before they spread to the next
    halves = [ids.take(0.5) for _ in range(4)]
    assert halves[0] == halves[1] and halves[2] == halves[3] and halves[0] != halves[2]
    assert a[0] not in {h[0] for h in halves}
    for h in halves:
        ids.give_back(h, 0.5)
    ids.give_back(a, 1)
    assert all(v == 0 for v in ids.load.values())
    assert ids.take(0) == []


def test_more_gpus_named_than_found_are_numbered():
    ids = GpuIds([], 2)
    assert sorted(ids.take(2)) == ["0", "1"]


@pytest.fixture
def gpu_cluster():
    if shoal.is_initialized():
        shoal.shutdown()
    shoal.init(num_cpus=2, num_gpus=2)
    yield
    shoal.shutdown()


@shoal.remote
class _Probe:
    def seen(self):
        return os.environ.get("CUDA_VISIBLE_DEVICES"), shoal.get_gpu_ids()


@shoal.remote
def _task_ids():
    return shoal.get_gpu_ids()


def test_actors_get_their_own_gpus(gpu_cluster):
    assert shoal.cluster_resources()["GPU"] == 2
    a = _Probe.options(num_cpus=0, num_gpus=1).remote()
    b = _Probe.options(num_cpus=0, num_gpus=1).remote()
    (va, ia), (vb, ib) = shoal.get([a.seen.remote(), b.seen.remote()])
    assert {va, vb} == {"0", "1"} and ia == [va] and ib == [vb]
    # a CPU actor and a task see no assigned GPU
    c = _Probe.options(num_cpus=0).remote()
    assert shoal.get(c.seen.remote())[1] == []
    assert shoal.get(_task_ids.remote()) == []
    assert shoal.get_gpu_ids() == []
    # a killed actor's GPU goes to the next one
    shoal.kill(a)
    d = _Probe.options(num_cpus=0, num_gpus=1).remote()
    assert shoal.get(d.seen.remote(), timeout=30)[0] == va
    for h in (b, c, d):
        shoal.kill(h)


def test_fractional_actors_share_a_gpu(gpu_cluster):
    hs = [_Probe.options(num_cpus=0, num_gpus=0.5).remote() for _ in range(2)]
    seen = shoal.get([h.seen.remote() for h in hs])
    assert seen[0][0] == seen[1][0] and seen[0][0] in ("0", "1")
    whole = _Probe.options(num_cpus=0, num_gpus=1).remote()
    other = shoal.get(whole.seen.remote())[0]
    assert other != seen[0][0]
    for h in hs + [whole]:
        shoal.kill(h)


def test_placement_group_bundles_with_gpus(gpu_cluster):
    pg = shoal.placement_group([{"CPU": 0.1, "GPU": 1}] * 2)
    assert shoal.get(pg.ready(), timeout=30)
    hs = [_Probe.options(num_cpus=0.1, num_gpus=1, placement_group=pg,
                         placement_group_bundle_index=i).remote() for i in range(2)]
    got = [s[0] for s in shoal.get([h.seen.remote() for h in hs])]
    assert sorted(got) == ["0", "1"]
    for h in hs:
        shoal.kill(h)
    shoal.remove_placement_group(pg)
