"""What a user sees while an experiment runs.

In a terminal (stdout a TTY, rich installed): a live trial table redrawn in
place a few times a second. Elsewhere (a log file, a notebook's captured
output, CI): a one-line status every ``_LINE_EVERY_S`` seconds. Either way the
full table once at the end.
"""
from __future__ import annotations

import sys
import time
from collections import Counter

_LIVE_EVERY_S = 0.5     # seconds between redraws of the live table
_LINE_EVERY_S = 10.0    # seconds between status lines when not in a terminal


class Progress:
    def __init__(self, verbose: int, metric: str | None, mode: str | None, stream=None):
        self.verbose, self.metric, self.mode = verbose, metric, mode
        self.stream = stream if stream is not None else sys.stdout
        self.start = self.last = time.monotonic()
        self.changed = False
        self.live = None
        self.tty = bool(verbose) and _isatty(self.stream) and _has_rich()

    def result(self, trial, rec):
        self.changed = True
        if self.verbose >= 2:
            shown = {k: v for k, v in rec.items() if k in (self.metric, "training_iteration")}
            self._print(f"[shoal.tune] {trial.trial_id} {shown}")

    def finished(self, trial):
        self.changed = True

    def failed(self, trial, error):
        if self.verbose:
            self._print(f"[shoal.tune] trial {trial.trial_id} failed "
                        f"({trial.num_failures}x): {error}", err=True)

    def note(self, text):
        if self.verbose:
            self._print(f"[shoal.tune] {text}")

    def _print(self, text, err: bool = False):
        if self.live is not None:        # above the live table, which stays at the bottom
            self.live.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=sys.stderr if err else self.stream, flush=True)

    def maybe_show(self, trials):
        if not self.verbose or not self.changed:
            return
        now = time.monotonic()
        if self.tty:
            if now - self.last >= _LIVE_EVERY_S:
                self.last, self.changed = now, False
                self._redraw(trials)
        elif now - self.last >= _LINE_EVERY_S:
            self.last, self.changed = now, False
            print(status_line(trials, self.metric, self.mode, now - self.start),
                  file=self.stream, flush=True)

    def _redraw(self, trials):
        from rich.console import Console
        from rich.live import Live
        renderable = rich_table(trials, self.metric, self.mode, False,
                                now=time.monotonic() - self.start)
        if self.live is None:
            self.live = Live(renderable, console=Console(file=self.stream),
                             auto_refresh=False, transient=True)
            self.live.start()
        self.live.update(renderable, refresh=True)

    def show(self, trials, final: bool = False):
        if not self.verbose:
            return
        if self.live is not None:
            self.live.stop()
            self.live = None
        self.last, self.changed = time.monotonic(), False
        print(table(trials, self.metric, self.mode, final), file=self.stream, flush=True)


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _has_rich() -> bool:
    try:
        import rich  # noqa: F401
        return True
    except ImportError:
        return False


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _rows(trials, metric, mode, final, max_rows):
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
    foot = []
    if len(rows) > max_rows:
        foot.append(f"... {len(rows) - max_rows} more trials")
    if best is not None:
        foot.append(f"best: {best.trial_id} {metric}={_fmt(best.last_result.get(metric))}")
    return head, cols, lines, foot


def rich_table(trials, metric, mode, final=False, max_rows: int = 20, now: float | None = None):
    """The trial table as rich renderables (best trials first)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text
    head, cols, lines, foot = _rows(trials, metric, mode, final, max_rows)
    if now is not None:
        head += f", {now:.0f} s"
    tab = Table()
    for c in cols:
        tab.add_column(c)
    for ln in lines:
        tab.add_row(*ln)
    return Group(Text(head), tab, *(Text(f) for f in foot))


def table(trials, metric, mode, final=False, max_rows: int = 20) -> str:
    """The trial table as text: status counts, then a row per trial (best first)."""
    head, cols, lines, foot = _rows(trials, metric, mode, final, max_rows)
    try:
        from io import StringIO

        from rich.console import Console
        from rich.table import Table
        tab = Table()
        for c in cols:
            tab.add_column(c)
        for ln in lines:
            tab.add_row(*ln)
        buf = StringIO()
        Console(file=buf, width=120, force_terminal=False).print(tab)
        out = head + "\n" + buf.getvalue().rstrip()
    except ImportError:
        widths = [max(len(c), *(len(ln[i]) for ln in lines)) if lines else len(c)
                  for i, c in enumerate(cols)]
        out = "\n".join([head, "  ".join(c.ljust(w) for c, w in zip(cols, widths))]
                        + ["  ".join(x.ljust(w) for x, w in zip(ln, widths)) for ln in lines])
    return "\n".join([out] + foot)


def status_line(trials, metric, mode, elapsed: float) -> str:
    """One line of progress: trials per status and the best so far."""
    counts = Counter(t.status for t in trials)
    done = counts.get("TERMINATED", 0) + counts.get("ERROR", 0)
    line = (f"[shoal.tune] {elapsed:.0f} s: {done}/{len(trials)} trials done ("
            + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ")")
    if metric:
        scored = [t for t in trials if isinstance(t.last_result.get(metric), (int, float))]
        if scored:
            pick = max if mode == "max" else min
            b = pick(scored, key=lambda t: t.last_result[metric])
            line += f"; best {metric}={_fmt(b.last_result[metric])} ({b.trial_id})"
    return line


def _flat(cfg, prefix=""):
    out = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out
