"""Blocks: the pyarrow Tables a Dataset is made of, and pure operations on them.

Everything here is a plain function of Tables, NumPy arrays and pandas
frames; nothing touches the cluster, so each is tested directly.
A multi-dimensional NumPy column becomes an Arrow ``fixed_shape_tensor``
column and comes back as an ndarray of shape ``(rows, *shape)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from shoal.exceptions import ColumnNotFoundError, UDFReturnTypeError

BATCH_FORMATS = ("numpy", "pandas", "pyarrow", "default")


@dataclass(frozen=True)
class BlockMeta:
    """What the driver knows about a block without fetching it."""

    num_rows: int
    size_bytes: int
    schema: pa.Schema
    exec_s: float = 0.0


def meta_of(table: pa.Table, exec_s: float = 0.0) -> BlockMeta:
    return BlockMeta(table.num_rows, table.nbytes, table.schema, exec_s)


def callable_name(fn: Any) -> str:
    """A readable name for a user function or callable class."""
    name = getattr(fn, "__qualname__", None) or getattr(type(fn), "__qualname__", None)
    return name or repr(fn)


# ----------------------------------------------------------------- columns ---

def column_to_numpy(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """One column as a NumPy array; tensor columns keep their element shape."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if isinstance(col.type, pa.FixedShapeTensorType):
        if len(col) == 0:
            return np.empty((0, *col.type.shape), dtype=col.type.value_type.to_pandas_dtype())
        return col.to_numpy_ndarray()
    if pa.types.is_fixed_size_list(col.type) and col.null_count == 0:
        flat = col.flatten().to_numpy(zero_copy_only=False)
        return flat.reshape(len(col), col.type.list_size)
    return col.to_numpy(zero_copy_only=False)


def table_to_rows(table: pa.Table) -> list[dict]:
    """Rows as dicts, as Ray Data gives them: a tensor column's value is an ndarray of the
    element shape (``to_pylist`` would flatten it to a list)."""
    tensors = [name for name, typ in zip(table.column_names, table.schema.types)
               if isinstance(typ, pa.FixedShapeTensorType)]
    if not tensors:
        return table.to_pylist()
    rows = table.drop_columns(tensors).to_pylist() if len(tensors) < table.num_columns \
        else [{} for _ in range(table.num_rows)]
    for name in tensors:
        values = column_to_numpy(table.column(name))
        for row, v in zip(rows, values):
            row[name] = v
    order = table.column_names
    return [{k: r[k] for k in order} for r in rows]


def array_to_arrow(values: Any, name: str = "") -> pa.Array | pa.ChunkedArray:
    """A column from a NumPy array, list, pandas Series, torch tensor or Arrow array."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values
    if isinstance(values, pd.Series):
        values = values.to_numpy()
    if type(values).__module__.startswith("torch"):
        values = values.detach().cpu().numpy()
    if isinstance(values, np.ndarray):
        if values.ndim > 1:
            return pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(values))
        if values.dtype == object and len(values) and isinstance(values[0], np.ndarray):
            return _stack_object_arrays(values)
        return pa.array(values)
    if isinstance(values, (list, tuple)) and values and isinstance(values[0], np.ndarray):
        return _stack_object_arrays(values)
    return pa.array(values)


def _stack_object_arrays(values: Sequence[np.ndarray]) -> pa.Array:
    """Rows that are equal-shaped arrays become a tensor column, ragged ones a list column."""
    shapes = {np.shape(v) for v in values}
    if len(shapes) == 1:
        return array_to_arrow(np.stack(values))
    return pa.array([v.tolist() for v in values])


# ------------------------------------------------------------ conversions ---

def dict_to_table(data: dict) -> pa.Table:
    arrays = {str(k): array_to_arrow(v, str(k)) for k, v in data.items()}
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"columns have different lengths {lengths}; every column of a "
                         "batch must have one value per row")
    return pa.table(arrays)


def pandas_to_table(df: pd.DataFrame) -> pa.Table:
    tensor_cols = {}
    for name in df.columns:
        col = df[name]
        if col.dtype == object and len(col) and isinstance(col.iloc[0], np.ndarray):
            tensor_cols[str(name)] = _stack_object_arrays(col.to_numpy())
    if not tensor_cols:
        return pa.Table.from_pandas(df, preserve_index=False)
    plain = df.drop(columns=[c for c in df.columns if str(c) in tensor_cols])
    table = pa.Table.from_pandas(plain, preserve_index=False)
    out = {}
    for name in df.columns:
        name = str(name)
        out[name] = tensor_cols[name] if name in tensor_cols else table.column(name)
    return pa.table(out)


def to_block(data: Any, udf: Any = None) -> pa.Table:
    """Turn what a user function or source produced into a block.

    Accepts a pyarrow Table/RecordBatch, a pandas DataFrame, a dict of
    column name to array-like, or a polars DataFrame. Raises
    UDFReturnTypeError naming ``udf`` for anything else.
    """
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    if isinstance(data, pd.DataFrame):
        return pandas_to_table(data)
    if isinstance(data, dict):
        return dict_to_table(data)
    if type(data).__module__.startswith("polars") and hasattr(data, "to_arrow"):
        return data.to_arrow()
    who = f"function {callable_name(udf)}" if udf is not None else "the source"
    raise UDFReturnTypeError(
        f"{who} returned {type(data).__name__}; a batch must be a dict of column name to "
        "array, a pandas DataFrame or a pyarrow Table")


def to_batch(table: pa.Table, batch_format: str) -> Any:
    """A block in the format a user function asked for."""
    if batch_format in ("numpy", "default"):
        return {name: column_to_numpy(table.column(name)) for name in table.column_names}
    if batch_format == "pandas":
        return table_to_pandas(table)
    if batch_format == "pyarrow":
        return table
    raise ValueError(f"batch_format={batch_format!r} is not one of {BATCH_FORMATS}")


def table_to_pandas(table: pa.Table) -> pd.DataFrame:
    """A DataFrame; a tensor column holds one ndarray of the element shape per row."""
    tensors = [i for i, f in enumerate(table.schema)
               if isinstance(f.type, pa.FixedShapeTensorType)]
    if not tensors:
        return table.to_pandas()
    df = table.drop_columns([table.column_names[i] for i in tensors]).to_pandas()
    for i in tensors:
        values = np.empty(table.num_rows, dtype=object)
        values[:] = list(column_to_numpy(table.column(i)))
        df.insert(i, table.column_names[i], values)
    return df


def check_batch_format(batch_format: str) -> str:
    if batch_format not in BATCH_FORMATS:
        raise ValueError(f"batch_format={batch_format!r} is not one of {BATCH_FORMATS}")
    return batch_format


# ------------------------------------------------------ slicing, joining ---

def concat(tables: Sequence[pa.Table]) -> pa.Table:
    """Concatenate blocks, unifying types where blocks were read with different ones.

    Empty blocks whose schema differs (a filter that kept nothing before a
    map that changes columns) are dropped rather than breaking the result.
    """
    tables = list(tables)
    if not tables:
        return pa.table({})
    if len(tables) == 1:
        return tables[0]
    first = tables[0].schema
    if all(t.schema.equals(first) for t in tables[1:]):
        return pa.concat_tables(tables)
    non_empty = [t for t in tables if t.num_rows > 0]
    if not non_empty:
        return tables[0]
    if len(non_empty) == 1:
        return non_empty[0]
    return pa.concat_tables(non_empty, promote_options="permissive")


def split_even(table: pa.Table, k: int) -> list[pa.Table]:
    """``k`` contiguous slices whose sizes differ by at most one row."""
    bounds = np.linspace(0, table.num_rows, k + 1).astype(np.int64)
    return [table.slice(int(a), int(b - a)) for a, b in zip(bounds[:-1], bounds[1:])]


def iter_slices(table: pa.Table, batch_size: int | None) -> Iterator[pa.Table]:
    if batch_size is None or table.num_rows <= batch_size:
        yield table
        return
    for start in range(0, table.num_rows, batch_size):
        yield table.slice(start, batch_size)


def rebatch(tables: Iterable[pa.Table], batch_size: int | None,
            drop_last: bool = False) -> Iterator[pa.Table]:
    """Re-cut a stream of blocks into batches of exactly ``batch_size`` rows.

    The last batch may be shorter unless ``drop_last``. ``batch_size=None``
    passes each non-empty block through as one batch.
    """
    if batch_size is None:
        for t in tables:
            if t.num_rows:
                yield t
        return
    if batch_size <= 0:
        raise ValueError(f"batch_size={batch_size} must be a positive number of rows or None")
    buffer: list[pa.Table] = []
    buffered = 0
    for t in tables:
        if t.num_rows == 0:
            continue
        buffer.append(t)
        buffered += t.num_rows
        if buffered < batch_size:
            continue
        joined = concat(buffer)
        start = 0
        while joined.num_rows - start >= batch_size:
            yield joined.slice(start, batch_size)
            start += batch_size
        rest = joined.slice(start)
        buffer, buffered = ([rest], rest.num_rows) if rest.num_rows else ([], 0)
    if buffered and not drop_last:
        yield concat(buffer)


def check_columns(schema: pa.Schema, columns: Iterable[str], operation: str) -> None:
    """Raise ColumnNotFoundError for the first name not in ``schema``."""
    names = schema.names
    for c in columns:
        if c not in names:
            raise ColumnNotFoundError(f"column {c!r} in {operation} does not exist; "
                                      f"the data has columns {names}")


def table_from_items(items: Sequence[Any]) -> pa.Table:
    """Rows from a list: dicts become columns, anything else one column ``item``."""
    if items and all(isinstance(i, dict) for i in items):
        return pa.Table.from_pylist(list(items))
    return pa.table({"item": array_to_arrow(list(items))})
