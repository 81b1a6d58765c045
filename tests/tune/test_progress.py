"""The trial table: live and in place in a terminal, status lines elsewhere."""
from __future__ import annotations

import io

import pytest

from shoal.tune import _progress
from shoal.tune._progress import Progress
from shoal.tune.trial import RUNNING, TERMINATED, Trial


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _trials():
    ts = [Trial(f"t{i}", {"lr": 0.1 * (i + 1)}, RUNNING) for i in range(3)]
    for i, t in enumerate(ts):
        t.last_result = {"loss": 1.0 / (i + 1), "training_iteration": 1}
    return ts


def test_in_a_terminal_the_table_is_redrawn_in_place(monkeypatch):
    pytest.importorskip("rich")
    monkeypatch.setattr(_progress, "_LIVE_EVERY_S", 0.0)
    out = _Terminal()
    p = Progress(1, "loss", "min", stream=out)
    assert p.tty
    trials = _trials()
    p.result(trials[0], trials[0].last_result)
    p.maybe_show(trials)
    trials[2].status = TERMINATED
    trials[2].last_result = {"loss": 0.01, "training_iteration": 2}
    p.finished(trials[2])
    p.maybe_show(trials)
    p.note("a note goes above the table")
    p.show(trials, final=True)
    text = out.getvalue()
    assert "\x1b[" in text                       # cursor movements: redrawn in place
    assert text.count("== Status: 3 trials") >= 2
    assert "a note goes above the table" in text
    assert text.rstrip().endswith("best: t2 loss=0.01")
    assert "== Finished: 3 trials (2 RUNNING, 1 TERMINATED)" in text


def test_outside_a_terminal_progress_is_periodic_lines(monkeypatch):
    monkeypatch.setattr(_progress, "_LINE_EVERY_S", 0.0)
    out = io.StringIO()
    p = Progress(1, "loss", "min", stream=out)
    assert not p.tty
    trials = _trials()
    p.finished(trials[0])
    p.maybe_show(trials)
    p.maybe_show(trials)          # nothing changed: no new line
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and "\x1b[" not in out.getvalue()
    assert "0/3 trials done (3 RUNNING)" in lines[0] and "best loss=0.3333 (t2)" in lines[0]


def test_quiet_shows_nothing():
    out = _Terminal()
    p = Progress(0, "loss", "min", stream=out)
    p.finished(_trials()[0])
    p.maybe_show(_trials())
    p.show(_trials(), final=True)
    assert out.getvalue() == ""
