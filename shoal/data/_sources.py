"""Creating Datasets: file readers (lazy) and in-memory sources (put now)."""
from __future__ import annotations

import builtins
from typing import Any, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from shoal.data._block import (BlockMeta, array_to_arrow, meta_of, pandas_to_table, split_even,
                               table_from_items)
from shoal.data._context import DataContext
from shoal.data._dataset import Dataset
from shoal.data._formats import (IMAGE_EXTENSIONS, libsvm_width, plan_delta, plan_files,
                                 plan_sql)
from shoal.data._plan import BlocksNode, ReadNode
from shoal.data._read import plan_parquet, plan_range, plan_text
from shoal.exceptions import MissingDependencyError


def _num_blocks(override_num_blocks: int | None, parallelism: int | None) -> int | None:
    n = override_num_blocks if override_num_blocks is not None else parallelism
    if n is not None and (not isinstance(n, (int, np.integer)) or n < 1):
        raise ValueError(f"override_num_blocks={n!r} must be a positive int")
    return None if n is None else int(n)


def _default_blocks() -> int:
    import shoal

    ctx = DataContext.get_current()
    if ctx.default_num_blocks is not None:
        return ctx.default_num_blocks
    return max(2, 2 * int(shoal.cluster_resources().get("CPU", 1)))


# ------------------------------------------------------------------ files ---

def read_parquet(paths, *, columns: Sequence[str] | None = None, filter=None,
                 override_num_blocks: int | None = None,
                 parallelism: int | None = None) -> Dataset:
    """Parquet files, folders or globs; one block per group of row groups.

    ``columns`` reads only those columns; ``filter`` (a pyarrow.compute
    expression) keeps matching rows. Raises DatasetPathError for a path
    that matches no file.
    """
    n = _num_blocks(override_num_blocks, parallelism)
    tasks = plan_parquet(paths, list(columns) if columns is not None else None, filter, n,
                         _default_blocks())
    return Dataset(ReadNode(tasks, "read_parquet"))


def read_csv(paths, *, override_num_blocks: int | None = None, parallelism: int | None = None,
             read_options=None, parse_options=None, convert_options=None) -> Dataset:
    """CSV files, folders or globs (pyarrow.csv options); one block per file by default."""
    options = {k: v for k, v in (("read_options", read_options), ("parse_options", parse_options),
                                 ("convert_options", convert_options)) if v is not None}
    tasks = plan_text("csv", paths, _num_blocks(override_num_blocks, parallelism), options)
    return Dataset(ReadNode(tasks, "read_csv"))


def read_json(paths, *, override_num_blocks: int | None = None, parallelism: int | None = None,
              read_options=None, parse_options=None) -> Dataset:
    """Newline-delimited JSON files, folders or globs; one block per file by default."""
    options = {k: v for k, v in (("read_options", read_options), ("parse_options", parse_options))
               if v is not None}
    tasks = plan_text("json", paths, _num_blocks(override_num_blocks, parallelism), options)
    return Dataset(ReadNode(tasks, "read_json"))


def read_text(paths, *, encoding: str = "utf-8", drop_empty_lines: bool = True,
              include_paths: bool = False, override_num_blocks: int | None = None,
              parallelism: int | None = None) -> Dataset:
    """One row per line of text files, folders or globs (column ``text``; ``path`` with
    ``include_paths``). Raises InvalidInputError naming a file that is not ``encoding``."""
    tasks = plan_files("text", paths, (), _num_blocks(override_num_blocks, parallelism),
                       {"encoding": encoding, "drop_empty_lines": drop_empty_lines,
                        "include_paths": include_paths})
    return Dataset(ReadNode(tasks, "read_text"))


def read_binary_files(paths, *, include_paths: bool = False,
                      override_num_blocks: int | None = None,
                      parallelism: int | None = None) -> Dataset:
    """One row per file, its content in column ``bytes`` (``path`` with ``include_paths``)."""
    tasks = plan_files("binary", paths, (), _num_blocks(override_num_blocks, parallelism),
                       {"include_paths": include_paths})
    return Dataset(ReadNode(tasks, "read_binary_files"))


def read_images(paths, *, size: tuple[int, int] | None = None, mode: str | None = None,
                include_paths: bool = False, override_num_blocks: int | None = None,
                parallelism: int | None = None) -> Dataset:
    """One row per image file (PNG, JPEG, TIFF, BMP, GIF, WebP) as a uint8 tensor column
    ``image`` of shape (height, width[, channels]), read with Pillow (the ``images`` extra).

    ``size=(height, width)`` resizes and ``mode`` (a Pillow mode: "RGB", "L") converts, so
    images of different sizes or modes make one tensor column; without them, images that
    differ raise InvalidInputError naming two files.
    """
    MissingDependencyError.require("shoal.data.read_images", "images", "PIL")
    if size is not None and (len(size) != 2 or min(size) < 1):
        raise ValueError(f"read_images(size={size!r}) must be (height, width), both positive")
    tasks = plan_files("images", paths, IMAGE_EXTENSIONS,
                       _num_blocks(override_num_blocks, parallelism),
                       {"size": tuple(size) if size else None, "mode": mode,
                        "include_paths": include_paths})
    return Dataset(ReadNode(tasks, "read_images"))


def read_numpy(paths, *, include_paths: bool = False, override_num_blocks: int | None = None,
               parallelism: int | None = None) -> Dataset:
    """The rows (first axis) of ``.npy`` files in column ``data`` (a tensor column when the
    rows have dimensions). Files holding pickled objects are refused, never unpickled."""
    tasks = plan_files("numpy", paths, (".npy",), _num_blocks(override_num_blocks, parallelism),
                       {"include_paths": include_paths})
    return Dataset(ReadNode(tasks, "read_numpy"))


def read_libsvm(paths, *, num_features: int | None = None,
                override_num_blocks: int | None = None,
                parallelism: int | None = None) -> Dataset:
    """LIBSVM/SVMlight files (Spark's sample data format: ``label index:value ...``, 1-based
    indices) as a float64 ``label`` column and a dense float64 ``features`` tensor column.

    Without ``num_features`` the width is the largest index in the files, found by one
    extra pass in parallel tasks (as Spark's reader does).
    """
    import shoal

    from shoal.data._execution import remote_fn

    tasks = plan_files("libsvm", paths, (), _num_blocks(override_num_blocks, parallelism), {})
    if num_features is None:
        width = remote_fn(libsvm_width)
        num_features = max(shoal.get([width.remote(t.pieces) for t in tasks]), default=0)
    elif not isinstance(num_features, (int, np.integer)) or num_features < 1:
        raise ValueError(f"read_libsvm(num_features={num_features!r}) must be a positive int")
    for t in tasks:
        t.options["num_features"] = int(num_features)
    return Dataset(ReadNode(tasks, "read_libsvm"))


def read_sql(sql: str, connection_factory, *, override_num_blocks: int | None = None,
             parallelism: int | None = None) -> Dataset:
    """The rows of a SQL query through any DB-API connection.

    ``connection_factory`` is a callable returning a new connection (e.g.
    ``lambda: sqlite3.connect(path)``); each read task opens its own. With
    ``override_num_blocks=n`` the query is counted once and read in ``n``
    ``LIMIT``/``OFFSET`` windows in parallel: give the query an ``ORDER BY`` then,
    so the windows cut one fixed order.
    """
    tasks = plan_sql(sql, connection_factory, _num_blocks(override_num_blocks, parallelism))
    return Dataset(ReadNode(tasks, "read_sql"))


def read_delta(path, *, version: int | None = None, columns: Sequence[str] | None = None,
               filter=None, storage_options: dict | None = None,
               override_num_blocks: int | None = None, parallelism: int | None = None) -> Dataset:
    """A Delta Lake table (the ``delta`` extra): its latest snapshot, or ``version`` (time
    travel). The snapshot is pinned when the Dataset is made; partition columns are included.
    ``columns`` and ``filter`` (a pyarrow.compute expression) work as in read_parquet."""
    tasks = plan_delta(path, version, list(columns) if columns is not None else None, filter,
                       storage_options, _num_blocks(override_num_blocks, parallelism))
    return Dataset(ReadNode(tasks, "read_delta"))


def range(n: int, *, override_num_blocks: int | None = None,  # noqa: A001 - Ray's name
          parallelism: int | None = None) -> Dataset:
    """Rows ``{"id": 0} .. {"id": n-1}``, generated lazily by the read tasks."""
    blocks = _num_blocks(override_num_blocks, parallelism) or _default_blocks()
    return Dataset(ReadNode(plan_range(n, blocks), "range"))


def range_tensor(n: int, *, shape: tuple = (1,), override_num_blocks: int | None = None,
                 parallelism: int | None = None) -> Dataset:
    """Rows with a tensor column ``data`` of ``shape`` filled with the row index."""
    blocks = _num_blocks(override_num_blocks, parallelism) or _default_blocks()
    return Dataset(ReadNode(plan_range(n, blocks, tuple(shape)), "range_tensor"))


# -------------------------------------------------------------- in memory ---

def _put_tables(tables: list[pa.Table], n: int | None, name: str) -> Dataset:
    import shoal

    if n is not None:
        whole = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 \
            else tables[0]
        tables = split_even(whole, n)
    bundles = [(shoal.put(t), meta_of(t)) for t in tables]
    return Dataset(BlocksNode(bundles, name))


def _split_default(table: pa.Table, n: int | None) -> int:
    if n is not None:
        return n
    return max(1, min(table.num_rows, _default_blocks()))


def from_items(items: Sequence[Any], *, override_num_blocks: int | None = None,
               parallelism: int | None = None) -> Dataset:
    """Rows from a list of dicts (or of values, as column ``item``)."""
    table = table_from_items(list(items))
    n = _split_default(table, _num_blocks(override_num_blocks, parallelism))
    return _put_tables([table], n, "from_items")


def from_numpy(ndarrays, *, override_num_blocks: int | None = None) -> Dataset:
    """An array (column ``data``), a dict of arrays (one column each) or a list of arrays (one
    block each). Arrays with more than one dimension become tensor columns."""
    n = _num_blocks(override_num_blocks, None)
    if isinstance(ndarrays, list):
        tables = [pa.table({"data": array_to_arrow(np.asarray(a))}) for a in ndarrays]
        return _put_tables(tables, n, "from_numpy")
    if isinstance(ndarrays, dict):
        table = pa.table({str(k): array_to_arrow(np.asarray(v)) for k, v in ndarrays.items()})
    else:
        table = pa.table({"data": array_to_arrow(np.asarray(ndarrays))})
    return _put_tables([table], _split_default(table, n), "from_numpy")


def from_pandas(dfs: pd.DataFrame | list[pd.DataFrame], *,
                override_num_blocks: int | None = None) -> Dataset:
    """One block per DataFrame (or ``override_num_blocks`` blocks); the index is dropped."""
    dfs = [dfs] if isinstance(dfs, pd.DataFrame) else list(dfs)
    return _put_tables([pandas_to_table(df) for df in dfs],
                       _num_blocks(override_num_blocks, None), "from_pandas")


def from_arrow(tables: pa.Table | list[pa.Table], *,
               override_num_blocks: int | None = None) -> Dataset:
    """One block per pyarrow Table or RecordBatch (or ``override_num_blocks`` blocks), put in the store now."""
    tables = [tables] if isinstance(tables, (pa.Table, pa.RecordBatch)) else list(tables)
    tables = [pa.Table.from_batches([t]) if isinstance(t, pa.RecordBatch) else t for t in tables]
    return _put_tables(tables, _num_blocks(override_num_blocks, None), "from_arrow")


def from_spark(df, *, override_num_blocks: int | None = None) -> Dataset:
    """A Dataset of a Spark DataFrame's rows, collected through Arrow and put in the store now
    (one block per CPU unless ``override_num_blocks``). Needs pyspark (a Spark session)."""
    from shoal.data._spark import spark_to_arrow

    table = spark_to_arrow(df)
    n = _num_blocks(override_num_blocks, None) or _default_blocks()
    return _put_tables([table], n, "from_spark")


def from_polars(dfs, *, override_num_blocks: int | None = None) -> Dataset:
    """One block per polars DataFrame (needs polars installed)."""
    try:
        import polars  # noqa: F401
    except ImportError as exc:
        raise ImportError("from_polars needs polars: pip install polars") from exc
    dfs = dfs if isinstance(dfs, list) else [dfs]
    return _put_tables([df.to_arrow() for df in dfs], _num_blocks(override_num_blocks, None),
                       "from_polars")


def block_meta(table: pa.Table) -> BlockMeta:
    """Task body: the metadata of a block already in the store."""
    if not isinstance(table, pa.Table):
        raise TypeError(f"from_block_refs: a ref holds {type(table).__name__}, not a pyarrow Table")
    return meta_of(table)


def from_block_refs(refs: Sequence) -> Dataset:
    """A Dataset over ObjectRefs of pyarrow Tables already in the object store.

    The blocks are not copied; their metadata is computed by one small task each.
    """
    import shoal

    from shoal.data._execution import remote_fn

    refs = list(refs)
    task = remote_fn(block_meta)
    metas = shoal.get([task.remote(r) for r in refs]) if refs else []
    return Dataset(BlocksNode(list(builtins.zip(refs, metas)), "from_block_refs"))
