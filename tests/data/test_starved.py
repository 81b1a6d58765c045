"""A stage that can never get a CPU (actors hold them all) warns, then fails; it never hangs."""
from __future__ import annotations

import time

import pytest

import shoal
import shoal.data as sd
from shoal.data import DataContext
from shoal.exceptions import DataStarvedError


@shoal.remote(num_cpus=2)
class Hog:
    def ping(self):
        return True


def test_a_stage_with_no_free_cpu_warns_then_fails_naming_the_fix(cluster):
    ctx = DataContext.get_current()
    ctx.starved_warning_s, ctx.starved_timeout_s = 0.5, 3.0
    hog = Hog.remote()
    assert shoal.get(hog.ping.remote(), timeout=30)
    ds = sd.range(100, override_num_blocks=4).map_batches(lambda b: b)
    start = time.monotonic()
    with pytest.warns(RuntimeWarning, match="no CPU has been free"):
        with pytest.raises(DataStarvedError, match="resources_per_worker") as info:
            ds.take_all()
    assert time.monotonic() - start < 30
    assert "starved_timeout_s" in str(info.value)
    shoal.kill(hog)
    # once the CPUs are back, the same dataset runs (and a busy but moving cluster never trips it)
    ctx.starved_timeout_s = 1.0
    assert len(ds.take_all()) == 100


def test_a_slow_stage_that_has_its_cpus_never_trips_the_watch(cluster):
    ctx = DataContext.get_current()
    ctx.starved_warning_s, ctx.starved_timeout_s = 0.2, 0.5

    def slow(batch):
        time.sleep(1.5)
        return batch

    assert len(sd.range(10, override_num_blocks=2).map_batches(slow).take_all()) == 10
