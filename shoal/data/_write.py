"""Writers: one file per non-empty block, written by a task next to the data."""
from __future__ import annotations

import os
import uuid
from collections import deque
from typing import Iterable

import pyarrow as pa

from shoal.data._plan import Bundle

EXTENSIONS = {"parquet": "parquet", "csv": "csv", "json": "jsonl", "numpy": "npy"}


def write_block(path: str, file_format: str, options: dict, table: pa.Table) -> str:
    """Task body: write ``table`` to ``path`` in ``file_format``; return the path."""
    if file_format == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, path, **options)
    elif file_format == "csv":
        from pyarrow import csv

        csv.write_csv(table, path, **options)
    elif file_format == "json":
        table.to_pandas().to_json(path, orient="records", lines=True, **options)
    elif file_format == "numpy":
        from shoal.data._formats import write_npy

        write_npy(path, table, **options)
    else:
        raise ValueError(f"unknown file format {file_format!r}; use parquet, csv, json or numpy")
    return path


def write_files(bundles: Iterable[Bundle], folder: str, file_format: str, options: dict,
                window: int) -> list[str]:
    """Write each non-empty block to ``folder`` and return the files written, in order."""
    import shoal

    from shoal.data._execution import remote_fn

    folder = os.fspath(folder)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise FileExistsError(f"write_{file_format}({folder!r}): the path is a file; "
                              "give a folder to write into")
    os.makedirs(folder, exist_ok=True)
    prefix = uuid.uuid4().hex[:12]
    task = remote_fn(write_block)
    pending: deque = deque()
    written: list[str] = []
    index = 0
    for ref, meta in bundles:
        if meta.num_rows == 0:
            continue
        name = os.path.join(folder, f"{prefix}_{index:06d}.{EXTENSIONS[file_format]}")
        index += 1
        pending.append(task.remote(name, file_format, options, ref))
        if len(pending) >= window:
            written.append(shoal.get(pending.popleft()))
    written.extend(shoal.get(list(pending)))
    return written
