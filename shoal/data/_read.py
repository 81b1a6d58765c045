"""Read tasks: the lazy sources of a Dataset (files and ``range``).

A ReadTask is a small picklable recipe; a worker calls it and gets one
Table, which it cuts into ``num_blocks`` blocks. Planning happens on the
driver from file metadata only: Parquet is split by row groups (one file
may give many read tasks), CSV/JSON by file.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from shoal.data._block import check_columns
from shoal.exceptions import DatasetPathError


@dataclass
class ReadTask:
    """One unit of reading; ``num_rows``/``size_bytes`` are estimates (None if unknown)."""

    kind: str                      # "parquet" | "csv" | "json" | "range" | a kind of _formats
    pieces: list                   # parquet: [(path, [row groups])]; csv/json: [path]; range: [(a, b)]
    num_blocks: int = 1
    num_rows: int | None = None
    size_bytes: int | None = None
    options: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"read_{self.kind}"

    def __call__(self) -> pa.Table:
        reader = _READERS.get(self.kind)
        if reader is None:   # the formats of _formats, imported only by a task that reads one
            from shoal.data._formats import READERS
            reader = READERS[self.kind]
        return reader(self.pieces, **self.options)


# ------------------------------------------------------------------ paths ---

def expand_paths(paths: str | os.PathLike | Sequence, extensions: Sequence[str]) -> list[str]:
    """Files named by ``paths``: files, folders (searched recursively) and globs.

    Raises DatasetPathError naming a path that matches no file.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[str] = []
    for p in paths:
        p = os.fspath(p)
        if p.startswith("file://"):
            p = p[len("file://"):]
        if os.path.isdir(p):
            found = sorted(
                os.path.join(root, f) for root, dirs, files in os.walk(p)
                for f in files if not f.startswith((".", "_")) and
                (not extensions or f.endswith(tuple(extensions))))
            if not found:
                raise DatasetPathError(f"folder {p!r} holds no {'/'.join(extensions)} files")
            out.extend(found)
        elif os.path.isfile(p):
            out.append(p)
        elif glob.has_magic(p):
            found = sorted(f for f in glob.glob(p, recursive=True) if os.path.isfile(f))
            if not found:
                raise DatasetPathError(f"glob {p!r} matches no file")
            out.extend(found)
        else:
            raise DatasetPathError(f"path {p!r} does not exist; give a file, a folder or a glob")
    if not out:
        raise DatasetPathError("no paths given to read")
    return out


# --------------------------------------------------------------- planning ---

def _group_units(units: list, weights: np.ndarray, n: int) -> list[tuple[list, int]]:
    """Assign units (row groups, files) to ``n`` read tasks as (units, blocks) pairs.

    ``n`` below the unit count: contiguous groups of about equal weight.
    Above it: each unit is cut into several blocks in proportion to its weight.
    """
    count = len(units)
    weights = np.maximum(np.asarray(weights, dtype=np.float64), 1.0)
    if n <= count:
        cum = np.cumsum(weights)
        targets = cum[-1] * np.arange(1, n) / n
        cuts = np.unique(np.clip(np.searchsorted(cum, targets, side="left") + 1, 1, count - 1)) \
            if n > 1 else np.array([], dtype=np.int64)
        bounds = [0, *cuts.tolist(), count]
        return [(units[a:b], 1) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    share = weights / weights.sum() * n
    blocks = np.maximum(np.floor(share).astype(np.int64), 1)
    # Hand out the blocks lost to rounding to the units with the largest remainders.
    missing = n - int(blocks.sum())
    if missing > 0:
        blocks[np.argsort(-(share - np.floor(share)))[:missing]] += 1
    return [([u], int(k)) for u, k in zip(units, blocks)]


def plan_parquet(paths, columns=None, filter=None, num_blocks: int | None = None,
                 default_blocks: int = 8) -> list[ReadTask]:
    import pyarrow.parquet as pq

    files = expand_paths(paths, (".parquet", ".pq", ".parq"))
    units, rows, sizes = [], [], []
    for f in files:
        try:
            md = pq.ParquetFile(f).metadata
        except (pa.ArrowInvalid, OSError) as exc:
            raise DatasetPathError(f"{f!r} is not a readable Parquet file: {exc}") from exc
        if md.num_row_groups == 0:
            units.append((f, []))
            rows.append(0)
            sizes.append(0)
        for g in range(md.num_row_groups):
            rg = md.row_group(g)
            units.append((f, [g]))
            rows.append(rg.num_rows)
            sizes.append(rg.total_byte_size)
    if num_blocks is None:
        num_blocks = max(len(files), min(len(units), default_blocks))
    tasks = []
    for group, k in _group_units(units, np.asarray(rows), num_blocks):
        pieces: list = []
        for path, rgs in group:  # merge consecutive row groups of one file
            if pieces and pieces[-1][0] == path:
                pieces[-1][1].extend(rgs)
            else:
                pieces.append((path, list(rgs)))
        tasks.append(ReadTask("parquet", pieces, k, options={"columns": columns, "filter": filter}))
    return _fill_parquet_estimates(tasks, units, rows, sizes, filter)


def _fill_parquet_estimates(tasks, units, rows, sizes, filter):
    index = {(p, g[0]): i for i, (p, g) in enumerate(units) if g}
    for t in tasks:
        ids = [index[(p, g)] for p, gs in t.pieces for g in gs]
        if not ids:
            t.size_bytes, t.num_rows = 0, 0
            continue
        t.size_bytes = int(sum(sizes[i] for i in ids))
        t.num_rows = None if filter is not None else int(sum(rows[i] for i in ids))
    return tasks


def plan_text(kind: str, paths, num_blocks: int | None, options: dict) -> list[ReadTask]:
    exts = {"csv": (".csv", ".csv.gz", ".tsv"), "json": (".json", ".jsonl", ".json.gz")}[kind]
    files = expand_paths(paths, exts)
    size_of = {f: os.path.getsize(f) for f in files}
    sizes = np.array([size_of[f] for f in files])
    if num_blocks is None:
        num_blocks = len(files)
    return [ReadTask(kind, group, k, None, sum(size_of[f] for f in group), options=dict(options))
            for group, k in _group_units(files, sizes, num_blocks)]


def plan_range(n: int, num_blocks: int, tensor_shape: tuple | None = None) -> list[ReadTask]:
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"range(n) needs a non-negative int, got {n!r}")
    num_blocks = max(1, min(num_blocks, n)) if n else 1
    bounds = np.linspace(0, n, num_blocks + 1).astype(np.int64)
    row_bytes = 8 * (int(np.prod(tensor_shape)) if tensor_shape else 1)
    return [ReadTask("range", [(int(a), int(b))], 1, int(b - a), int(b - a) * row_bytes,
                     options={"tensor_shape": tensor_shape})
            for a, b in zip(bounds[:-1], bounds[1:])]


# ---------------------------------------------------------------- readers ---

def _read_parquet(pieces, columns=None, filter=None) -> pa.Table:
    import pyarrow.parquet as pq

    # A filter may name columns outside ``columns``: read them all, filter, then select.
    read_columns = columns if filter is None else None
    tables = []
    for path, rgs in pieces:
        f = pq.ParquetFile(path)
        t = f.read_row_groups(rgs, columns=read_columns) if rgs else f.schema_arrow.empty_table()
        tables.append(t)
    table = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
    if filter is not None:
        table = table.filter(filter)
    if columns is not None:
        check_columns(table.schema, columns, "read_parquet(columns=...)")
        table = table.select(columns)
    return table


def _read_csv(paths, **options) -> pa.Table:
    from pyarrow import csv

    tables = [csv.read_csv(p, **options) for p in paths]
    return pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]


def _read_json(paths, **options) -> pa.Table:
    from pyarrow import json

    tables = [json.read_json(p, **options) for p in paths]
    return pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]


def _read_range(pieces, tensor_shape=None) -> pa.Table:
    (a, b), = pieces
    ids = np.arange(a, b, dtype=np.int64)
    if tensor_shape is None:
        return pa.table({"id": ids})
    data = np.broadcast_to(ids.reshape(-1, *([1] * len(tensor_shape))), (b - a, *tensor_shape))
    from shoal.data._block import array_to_arrow
    return pa.table({"data": array_to_arrow(np.ascontiguousarray(data))})


_READERS: dict[str, Any] = {"parquet": _read_parquet, "csv": _read_csv, "json": _read_json,
                            "range": _read_range}
