"""More sources and sinks: text, binary files, images, NumPy, LIBSVM, SQL and Delta Lake.

Each source plans ReadTasks on the driver from metadata only (file sizes, a
row count, a Delta snapshot's file list) and reads in the tasks. Formats
that need an optional library import it in the task and name the extra that
installs it when it is missing.
"""
from __future__ import annotations

import os
import re
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa

from shoal.data._block import array_to_arrow, column_to_numpy
from shoal.data._read import ReadTask, _group_units, expand_paths
from shoal.exceptions import DataError, InvalidInputError, MissingDependencyError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp")


def plan_files(kind: str, paths, extensions: Sequence[str], num_blocks: int | None,
               options: dict) -> list[ReadTask]:
    """Read tasks over whole files, grouped to about equal bytes (one per file by default)."""
    files = expand_paths(paths, extensions)
    sizes = np.array([os.path.getsize(f) for f in files])
    if num_blocks is None:
        num_blocks = len(files)
    size_of = dict(zip(files, sizes.tolist()))
    return [ReadTask(kind, group, k, None, int(sum(size_of[f] for f in group)),
                     options=dict(options))
            for group, k in _group_units(files, sizes, num_blocks)]


def _with_paths(columns: dict, paths: list[str], include_paths: bool) -> pa.Table:
    if include_paths:
        columns["path"] = pa.array(paths, pa.string())
    return pa.table(columns)


# ------------------------------------------------------------------ text ---

def read_text_files(paths, encoding="utf-8", drop_empty_lines=True, include_paths=False):
    """Task body: one row per line of each file (column ``text``)."""
    lines: list[str] = []
    sources: list[str] = []
    for p in paths:
        with open(p, "rb") as f:
            raw = f.read()
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError as exc:
            raise InvalidInputError(
                f"read_text: {p!r} is not valid {encoding} (byte {exc.start}); pass "
                f"encoding= the file's encoding, or read it with read_binary_files") from None
        got = text.splitlines()
        if drop_empty_lines:
            got = [ln for ln in got if ln.strip()]
        lines.extend(got)
        sources.extend([p] * len(got))
    return _with_paths({"text": pa.array(lines, pa.string())}, sources, include_paths)


# ---------------------------------------------------------------- binary ---

def read_binary(paths, include_paths=False):
    """Task body: one row per file, its whole content in column ``bytes``."""
    data = []
    for p in paths:
        with open(p, "rb") as f:
            data.append(f.read())
    return _with_paths({"bytes": pa.array(data, pa.binary())}, list(paths), include_paths)


# ---------------------------------------------------------------- images ---

def read_image_files(paths, size=None, mode=None, include_paths=False):
    """Task body: one row per image, an ``(height, width[, channels])`` uint8 tensor in ``image``."""
    MissingDependencyError.require("shoal.data.read_images", "images", "PIL")
    from PIL import Image, UnidentifiedImageError

    arrays = []
    for p in paths:
        try:
            with Image.open(p) as im:
                if mode is not None:
                    im = im.convert(mode)
                if size is not None:
                    im = im.resize((size[1], size[0]))   # PIL takes (width, height)
                arrays.append(np.asarray(im))
        except (UnidentifiedImageError, OSError) as exc:
            raise InvalidInputError(f"read_images: {p!r} is not a readable image: {exc}") from None
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        first = arrays[0].shape
        odd = next(i for i, a in enumerate(arrays) if a.shape != first)
        raise InvalidInputError(
            f"read_images: {paths[0]!r} is {first} but {paths[odd]!r} is {arrays[odd].shape} "
            f"(height, width, channels); pass size=(height, width) and mode= (e.g. 'RGB') so "
            f"every image has one shape")
    image = array_to_arrow(np.stack(arrays)) if arrays else pa.array([], pa.binary())
    return _with_paths({"image": image}, list(paths), include_paths)


# ----------------------------------------------------------------- numpy ---

def read_npy(paths, include_paths=False):
    """Task body: the rows (first axis) of each ``.npy`` file in column ``data``."""
    arrays, sources = [], []
    for p in paths:
        try:
            a = np.load(p, allow_pickle=False)   # never unpickle from a file
        except ValueError as exc:
            raise InvalidInputError(f"read_numpy: {p!r} holds Python objects (pickled), which "
                                    f"shoal does not load: {exc}") from None
        if isinstance(a, np.lib.npyio.NpzFile):
            raise InvalidInputError(f"read_numpy: {p!r} is an .npz archive; give .npy files")
        if a.ndim == 0:
            a = a.reshape(1)
        arrays.append(a)
        sources.extend([p] * len(a))
    tails = {(a.shape[1:], a.dtype) for a in arrays}
    if len(tails) > 1:
        raise InvalidInputError(f"read_numpy: the files' rows differ in shape or dtype "
                                f"({sorted(map(str, tails))}); read them as separate Datasets")
    return _with_paths({"data": array_to_arrow(np.concatenate(arrays))}, sources, include_paths)


def write_npy(path: str, table: pa.Table, column: str) -> None:
    """Writer body: ``table[column]`` as one ``.npy`` file."""
    if column not in table.column_names:
        raise InvalidInputError(f"write_numpy(column={column!r}): no such column; the columns "
                                f"are {table.column_names}")
    np.save(path, column_to_numpy(table.column(column)), allow_pickle=False)


# ---------------------------------------------------------------- libsvm ---

_INDEX = re.compile(rb"(\d+):")


def libsvm_width(paths: list[str]) -> int:
    """Task body: the largest (1-based) feature index in ``paths``, for the features' width."""
    top = 0
    for p in paths:
        with open(p, "rb") as f:
            for line in f:
                line = line.split(b"#", 1)[0]
                found = _INDEX.findall(line)
                if found:
                    top = max(top, max(int(i) for i in found))
    return top


def read_libsvm_files(paths, num_features: int):
    """Task body: LIBSVM rows ``label index:value ...`` (1-based indices, as Spark writes them)
    as a float64 ``label`` column and a dense float64 ``features`` tensor of ``num_features``."""
    labels: list[float] = []
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    for p in paths:
        with open(p, "rb") as f:
            for lineno, line in enumerate(f, 1):
                line = line.split(b"#", 1)[0].strip()
                if not line:
                    continue
                head, *pairs = line.split()
                try:
                    labels.append(float(head))
                    r = len(labels) - 1
                    for pair in pairs:
                        i, v = pair.split(b":", 1)
                        j = int(i) - 1
                        if j < 0 or j >= num_features:
                            raise ValueError(f"feature index {int(i)} is outside 1..{num_features}")
                        rows.append(r)
                        cols.append(j)
                        vals.append(float(v))
                except ValueError as exc:
                    raise InvalidInputError(
                        f"read_libsvm: {p!r} line {lineno} is not 'label index:value ...' "
                        f"({exc}); indices are 1-based, as Spark writes them") from None
    x = np.zeros((len(labels), num_features), np.float64)
    x[np.asarray(rows, np.int64), np.asarray(cols, np.int64)] = vals
    return pa.table({"label": pa.array(labels, pa.float64()), "features": array_to_arrow(x)})


# ------------------------------------------------------------------- sql ---

def sql_rows(sql: str, connection_factory: Callable, limit: int | None = None,
             offset: int = 0) -> pa.Table:
    """Task body: the rows of ``sql`` (a LIMIT/OFFSET window of it when ``limit`` is given)."""
    query = sql if limit is None else \
        f"SELECT * FROM ({sql}) AS shoal_sql LIMIT {int(limit)} OFFSET {int(offset)}"
    conn = connection_factory()
    try:
        cur = conn.cursor()
        try:
            cur.execute(query)
            names = [d[0] for d in cur.description or ()]
            rows = cur.fetchall()
        finally:
            cur.close()
    finally:
        conn.close()
    columns = {}
    for i, name in enumerate(names):
        values = [r[i] for r in rows]
        try:
            columns[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise InvalidInputError(f"read_sql: column {name!r} mixes value types ({exc}); "
                                    f"CAST it to one type in the query") from None
    return pa.table(columns) if names else pa.table({})


def sql_count(sql: str, connection_factory: Callable) -> int:
    conn = connection_factory()
    try:
        cur = conn.cursor()
        try:
            cur.execute(f"SELECT COUNT(*) FROM ({sql}) AS shoal_sql")
            return int(cur.fetchone()[0])
        finally:
            cur.close()
    finally:
        conn.close()


def plan_sql(sql: str, connection_factory: Callable, num_blocks: int | None) -> list[ReadTask]:
    if not callable(connection_factory):
        raise InvalidInputError("read_sql(connection_factory=...) must be a callable that returns "
                                "a new DB-API connection, e.g. lambda: sqlite3.connect(path)")
    if not num_blocks or num_blocks == 1:
        return [ReadTask("sql", [sql], 1, options={"connection_factory": connection_factory})]
    total = sql_count(sql, connection_factory)
    bounds = np.linspace(0, total, min(num_blocks, max(total, 1)) + 1).astype(np.int64)
    return [ReadTask("sql", [sql], 1, int(b - a),
                     options={"connection_factory": connection_factory, "limit": int(b - a),
                              "offset": int(a)})
            for a, b in zip(bounds[:-1], bounds[1:])]


def _read_sql(pieces, connection_factory, limit=None, offset=0):
    return sql_rows(pieces[0], connection_factory, limit, offset)


# ----------------------------------------------------------------- delta ---

def _delta_table(path: str, version: int | None, storage_options: dict | None):
    MissingDependencyError.require("shoal.data Delta Lake tables", "delta", "deltalake")
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        return DeltaTable(path, version=version, storage_options=storage_options)
    except TableNotFoundError as exc:
        raise DataError(f"read_delta: {path!r} is not a Delta table: {exc}") from None
    except Exception as exc:  # deltalake raises its own errors for a version that is gone
        if version is not None:
            raise DataError(f"read_delta({path!r}, version={version}): {exc}") from None
        raise


def plan_delta(path: str, version: int | None, columns, filter, storage_options,
               num_blocks: int | None) -> list[ReadTask]:
    """One snapshot (``version``, else the latest, pinned now) split by data files."""
    dt = _delta_table(os.fspath(path), version, storage_options)
    version = dt.version()
    actions = pa.table(dt.get_add_actions(flatten=True))
    files = actions.column("path").to_pylist()
    rows = actions.column("num_records").to_numpy(zero_copy_only=False) \
        if "num_records" in actions.column_names else np.ones(len(files))
    sizes = dict(zip(files, actions.column("size_bytes").to_pylist()))
    options = {"path": os.fspath(path), "version": version, "columns": columns,
               "filter": filter, "storage_options": storage_options}
    if not files:
        return [ReadTask("delta", [], 1, 0, 0, options=options)]
    if num_blocks is None:
        num_blocks = len(files)
    rows = np.nan_to_num(np.asarray(rows, np.float64), nan=1.0)
    rows_of = dict(zip(files, rows.tolist()))
    return [ReadTask("delta", group, k,
                     int(sum(rows_of[f] for f in group)) if filter is None else None,
                     int(sum(sizes[f] for f in group)), options=options)
            for group, k in _group_units(files, rows, num_blocks)]


def _read_delta(pieces, path, version, columns=None, filter=None, storage_options=None):
    import pyarrow.dataset as pds

    ds = _delta_table(path, version, storage_options).to_pyarrow_dataset()
    # The snapshot's fragments carry the partition values the data files leave out.
    wanted = set(pieces)
    fragments = [f for f in ds.get_fragments() if f.path in wanted]
    if len(fragments) != len(wanted):
        raise DataError(f"read_delta({path!r}, version={version}): {len(wanted) - len(fragments)} "
                        f"data file(s) of the snapshot are gone (vacuumed?); read a newer version")
    if not fragments:
        table = ds.schema.empty_table()
        return table.select(columns) if columns is not None else table
    part = pds.FileSystemDataset(fragments, ds.schema, ds.format, filesystem=fragments[0].filesystem)
    return part.to_table(columns=columns, filter=filter)


def write_delta_table(path: str, tables, mode: str, partition_by, storage_options) -> None:
    """Stream ``tables`` into one Delta commit (the whole write appears at once or not at all)."""
    MissingDependencyError.require("Dataset.write_delta", "delta", "deltalake")
    from deltalake import write_deltalake

    tables = iter(tables)
    first = next(tables, None)
    if first is None:
        raise InvalidInputError(f"write_delta({path!r}): the Dataset is empty; a Delta table "
                                "needs a schema, so write at least one row")
    schema = first.schema

    def batches():
        yield from first.to_batches()
        for t in tables:
            if t.schema != schema:
                try:
                    t = t.cast(schema)
                except (pa.ArrowInvalid, ValueError) as exc:
                    raise InvalidInputError(f"write_delta({path!r}): a block's schema {t.schema} "
                                            f"differs from the first block's {schema}: {exc}"
                                            ) from None
            yield from t.to_batches()
    write_deltalake(path, pa.RecordBatchReader.from_batches(schema, batches()), mode=mode,
                    partition_by=partition_by, storage_options=storage_options)


READERS: dict[str, Any] = {"text": read_text_files, "binary": read_binary, "images": read_image_files,
                           "numpy": read_npy, "libsvm": read_libsvm_files, "sql": _read_sql,
                           "delta": _read_delta}
