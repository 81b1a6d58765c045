"""A one-line progress display on stderr for dataset executions."""
from __future__ import annotations

import sys
import time


class ProgressLine:
    """``stage: done/total blocks, rows, elapsed`` rewritten in place.

    Prints nothing until ``after_s`` has passed (short executions stay
    quiet) and nothing at all when disabled.
    """

    def __init__(self, name: str, total: int | None, enabled: bool, after_s: float = 1.0,
                 stream=None):
        self.name = name
        self.total = total
        self.enabled = enabled
        self.after_s = after_s
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self.rows = 0
        self.start = time.perf_counter()
        self._shown = False
        self._last = 0.0
        self.open = True

    def update(self, blocks: int = 1, rows: int = 0) -> None:
        self.done += blocks
        self.rows += rows
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self.start < self.after_s or now - self._last < 0.1:
            return
        self._last = now
        self._write("\r")

    def _write(self, prefix: str) -> None:
        total = f"/{self.total}" if self.total is not None else ""
        line = (f"{prefix}{self.name}: {self.done}{total} blocks, {self.rows:,} rows, "
                f"{time.perf_counter() - self.start:.1f}s")
        self.stream.write(line.ljust(78))
        self.stream.flush()
        self._shown = True

    def close(self) -> None:
        self.open = False
        if self._shown:
            self._write("\r")
            self.stream.write("\n")
            self.stream.flush()
            self._shown = False
