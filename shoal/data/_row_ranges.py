"""Cutting a list of blocks by global row ranges (limit, split, repartition).

Ranges that cover a whole block reuse its ObjectRef; others become one
small task that slices and concatenates the overlapping blocks.
"""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from shoal.data._block import concat, meta_of
from shoal.data._plan import Bundle


def slice_concat(slices, *tables):
    """Task body: ``tables[i].slice(*slices[i])`` concatenated, and its BlockMeta."""
    start = time.perf_counter()
    out = concat([t.slice(off, length) for t, (off, length) in zip(tables, slices)])
    return out, meta_of(out, time.perf_counter() - start)


def row_offsets(bundles: Sequence[Bundle]) -> np.ndarray:
    """Start row of each block, plus the total at the end."""
    counts = np.fromiter((m.num_rows for _, m in bundles), dtype=np.int64, count=len(bundles))
    return np.concatenate([[0], np.cumsum(counts)])


def take_row_ranges(bundles: Sequence[Bundle], ranges: Sequence[tuple[int, int]],
                    light: bool = False) -> list[Bundle]:
    """One block per ``[start, end)`` range of rows of the concatenated ``bundles``.

    ``light``: the slicing tasks take no CPU slot (for use while an actor
    pool may hold every CPU, as ``limit`` does mid-stream).
    """
    from shoal.data._execution import as_list, remote_fn

    offsets = row_offsets(bundles)
    task = remote_fn(slice_concat, light=light)
    out: list = []
    for start, end in ranges:
        first = int(np.searchsorted(offsets, start, side="right")) - 1
        last = int(np.searchsorted(offsets, end, side="left"))
        first = max(first, 0)
        picked = []
        for b in range(first, min(last, len(bundles))):
            lo = max(start, int(offsets[b]))
            hi = min(end, int(offsets[b + 1]))
            if hi > lo:
                picked.append((b, lo - int(offsets[b]), hi - lo))
        if len(picked) == 1 and picked[0][2] == bundles[picked[0][0]][1].num_rows:
            out.append(bundles[picked[0][0]])
            continue
        if not picked:  # an empty range still yields a block with the right schema
            picked = [(min(first, len(bundles) - 1), 0, 0)] if bundles else []
            if not picked:
                continue
        refs = as_list(task.options(num_returns=2).remote(
            [(off, n) for _, off, n in picked], *[bundles[b][0] for b, _, _ in picked]))
        out.append(refs)
    return [_resolve(x) for x in out]


def _resolve(item) -> Bundle:
    import shoal

    if isinstance(item, tuple):
        return item
    block_ref, meta_ref = item
    return block_ref, shoal.get(meta_ref)


def even_ranges(total: int, n: int) -> list[tuple[int, int]]:
    bounds = np.linspace(0, total, n + 1).astype(np.int64)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def slice_rows(bundles: Sequence[Bundle], start: int, end: int) -> list[Bundle]:
    """Rows ``[start, end)`` as blocks: whole blocks reused, the cut ones sliced by a task.

    An empty range gives one empty block, so the result keeps the schema.
    """
    offsets = row_offsets(bundles)
    pieces = []
    for b, (ref, meta) in enumerate(bundles):
        lo, hi = max(start, int(offsets[b])), min(end, int(offsets[b + 1]))
        if hi > lo:
            pieces.append((int(offsets[b]) + 0, lo, hi, b))
    if not pieces:
        return take_row_ranges(bundles[:1], [(0, 0)]) if bundles else []
    out = []
    for base, lo, hi, b in pieces:
        if hi - lo == bundles[b][1].num_rows:
            out.append(bundles[b])
        else:
            out.extend(take_row_ranges([bundles[b]], [(lo - base, hi - base)]))
    return out


def group_blocks(bundles: Sequence[Bundle], n: int) -> list[list[Bundle]]:
    """``n`` runs of consecutive whole blocks with about equal rows (needs ``len >= n``)."""
    offsets = row_offsets(bundles)
    targets = offsets[-1] * np.arange(1, n) / n
    cuts = np.searchsorted(offsets[1:-1], targets, side="left") + 1
    bounds = [0]
    for i, cut in enumerate(cuts.tolist(), start=1):  # n cuts: every group gets a block
        bounds.append(min(max(cut, bounds[-1] + 1), len(bundles) - n + i))
    bounds.append(len(bundles))
    return [list(bundles[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
