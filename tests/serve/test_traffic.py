"""The controller's sum of the HTTP processes' request histograms (no cluster needed)."""
from __future__ import annotations

import pytest

from shoal.serve._traffic import BOUNDS, Traffic, quantile


def _hist(counts_by_bucket: dict, total_s: float) -> list:
    h = [0] * (len(BOUNDS) + 3)
    for i, n in counts_by_bucket.items():
        h[i] += n
    h[-2], h[-1] = total_s, sum(counts_by_bucket.values())
    return h


def _snap(app, h):
    return {"requests": {}, "latency": {app: h}, "queued": {}}


def test_rates_sum_processes_and_survive_a_restart_and_a_silent_peer():
    t = Traffic()
    t.add({"a": _snap("app", _hist({0: 10}, 0.005)), "b": _snap("app", _hist({1: 10}, 0.02))})
    m, h = t.figures("app", now=t.started + 2.0)
    assert m["requests_total"] == 20 and m["requests_per_s"] == pytest.approx(10.0)
    assert h["counts"][:2] == [10, 10] and h["count"] == 20
    # "a" restarted (its counts start over), "b" did not answer this time
    t.add({"a": _snap("app", _hist({0: 4}, 0.002)), "b": None})
    m, h = t.figures("app", now=t.started + 4.0)
    assert m["requests_total"] == 24 and m["requests_per_s"] == pytest.approx(2.0)
    # "b" answers again with its old counts plus 6: only the 6 are new
    t.add({"a": _snap("app", _hist({0: 4}, 0.002)), "b": _snap("app", _hist({1: 16}, 0.03))})
    m, _ = t.figures("app", now=t.started + 5.0)
    assert m["requests_total"] == 30 and m["requests_per_s"] == pytest.approx(6.0)
    # "a" went away: what it answered stays counted
    t.add({"b": _snap("app", _hist({1: 16}, 0.03))})
    assert t.figures("app", now=t.started + 6.0)[0]["requests_total"] == 30


def test_quantiles_interpolate_within_a_bucket():
    h = _hist({0: 50, 3: 50}, 0.3)      # half at <= 1 ms, half in (5 ms, 10 ms]
    assert quantile(h, 0.5) == pytest.approx(1.0)
    assert quantile(h, 0.99) == pytest.approx(5 + 5 * 49 / 50)
    assert quantile(_hist({len(BOUNDS): 3}, 60.0), 0.5) == BOUNDS[-1] * 1e3
    assert quantile(_hist({}, 0.0), 0.5) is None
    assert Traffic().figures("nothing", now=1e12)[0]["latency_mean_ms"] is None
