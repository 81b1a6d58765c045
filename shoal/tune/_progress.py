"""The trial table a user sees while an experiment runs (rich when installed)."""
from __future__ import annotations

import sys
import time
from collections import Counter

_EVERY_S = 5.0   # seconds between tables while running


class Progress:
    def __init__(self, verbose: int, metric: str | None, mode: str | None):
        self.verbose, self.metric, self.mode = verbose, metric, mode
        self.last = time.monotonic()
        self.changed = False

    def result(self, trial, rec):
        self.changed = True
        if self.verbose >= 2:
            shown = {k: v for k, v in rec.items() if k in (self.metric, "training_iteration")}
            print(f"[shoal.tune] {trial.trial_id} {shown}", flush=True)

    def finished(self, trial):
        self.changed = True

    def failed(self, trial, error):
        if self.verbose:
            print(f"[shoal.tune] trial {trial.trial_id} failed "
                  f"({trial.num_failures}x): {error}", file=sys.stderr, flush=True)

    def note(self, text):
        if self.verbose:
            print(f"[shoal.tune] {text}", flush=True)

    def maybe_show(self, trials):
        if self.verbose and self.changed and time.monotonic() - self.last >= _EVERY_S:
            self.show(trials)

    def show(self, trials, final: bool = False):
        if not self.verbose:
            return
        self.last, self.changed = time.monotonic(), False
        print(table(trials, self.metric, self.mode, final), flush=True)


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def table(trials, metric, mode, final=False, max_rows: int = 20) -> str:
    """The trial table as text: status counts, then a row per trial (best first)."""
    counts = Counter(t.status for t in trials)
    head = (f"== {'Finished' if final else 'Status'}: {len(trials)} trials "
            f"({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))})")
    keys = sorted({k for t in trials for k in _flat(t.config)})[:6]
    cols = ["trial", "status"] + keys + ["iter"] + ([metric] if metric else [])

    def value(t):
        v = t.last_result.get(metric) if metric else None
        if not isinstance(v, (int, float)):
            return float("inf")
        return -v if mode == "max" else v

    rows = sorted(trials, key=value) if metric else list(trials)
    best = rows[0] if metric and rows and value(rows[0]) != float("inf") else None
    lines = []
    for t in rows[:max_rows]:
        flat = _flat(t.config)
        lines.append([t.trial_id, t.status + ("*" if t.stopped_early else "")]
                     + [_fmt(flat.get(k, "")) for k in keys] + [str(t.iteration)]
                     + ([_fmt(t.last_result.get(metric, ""))] if metric else []))
    try:
        from io import StringIO

        from rich.console import Console
        from rich.table import Table
        tab = Table(title=head, title_justify="left")
        for c in cols:
            tab.add_column(c)
        for ln in lines:
            tab.add_row(*ln)
        buf = StringIO()
        Console(file=buf, width=120, force_terminal=False).print(tab)
        out = buf.getvalue().rstrip()
    except ImportError:
        widths = [max(len(c), *(len(ln[i]) for ln in lines)) if lines else len(c)
                  for i, c in enumerate(cols)]
        out = "\n".join([head, "  ".join(c.ljust(w) for c, w in zip(cols, widths))]
                        + ["  ".join(x.ljust(w) for x, w in zip(ln, widths)) for ln in lines])
    if len(rows) > max_rows:
        out += f"\n... {len(rows) - max_rows} more trials"
    if best is not None:
        out += f"\nbest: {best.trial_id} {metric}={_fmt(best.last_result.get(metric))}"
    return out


def _flat(cfg, prefix=""):
    out = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out
